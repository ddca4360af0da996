"""Unit tests of redis_llm.store with real hnswlib, in process."""

import json
import struct

import hnswlib
import numpy as np
import pytest

from redis_llm.errors import LLMError
from redis_llm.store import ENCODING_VERSION, MAX_ID, StoreParams, VectorStore, _prefer_exact


def vec(*values) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def random_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, dim), dtype=np.float32)


def filled(vectors, params=None, meta=lambda i: None, llm=None) -> VectorStore:
    """A store holding vectors[i] as id i + 1, data b"doc-<i>", meta(i)."""
    store = VectorStore(params or StoreParams(), llm=llm)
    for i, v in enumerate(vectors):
        store.add(v, b"doc-%d" % i, meta(i), i + 1)
    return store


def brute_force(vectors, ids, query, k):
    """The k nearest ids (1-based) by squared L2 among ids."""
    ids = np.asarray(ids)
    d = ((vectors[ids - 1] - query) ** 2).sum(1)
    return ids[np.argsort(d, kind="stable")[:k]].tolist()


def knn_ids(store, query, k, **kw):
    return [i for i, _ in store.knn(query, k, **kw)]


def check_consistent(store, expected: dict):
    """The store holds exactly expected {id: (vector, data, meta)}, and its dump reloads."""
    assert len(store) == len(expected)
    for id, (vector, data, meta) in expected.items():
        got_data, got_vector, got_meta = store.get(id)
        assert (got_data, got_meta) == (data, meta)
        np.testing.assert_array_equal(got_vector, vector)
        assert store.knn(vector, 1, where={"id": id})[0] == (id, 0.0)
    restored = VectorStore.restore(ENCODING_VERSION, [bytes(c) for c in store.dump()])
    assert restored.digest() == store.digest()


# ---- dimension -------------------------------------------------------------

def test_dim_is_fixed_by_the_first_vector_added():
    store = VectorStore(StoreParams())
    assert store.dim == 0
    store.add(vec(1, 2, 3), b"a")
    assert store.dim == 3
    assert store.params.to_json()["dim"] == 3
    with pytest.raises(LLMError, match="embedding has dimension 2, the store has 3"):
        store.add(vec(1, 2), b"b")


def test_dim_mismatch_raises_and_changes_nothing():
    store = filled([vec(1, 2, 3)])
    store.add(vec(4, 5, 6), b"x", {"a": 1}, id=7)
    before = store.dump()
    peek = store.peek_id()
    with pytest.raises(LLMError, match="embedding has dimension 4, the store has 3"):
        store.add(vec(1, 2, 3, 4), b"other", {"b": 2}, id=7)
    with pytest.raises(LLMError, match="embedding has dimension 2, the store has 3"):
        store.add(vec(1, 2), b"new")
    with pytest.raises(LLMError, match="embedding has dimension 2, the store has 3"):
        store.knn(vec(1, 2), 1)
    assert [bytes(c) for c in store.dump()] == [bytes(c) for c in before]
    assert store.peek_id() == peek
    assert store.item(7) == (b"x", {"a": 1})


def test_dim_set_in_params_is_enforced_before_the_first_add():
    store = VectorStore(StoreParams(dim=4))
    with pytest.raises(LLMError, match="embedding has dimension 3, the store has 4"):
        store.add(vec(1, 2, 3), b"a")
    assert len(store) == 0 and store.dim == 4
    assert store.add(vec(1, 2, 3, 4), b"a") == 1


# ---- ids -------------------------------------------------------------------

def test_generated_ids_start_at_1_and_skip_live_ids():
    store = VectorStore(StoreParams())
    store.add(vec(0, 0), b"two", id=2)
    store.add(vec(0, 0), b"three", id=3)
    assert store.peek_id() == 1
    assert store.add(vec(1, 1), b"a") == 1
    assert store.peek_id() == 4
    assert store.add(vec(1, 1), b"b") == 4
    store.remove(2)
    # The counter only moves forward: a removed generated id is not handed out again.
    store.remove(4)
    assert store.add(vec(1, 1), b"c") == 5
    assert sorted(store.item(i)[0] for i in (1, 3, 5)) == [b"a", b"c", b"three"]


def test_explicit_add_of_the_peeked_id_moves_the_counter_on():
    # What the command layer does: resolve with peek_id(), then add it explicitly.
    store = VectorStore(StoreParams())
    for expected in (1, 2, 3):
        id = store.peek_id()
        assert store.add(vec(1, 0), b"x", id=id) == expected
    store.remove(3)
    assert store.peek_id() == 4


def test_replayed_explicit_adds_reproduce_the_id_counter():
    # A replica or an AOF replay only sees explicit ids: the counter must
    # follow from them, whether the master generated them or not.
    v = vec(1, 2)
    master = VectorStore(StoreParams())
    assert master.add(v, b"explicit", id=2) == 2
    assert master.add(v, b"a", id=master.peek_id()) == 1
    assert master.add(v, b"b", id=master.peek_id()) == 3     # 2 is live: skipped
    assert master.remove(2)
    assert master.peek_id() == 4
    replica = VectorStore(StoreParams())
    for id, data in ((2, b"explicit"), (1, b"a"), (3, b"b")):
        replica.add(v, data, id=id)
    replica.remove(2)
    assert replica.peek_id() == 4


def test_the_id_counter_is_a_function_of_the_explicit_adds_and_removes():
    # Random adds (generated, or explicit near the counter), failed adds and
    # removes on a master that also peeks at will; a replica replays only
    # the successful adds, with their ids, and the removes.
    rng = np.random.default_rng(5)
    master, replica = VectorStore(StoreParams()), VectorStore(StoreParams())
    log = []
    for step in range(3000):
        roll = rng.random()
        if roll < 0.1:
            master.peek_id()                                  # no effect
            with pytest.raises(LLMError):
                master.add(vec(1, 2, 3), b"wrong dim")        # resolves no id
        elif roll < 0.4:
            id = int(rng.integers(0, master.peek_id() + 8))
            if master.remove(id):
                log.append(("rem", id))
        else:
            id = master.peek_id() if roll < 0.7 else int(rng.integers(0, master.peek_id() + 8))
            master.add(vec(step, 1), b"%d" % step, id=id)
            log.append(("add", id))
    for op, id in log:
        if op == "add":
            replica.add(vec(0, 1), b"", id=id)
        else:
            assert replica.remove(id)
    assert replica._next_id == master._next_id
    assert json.loads(replica.dump()[1])["next_id"] == json.loads(master.dump()[1])["next_id"]
    for id in sorted(master._data):
        master.remove(id)
        replica.remove(id)
        assert replica.peek_id() == master.peek_id()


def test_peek_id_changes_nothing_and_explicit_adds_move_the_counter_only_at_the_free_id():
    store = VectorStore(StoreParams())
    store.add(vec(1, 0), b"", id=2)
    store.add(vec(1, 0), b"", id=3)
    assert store.peek_id() == 1
    store.add(vec(1, 0), b"", id=1)          # the free id: the counter moves past it
    assert store.peek_id() == 4
    assert store.remove(3)                   # an id the counter skipped, never handed out
    assert store.peek_id() == 3
    store.add(vec(1, 0), b"", id=5)          # not the free id: no move
    assert store.peek_id() == 3
    assert store.add(vec(1, 0), b"") == 3
    assert store.peek_id() == 4
    # Explicit adds may go up to MAX_ID when no id is left to generate.
    full = VectorStore(StoreParams())
    full.add(vec(1, 0), b"", id=MAX_ID)
    full._next_id = full._free_from = MAX_ID
    with pytest.raises(LLMError, match="no free id"):
        full.peek_id()
    full.add(vec(0, 1), b"again", id=MAX_ID)
    assert full.remove(MAX_ID)
    assert full.peek_id() == MAX_ID
    assert full.add(vec(1, 0), b"last") == MAX_ID
    with pytest.raises(LLMError, match="no free id"):
        full.add(vec(1, 0), b"none left")
    assert full.add(vec(1, 0), b"explicit", id=0) == 0


def test_ids_cover_the_whole_uint64_range():
    store = VectorStore(StoreParams())
    store.add(vec(1, 0), b"zero", id=0)
    store.add(vec(0, 1), b"max", id=2**64 - 1)
    assert knn_ids(store, vec(0, 1), 2) == [2**64 - 1, 0]
    with pytest.raises(LLMError, match="id must be"):
        store.add(vec(0, 1), b"x", id=2**64)
    restored = VectorStore.restore(ENCODING_VERSION, store.dump())
    assert restored.item(2**64 - 1) == (b"max", None)


def test_overwrite_replaces_vector_data_and_meta():
    store = filled(random_vectors(20, 3))
    store.add(vec(9, 9, 9), b"old", {"tag": "old"}, id=100)
    store.add(vec(-5, -5, -5), b"new", None, id=100)
    assert len(store) == 21
    data, vector, meta = store.get(100)
    assert (data, meta) == (b"new", None)
    np.testing.assert_array_equal(vector, vec(-5, -5, -5))
    assert store.knn(vec(-5, -5, -5), 1) == [(100, 0.0)]
    assert 100 not in knn_ids(store, vec(9, 9, 9), 5)
    assert store.knn(vec(-5, -5, -5), 1, where={"tag": "old"}) == []
    store.add(vec(1, 1, 1), b"newer", {"tag": "new"}, id=100)
    assert store.item(100) == (b"newer", {"tag": "new"})


def test_remove_hides_the_item_and_its_slot_is_reused():
    vectors = random_vectors(50, 4)
    store = filled(vectors)
    assert store.remove(10) is True
    assert store.remove(10) is False
    assert store.remove(999) is False
    assert store.get(10) is None
    with pytest.raises(KeyError):
        store.item(10)
    assert 10 not in knn_ids(store, vectors[9], 49)
    assert len(store) == 49
    slots = store._index.element_count
    for i in range(5):
        store.remove(20 + i)
    for i in range(6):
        store.add(vectors[i], b"again", id=1000 + i)
    assert store._index.element_count == slots   # six adds filled the six deleted slots
    assert len(store) == 50


def test_re_adding_removed_ids_keeps_hnswlib_labels_consistent():
    # hnswlib misbehaves if a label lands in a deleted slot other than its own:
    # random churn over a few ids must keep every item reachable and dumpable.
    rng = np.random.default_rng(3)
    store = VectorStore(StoreParams(max_elements=4))
    expected = {}
    for step in range(1500):
        id = int(rng.integers(0, 40))
        if rng.random() < 0.4:
            assert store.remove(id) is (id in expected)
            expected.pop(id, None)
        else:
            vector = rng.random(6, dtype=np.float32)
            store.add(vector, b"v%d" % step, {"id": id}, id=id)
            expected[id] = (vector, b"v%d" % step, {"id": id})
    check_consistent(store, expected)


def test_grows_past_max_elements():
    vectors = random_vectors(50, 5)
    store = filled(vectors, StoreParams(max_elements=2))
    assert len(store) == 50
    assert store._index.max_elements >= 50
    assert sorted(knn_ids(store, vectors[0], 50)) == list(range(1, 51))
    for i, v in enumerate(vectors):
        np.testing.assert_array_equal(store.get(i + 1)[1], v)


# ---- knn -------------------------------------------------------------------

def test_knn_returns_nearest_first_and_at_most_the_store_size():
    store = VectorStore(StoreParams())
    for x in (3, 1, 4, 2, 0):
        store.add(vec(x, 0), b"%d" % x, id=x + 10)
    assert store.knn(vec(0, 0), 3) == [(10, 0.0), (11, 1.0), (12, 4.0)]
    assert store.knn(vec(0, 0), 100) == [(10, 0.0), (11, 1.0), (12, 4.0), (13, 9.0), (14, 16.0)]
    assert all(type(i) is int and type(d) is float for i, d in store.knn(vec(0, 0), 5))


def test_knn_on_an_empty_store_is_empty():
    assert VectorStore(StoreParams()).knn(vec(1, 2), 5) == []
    store = filled([vec(1, 2)])
    store.remove(1)
    assert store.knn(vec(1, 2), 5) == []


def test_knn_after_heavy_removal_still_returns_the_live_items():
    vectors = random_vectors(1000, 8)
    store = filled(vectors)
    for id in range(1, 991):
        store.remove(id)
    live = list(range(991, 1001))
    for query in random_vectors(5, 8, seed=1):
        assert knn_ids(store, query, 10) == brute_force(vectors, live, query, 10)


def test_ef_defaults_to_the_store_param_and_can_be_raised_per_query():
    vectors = random_vectors(2000, 16, seed=7)
    queries = random_vectors(30, 16, seed=8)
    truth = [brute_force(vectors, np.arange(1, 2001), q, 10) for q in queries]

    def recall(store, ef=None):
        return sum(len(set(knn_ids(store, q, 10, ef=ef)) & set(t)) for q, t in zip(queries, truth))

    # A weak graph, so that the search breadth shows in the recall.
    narrow = filled(vectors, StoreParams(m=2, ef_construction=10, ef=1))
    wide = filled(vectors, StoreParams(m=2, ef_construction=10, ef=400))
    assert recall(narrow) < recall(wide)
    assert recall(narrow, ef=400) == recall(wide)
    assert recall(wide, ef=1) == recall(narrow)
    # ef below k still gives k results.
    assert len(narrow.knn(queries[0], 50, ef=1)) == 50


def test_l2_distance_is_squared_euclidean():
    store = filled([vec(1, 2, 3)])
    [(id, distance)] = store.knn(vec(1.1, 2.2, 3.3), 1)
    assert id == 1 and distance == pytest.approx(0.14, rel=1e-5)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_distances_match_numpy_and_the_exact_path_matches_hnswlib(metric):
    vectors = random_vectors(300, 12, seed=4) - 0.5
    query = random_vectors(1, 12, seed=5)[0] - 0.5
    store = filled(vectors, StoreParams(metric=metric), meta=lambda i: {"all": True})
    if metric == "l2":
        expected = ((vectors - query) ** 2).sum(1)
    elif metric == "ip":
        expected = 1 - vectors @ query
    else:
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        expected = 1 - unit @ (query / np.linalg.norm(query))
    graph = store.knn(query, 300, ef=400)
    assert [i for i, _ in graph] == (np.argsort(expected, kind="stable") + 1).tolist()
    np.testing.assert_allclose([d for _, d in graph], np.sort(expected), rtol=1e-5, atol=1e-6)
    assert _prefer_exact(300, 300, 400)
    exact = store.knn(query, 300, ef=400, where={"all": True})
    assert [i for i, _ in exact] == [i for i, _ in graph]
    np.testing.assert_allclose([d for _, d in exact], [d for _, d in graph], rtol=1e-6, atol=1e-6)


def test_cosine_store_keeps_unit_vectors():
    store = filled([vec(3, 4)], StoreParams(metric="cosine"))
    np.testing.assert_allclose(store.get(1)[1], [0.6, 0.8], rtol=1e-6)


@pytest.mark.parametrize("dim", [2, 16, 300])
def test_cosine_normalization_is_idempotent_to_the_bit(dim):
    # An AOF rewrite emits the stored unit vectors; adding them again must
    # store them unchanged, and a query by a stored vector finds it at 0.
    rng = np.random.default_rng(dim)
    scales = 10.0 ** rng.integers(-20, 20, 200)
    vectors = (rng.standard_normal((200, dim)) * scales[:, None]).astype(np.float32)
    store = filled(vectors, StoreParams(metric="cosine"))
    again = VectorStore(StoreParams(metric="cosine"))
    for id in range(1, 201):
        unit = store.get(id)[1]
        assert abs(float(np.sum(unit.astype(np.float64) ** 2)) - 1) < 1e-6
        again.add(unit, b"", id=id)
        assert again.get(id)[1].tobytes() == unit.tobytes()
        assert store.knn(unit, 1) == [(id, pytest.approx(0.0, abs=1e-6))]
    # A query is normalized the same way: an exact scaling changes no distance.
    query = rng.standard_normal(dim).astype(np.float32)
    expected = store.knn(query, 5)
    assert store.knn(query * np.float32(2.0 ** 60), 5) == store.knn(query * np.float32(2.0 ** -60), 5) == expected
    unit = query / np.float32(np.linalg.norm(query))
    assert [i for i, _ in store.knn(unit, 5)] == [i for i, _ in expected]


def test_cosine_zero_vectors_stay_zero_at_distance_1():
    store = VectorStore(StoreParams(metric="cosine"))
    store.add(vec(0, 0, 0), b"zero", {"all": True}, id=1)
    store.add(vec(0, 3, 4), b"y", {"all": True}, id=2)
    assert store.get(1)[1].tolist() == [0, 0, 0]
    assert store.knn(vec(0, 1, 0), 2) == [(2, pytest.approx(0.4)), (1, 1.0)]
    assert store.knn(vec(0, 0, 0), 2) == [(1, 1.0), (2, 1.0)]
    assert store.knn(vec(0, 0, 0), 2, where={"all": True}) == [(1, 1.0), (2, 1.0)]
    assert not np.isnan(np.array([d for _, d in store.knn(vec(0, 1, 0), 2, where={"all": True})])).any()


def test_cosine_store_uses_an_ip_index_and_reads_older_cosine_indexes():
    store, _ = churned_store(n=300, dim=4, llm=None)
    chunks = [bytes(c) for c in store.dump()]
    header = json.loads(chunks[1])
    assert (header["index"]["space"], header["index"]["normalize"]) == ("ip", False)
    # An index saved by hnswlib's cosine space (ip space + normalization) loads as ip.
    old = with_header(chunks, lambda h: h["index"].update(space="cosine", normalize=True))
    restored = VectorStore.restore(ENCODING_VERSION, old)
    assert restored.digest() == store.digest()
    assert [bytes(c) for c in restored.dump()] == chunks
    # Any other space, or normalization flag, does not fit the metric.
    for space, normalize in (("l2", False), ("cosine", False), ("ip", True), ("l2", True)):
        broken = with_header(chunks, lambda h: h["index"].update(space=space, normalize=normalize))
        with pytest.raises(ValueError, match="index does not fit the params"):
            VectorStore.restore(ENCODING_VERSION, broken)
    ip, _ = churned_store(n=50, dim=4, llm=None, metric="ip")
    ip_chunks = [bytes(c) for c in ip.dump()]
    assert json.loads(ip_chunks[1])["index"]["space"] == "ip"
    with pytest.raises(ValueError, match="index does not fit the params"):
        VectorStore.restore(ENCODING_VERSION, with_header(
            ip_chunks, lambda h: h["index"].update(space="cosine", normalize=True)))


# ---- filters ---------------------------------------------------------------

def test_filtered_knn_returns_the_true_k_nearest_matches_on_both_paths():
    vectors = random_vectors(2000, 16, seed=11)
    colors = np.random.default_rng(12).integers(0, 4, 2000)
    store = filled(vectors, meta=lambda i: {"color": int(colors[i]), "rare": i % 50 == 0})
    broad = (np.nonzero(colors == 2)[0] + 1).tolist()
    rare = list(range(1, 2001, 50))
    # One filter per path: the graph walk for the broad one, a scan for the rare one.
    assert not _prefer_exact(len(broad), 2000, 64)
    assert _prefer_exact(len(rare), 2000, 64)
    for query in random_vectors(30, 16, seed=13):
        assert knn_ids(store, query, 10, where={"color": 2}) == brute_force(vectors, broad, query, 10)
        assert knn_ids(store, query, 10, where={"rare": True}) == brute_force(vectors, rare, query, 10)
        both = [i for i in rare if colors[i - 1] == 2]
        assert knn_ids(store, query, 10, where={"rare": True, "color": 2}) == \
            brute_force(vectors, both, query, 10)


def test_filter_uses_strict_json_equality():
    metas = [{"v": True}, {"v": 1}, {"v": 1.0}, {"v": "1"}, {"v": [1]}, None, {"w": 1},
             {"v": None}, {"v": False}, {"v": 0}, {"v": {"a": [1, 2]}}, {"v": 1, "w": 2}]
    store = VectorStore(StoreParams())
    for i, meta in enumerate(metas):
        store.add(vec(i, 0), b"", meta, id=i)

    def matching(where):
        return sorted(knn_ids(store, vec(0, 0), 100, where=where))

    assert matching({"v": True}) == [0]
    assert matching({"v": 1}) == [1, 2, 11]
    assert matching({"v": 1.0}) == [1, 2, 11]
    assert matching({"v": "1"}) == [3]
    assert matching({"v": [1]}) == [4]
    assert matching({"v": None}) == [7]
    assert matching({"v": False}) == [8]
    assert matching({"v": 0}) == [9]
    assert matching({"v": {"a": [1, 2]}}) == [10]
    assert matching({"v": 1, "w": 2}) == [11]
    assert matching({"w": 1}) == [6]
    assert matching({"nope": 1}) == []
    with pytest.raises(LLMError, match="filter must be a JSON object"):
        store.knn(vec(0, 0), 1, where=["v", 1])


def test_filter_respects_k_and_removals():
    store = VectorStore(StoreParams())
    for i in range(10):
        store.add(vec(i, 0), b"", {"even": i % 2 == 0}, id=i)
    store.remove(4)
    assert store.knn(vec(0, 0), 3, where={"even": True}) == [(0, 0.0), (2, 4.0), (6, 36.0)]
    assert knn_ids(store, vec(0, 0), 100, where={"even": True}) == [0, 2, 6, 8]


# ---- dump / restore ----------------------------------------------------------

def churned_store(n=5000, dim=16, llm=b"my-llm", metric="cosine") -> tuple[VectorStore, np.ndarray]:
    vectors = random_vectors(n, dim, seed=21)
    store = filled(vectors, StoreParams(max_elements=1000, metric=metric),
                   meta=lambda i: {"n": i, "tag": "é\ud800"} if i % 3 == 0 else None, llm=llm)
    for id in range(1, n, 7):
        store.remove(id)
    for id in range(2, n, 11):
        store.add(vectors[(id * 13) % n], b"over", {"over": True}, id=id)
    store.add(vectors[0], b"generated")
    return store, vectors


def test_dump_restore_round_trip_keeps_everything_without_rebuilding(monkeypatch):
    store, vectors = churned_store()
    chunks = store.dump()
    assert bytes(chunks[0]) == VectorStore.type_tag

    def no_rebuild(*args, **kwargs):
        raise AssertionError("restore must not rebuild the index")

    monkeypatch.setattr(VectorStore, "add", no_rebuild)
    monkeypatch.setattr(hnswlib.Index, "add_items", no_rebuild)
    restored = VectorStore.restore(ENCODING_VERSION, [bytes(c) for c in chunks])
    monkeypatch.undo()

    assert restored.llm == b"my-llm"
    assert restored.params == store.params
    assert len(restored) == len(store)
    assert restored.peek_id() == store.peek_id()
    for id in list(store._data):
        assert restored.item(id) == store.item(id)
        np.testing.assert_array_equal(restored.get(id)[1], store.get(id)[1])
    for query in random_vectors(50, 16, seed=22):
        assert restored.knn(query, 10) == store.knn(query, 10)
        assert restored.knn(query, 10, where={"over": True}) == store.knn(query, 10, where={"over": True})
    # The same graph, byte for byte.
    assert [bytes(c) for c in restored.dump()] == [bytes(c) for c in chunks]
    # And it stays a working store.
    assert restored.add(vectors[5], b"more") == store.peek_id()
    assert restored.remove(3)


def test_restore_of_stores_without_items():
    for store in (VectorStore(StoreParams(dim=3)), filled([vec(1, 2)], llm=b"")):
        store.remove(1)
        restored = VectorStore.restore(ENCODING_VERSION, store.dump())
        assert len(restored) == 0 and restored.params == store.params and restored.llm == store.llm
        restored.add(vec(1, 2, 3)[:restored.dim or 3], b"x")
        assert len(restored) == 1


def test_restore_rejects_a_newer_encoding_version():
    chunks = filled([vec(1, 2)]).dump()
    with pytest.raises(ValueError, match="encoding version"):
        VectorStore.restore(ENCODING_VERSION + 1, chunks)


# ---- the embedding model ------------------------------------------------------

def test_the_store_records_the_model_of_its_vectors_and_refuses_another():
    store = filled([vec(1, 2)])
    assert store.embedding_model is None and store.other_model("a") is None
    store.add(vec(3, 4), b"unknown model")          # no model given: nothing recorded
    assert store.embedding_model is None
    with pytest.raises(LLMError, match="dimension"):
        store.add(vec(1, 2, 3), b"x", model="a")     # refused: nothing recorded
    assert store.embedding_model is None
    store.add(vec(5, 6), b"of a", model="a")
    assert store.embedding_model == "a" and store.params.to_json()["embedding_model"] == "a"
    assert store.other_model("b") == "a"
    assert store.other_model("a") is None and store.other_model(None) is None
    before = store.digest()
    with pytest.raises(LLMError, match="holds embeddings of model 'a', not of 'b'"):
        store.add(vec(7, 8), b"of b", model="b")
    with pytest.raises(LLMError, match="embedding model name must be 1 to 1024 bytes"):
        store.add(vec(7, 8), b"long", model="m" * 1025)
    assert store.digest() == before and len(store) == 3
    # Removing every item keeps it, as it keeps the dimension.
    for id in list(store._data):
        store.remove(id)
    assert store.embedding_model == "a"


def test_the_model_is_saved_and_stores_of_encoding_version_1_load_without_one():
    assert ENCODING_VERSION == 2
    store, _ = churned_store(n=300, dim=4, llm=None)
    plain = [bytes(c) for c in store.dump()]
    assert "embedding_model" not in json.loads(plain[1])["params"]
    # Version 1 wrote this very layout: it loads, with no model.
    old = VectorStore.restore(1, plain)
    assert old.embedding_model is None and old.digest() == store.digest()
    store.add(vec(1, 2, 3, 4), b"new", model="emb-é")
    chunks = [bytes(c) for c in store.dump()]
    assert json.loads(chunks[1])["params"]["embedding_model"] == "emb-é"
    restored = VectorStore.restore(ENCODING_VERSION, chunks)
    assert restored.embedding_model == "emb-é" and restored.digest() == store.digest()
    assert restored.digest() != VectorStore.restore(1, plain).digest()
    # Version 1 had no such field.
    with pytest.raises(ValueError, match="bad params"):
        VectorStore.restore(1, chunks)
    with pytest.raises(ValueError, match="'embedding_model' must be a string"):
        VectorStore.restore(2, with_header(chunks, lambda h: h["params"].update(embedding_model="")))


def test_aof_commands_name_the_model_in_the_params():
    store = filled([vec(1, 2), vec(3, 4)], llm=b"llm")
    store.add(vec(5, 6), b"x", model="emb-a")
    commands = list(store.aof_commands(b"key"))
    assert json.loads(commands[0][3])["embedding_model"] == "emb-a"
    assert all(b"emb-a" not in part for command in commands[1:] for part in command)
    rebuilt = replay(commands)
    assert rebuilt.embedding_model == "emb-a" and rebuilt.digest() == store.digest()


def small_dump():
    store, _ = churned_store(n=300, dim=4, llm=None)
    return [bytes(c) for c in store.dump()]


def test_restore_rejects_truncated_chunks():
    chunks = small_dump()
    for i, chunk in enumerate(chunks):
        if not chunk:
            continue
        broken = chunks[:i] + [chunk[:-1]] + chunks[i + 1:]
        with pytest.raises(ValueError):
            VectorStore.restore(ENCODING_VERSION, broken)
    for count in range(len(chunks)):
        with pytest.raises(ValueError):
            VectorStore.restore(ENCODING_VERSION, chunks[:count])
    with pytest.raises(ValueError):
        VectorStore.restore(ENCODING_VERSION, chunks + [b""])


def with_header(chunks, change):
    header = json.loads(chunks[1])
    change(header)
    return [chunks[0], json.dumps(header).encode()] + chunks[2:]


def with_array(chunks, index, dtype, change):
    array = np.frombuffer(chunks[index], dtype=dtype).copy()
    change(array)
    return chunks[:index] + [array.tobytes()] + chunks[index + 1:]


def set_link(level0: np.ndarray, target: int):
    # Slot 0's first level-0 link (after the 4-byte count), as a u32.
    level0.view(np.uint8)[4:8] = np.frombuffer(struct.pack("<I", target), np.uint8)


@pytest.mark.parametrize("corrupt", [
    lambda c: [b"not-a-store"] + c[1:],
    lambda c: with_header(c, lambda h: h.update(items=h["items"] + 1)),
    lambda c: with_header(c, lambda h: h["index"].update(cur_element_count=h["index"]["cur_element_count"] - 1)),
    lambda c: with_header(c, lambda h: h["index"].update(max_elements=10**9)),
    lambda c: with_header(c, lambda h: h["index"].update(enterpoint_node=10**6)),
    lambda c: with_header(c, lambda h: h["index"].update(M=8)),
    lambda c: with_header(c, lambda h: h["params"].update(dim=5)),
    lambda c: with_header(c, lambda h: h["index"].pop("mult")),
    lambda c: with_header(c, lambda h: h.update(next_id=0)),
    lambda c: c[:2] + [b"llm without flag"] + c[3:],
    lambda c: with_array(c, 3, "<u8", lambda a: a.__setitem__(1, a[0])),           # duplicate id
    lambda c: with_array(c, 3, "<u8", lambda a: a.__setitem__(0, 10**9)),          # id not in index
    lambda c: with_array(c, 4, "<u8", lambda a: a.__setitem__(1, 10**6)),          # data offset
    lambda c: with_array(c, 6, "<u8", lambda a: a.__setitem__(0, 10**9)),          # meta of no item
    lambda c: c[:7] + [b'[1]'] + c[8:],
    lambda c: with_array(c, 9, "<u4", lambda a: a.__setitem__(0, 10**6)),          # label lookup
    lambda c: with_array(c, 10, "<i4", lambda a: a.__setitem__(-1, 1)),            # level past the used slots
    lambda c: with_array(c, 10, "<i4", lambda a: a.__setitem__(0, a[0] + 1)),      # level without its links
    lambda c: with_array(c, 11, "u1", lambda a: set_link(a, 10**6)),               # link out of range
    lambda c: with_array(c, 11, "u1", lambda a: a.__setitem__(0, 255)),            # link count too big
    lambda c: with_array(c, 11, "u1", lambda a: a.__setitem__(2, a[2] ^ 1)),       # deleted flag flipped
])
def test_restore_rejects_inconsistent_chunks(corrupt):
    broken = corrupt(small_dump())
    with pytest.raises(ValueError):
        VectorStore.restore(ENCODING_VERSION, broken)


def test_restore_rejects_a_link_to_a_slot_below_the_links_level():
    store = filled(random_vectors(400, 4, seed=9), StoreParams(m=2))
    chunks = [bytes(c) for c in store.dump()]
    levels = np.frombuffer(chunks[10], "<i4")
    low = int(np.nonzero(levels[:400] == 0)[0][0])
    # Point the first upper-level link at a slot that has no upper level.
    broken = with_array(chunks, 12, "u1", lambda a: a.view(np.uint8).__setitem__(
        slice(4, 8), np.frombuffer(struct.pack("<I", low), np.uint8)))
    assert np.frombuffer(chunks[12][:4], "<u4")[0] & 0xFFFF >= 1
    with pytest.raises(ValueError, match="link level"):
        VectorStore.restore(ENCODING_VERSION, broken)


# ---- AOF -------------------------------------------------------------------

def replay(commands) -> VectorStore:
    """Run aof_commands() output the way the command layer would."""
    store = None
    for command in commands:
        if command[0] == b"LLM.CREATE-VECTOR-STORE":
            assert command[2] == b"--PARAMS"
            llm = command[5] if len(command) > 4 and command[4] == b"--LLM" else None
            store = VectorStore(StoreParams.from_json(json.loads(command[3])), llm=llm)
            continue
        assert command[0] == b"LLM.ADD" and command[2] == b"--ID" and command[4] == b"--EMBEDDING-BLOB"
        meta = json.loads(command[7]) if command[6] == b"--META" else None
        store.add(np.frombuffer(command[5], "<f4"), command[-1], meta, int(command[3]))
    return store


def test_aof_commands_rebuild_the_same_content():
    store, _ = churned_store(n=500, dim=8, metric="l2")
    commands = list(store.aof_commands(b"key"))
    create = commands[0]
    assert create[:3] == [b"LLM.CREATE-VECTOR-STORE", b"key", b"--PARAMS"]
    assert json.loads(create[3]) == store.params.to_json()
    assert create[4:] == [b"--LLM", b"my-llm"]
    adds = commands[1:]
    assert sorted(int(c[3]) for c in adds) == sorted(store._data)
    for command in adds:
        id = int(command[3])
        data, vector, meta = store.get(id)
        assert command[:5] == [b"LLM.ADD", b"key", b"--ID", b"%d" % id, b"--EMBEDDING-BLOB"]
        assert command[5] == vector.astype("<f4").tobytes()
        if meta is None:
            assert len(command) == 7
        else:
            assert command[6] == b"--META" and json.loads(command[7]) == meta
            assert b" " not in command[7]
        assert command[-1] == data
    rebuilt = replay(commands)
    assert rebuilt.digest() == store.digest()
    # The replayed counter never hands out a live id.
    for _ in range(20):
        assert rebuilt.peek_id() not in rebuilt._data
        rebuilt.add(np.zeros(8, np.float32), b"fresh")


def replayable_store(metric: str) -> VectorStore:
    """Generated and explicit ids, overwrites, removes and re-adds that reuse
    slots (graph order is not id order), no removed id below the counter."""
    rng = np.random.default_rng(31)
    vectors = (rng.standard_normal((400, 6)) * 5).astype(np.float32)
    store = VectorStore(StoreParams(max_elements=64, metric=metric), llm=b"m")
    meta = lambda i: {"i": i, "odd": i % 2 == 1} if i % 3 else None
    for i in range(120):
        store.add(vectors[i], b"gen-%d" % i, meta(i), id=store.peek_id())
    for i in range(120, 220):
        store.add(vectors[i], b"big-%d" % i, meta(i), id=10**6 + i)
    store.add(vectors[220], b"zero", None, id=0)
    store.add(vectors[221], b"max", {"odd": True}, id=MAX_ID)
    store.add(vectors[222], b"above", None, id=store.peek_id() + 2)   # not the free id
    for id in range(10**6 + 120, 10**6 + 220, 3):
        store.remove(id)
    for i in range(223, 260):                                         # reuse deleted slots
        store.add(vectors[i], b"gen-%d" % i, meta(i), id=store.peek_id())
    for i in range(260, 290):
        store.add(vectors[i], b"over-%d" % i, meta(i), id=int(rng.integers(1, 120)))
    for i in range(290, 300):
        store.add(vectors[i], b"back-%d" % i, meta(i), id=10**6 + 120 + 3 * (i - 290))
    # Generated ids out of id order in the graph: 10 leaves its slot to
    # another id and comes back in a slot after 11's.
    data = {id: store.get(id) for id in (10, 11)}
    assert store.remove(10) and store.remove(11)
    store.add(vectors[300], b"slot-thief", None, id=10**7)
    for id in (11, 10):
        store.add(data[id][1], data[id][0], data[id][2], id=id)
    slots = store._slots()[0].tolist()
    assert slots.index(10) > slots.index(11)
    return store


def parse_and_replay(commands) -> VectorStore:
    """Replay aof_commands() output from its arguments, as LLM.ADD parses them."""
    store = None
    for command in commands:
        if command[0] == b"LLM.CREATE-VECTOR-STORE":
            options = dict(zip(command[2::2], command[3::2]))
            store = VectorStore(StoreParams.from_json(json.loads(options[b"--PARAMS"])),
                                llm=options.get(b"--LLM"))
            continue
        assert command[:2] == [b"LLM.ADD", b"key"]
        options = dict(zip(command[2:-1:2], command[3:-1:2]))
        assert set(options) <= {b"--ID", b"--EMBEDDING-BLOB", b"--META"}
        vector = np.frombuffer(options[b"--EMBEDDING-BLOB"], dtype="<f4").astype(np.float32)
        meta = json.loads(options[b"--META"]) if b"--META" in options else None
        store.add(vector, command[-1], meta, id=int(options[b"--ID"]))
    return store


def assert_same_store(a: VectorStore, b: VectorStore):
    assert a.digest() == b.digest()
    assert a.peek_id() == b.peek_id() and a._next_id == b._next_id
    assert sorted(a._data) == sorted(b._data)
    for id in a._data:
        (data_a, vector_a, meta_a), (data_b, vector_b, meta_b) = a.get(id), b.get(id)
        assert (data_a, meta_a) == (data_b, meta_b)
        assert vector_a.tobytes() == vector_b.tobytes()
    for query in random_vectors(20, 6, seed=32) - 0.5:
        assert a.knn(query, 10, ef=1000) == b.knn(query, 10, ef=1000)
        assert a.knn(query, 5, where={"odd": True}) == b.knn(query, 5, where={"odd": True})


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_aof_replay_reproduces_the_store_and_its_id_counter(metric):
    store = replayable_store(metric)
    commands = list(store.aof_commands(b"key"))
    rebuilt = parse_and_replay(commands)
    assert_same_store(rebuilt, store)
    # A rewrite of the replay: the same commands, the same store.
    assert list(rebuilt.aof_commands(b"key")) == commands
    twice = parse_and_replay(rebuilt.aof_commands(b"key"))
    assert_same_store(twice, store)
    # And the same future ids.
    for id in sorted(store._data)[::7]:
        for s in (store, rebuilt, twice):
            s.remove(id)
        assert store.peek_id() == rebuilt.peek_id() == twice.peek_id()
        new = [s.add(vec(1, 2, 3, 4, 5, 6), b"new") for s in (store, rebuilt, twice)]
        assert new[0] == new[1] == new[2]


def test_aof_replay_restarts_the_counter_at_a_removed_id_below_it():
    # Only adds are replayed: they cannot move the counter past an id that
    # is not live. The replay resumes there, and a rewrite of it is stable.
    store = replayable_store("l2")
    assert store.remove(40) and store.remove(50)
    assert store.peek_id() > 150
    commands = list(store.aof_commands(b"key"))
    rebuilt = parse_and_replay(commands)
    assert rebuilt.digest() == store.digest()
    assert rebuilt.peek_id() == 40
    assert list(rebuilt.aof_commands(b"key")) == commands
    assert parse_and_replay(commands).peek_id() == 40


def test_aof_commands_of_a_store_without_llm_or_items():
    store = VectorStore(StoreParams(metric="ip"))
    assert list(store.aof_commands(b"k")) == [
        [b"LLM.CREATE-VECTOR-STORE", b"k", b"--PARAMS",
         b'{"max_elements":100000,"m":16,"ef_construction":200,"dim":0,"metric":"ip","ef":64}']]


# ---- memory_usage / digest ---------------------------------------------------

def test_memory_usage_tracks_the_content():
    dim = 32
    vectors = random_vectors(20000, dim)
    store = VectorStore(StoreParams(max_elements=1000))
    empty = store.memory_usage()
    sizes = {}
    for i, v in enumerate(vectors):
        store.add(v, b"doc-%d" % i, id=i + 1)
        if i + 1 in (5000, 20000):
            sizes[i + 1] = store.memory_usage()
    assert empty < sizes[5000] < sizes[20000]
    # hnswlib's level-0 record per item, plus a little for the label map,
    # upper levels and the Python side.
    level0 = 4 + 8 * 16 + 4 * dim + 8
    per_item = (sizes[20000] - sizes[5000]) / 15000
    assert level0 < per_item < 2 * level0
    raw = 20000 * level0
    assert raw < sizes[20000] < 2 * raw + 4_000_000   # + hnswlib's fixed label locks

    with_meta = store.memory_usage()
    for id in range(1, 1001):
        store.add(vectors[id - 1], b"doc", {"tag": "x" * 40, "n": id}, id=id)
    assert store.memory_usage() > with_meta + 1000 * 100


def test_digest_is_equal_for_equal_content_and_changes_with_it():
    vectors = random_vectors(200, 6)

    def build(order):
        store = VectorStore(StoreParams(), llm=b"m")
        for i in order:
            store.add(vectors[i], b"d%d" % i, {"i": i} if i % 2 else None, id=i + 1)
        return store

    a = build(range(200))
    b = build(reversed(range(200)))      # another graph, same content
    assert a.digest() == b.digest()
    assert VectorStore.restore(ENCODING_VERSION, a.dump()).digest() == a.digest()

    changes = [
        lambda s: s.add(vectors[0], b"changed", None, id=1),
        lambda s: s.add(vectors[0], b"d0", {"x": 1}, id=1),
        lambda s: s.add(vectors[1], b"d0", None, id=1),
        lambda s: s.remove(5),
        lambda s: s.add(vectors[0], b"", None, id=999),
        lambda s: setattr(s, "llm", None),
        lambda s: setattr(s.params, "ef", 65),
    ]
    digests = {tuple(a.digest())}
    for change in changes:
        store = build(range(200))
        change(store)
        digests.add(tuple(store.digest()))
    assert len(digests) == len(changes) + 1


# ---- StoreParams -------------------------------------------------------------

def test_params_from_json_accepts_valid_fields():
    params = StoreParams.from_json({"max_elements": 10, "m": 8, "ef_construction": 50, "dim": 3,
                                    "metric": "COSINE", "ef": 20})
    assert params == StoreParams(10, 8, 50, 3, "cosine", 20)
    assert StoreParams.from_json(params.to_json()) == params
    assert StoreParams.from_json({}) == StoreParams()
    assert StoreParams().ef == 64
    # An unknown embedding model is left out of the JSON, as before it existed.
    assert "embedding_model" not in params.to_json()
    assert StoreParams.from_json({"embedding_model": None}) == StoreParams()
    named = StoreParams.from_json({"embedding_model": "all-MiniLM-L6-v2"})
    assert named.embedding_model == "all-MiniLM-L6-v2"
    assert StoreParams.from_json(named.to_json()) == named


@pytest.mark.parametrize("obj, message", [
    ([], "--PARAMS must be a JSON object"),
    ("m", "--PARAMS must be a JSON object"),
    ({"M": 16}, "unknown vector store parameter 'M'"),
    ({"m": 1}, "vector store parameter 'm' must be an integer from 2 to 100"),
    ({"m": 101}, "vector store parameter 'm' must be an integer from 2 to 100"),
    ({"m": 16.0}, "vector store parameter 'm' must be an integer from 2 to 100"),
    ({"m": True}, "vector store parameter 'm' must be an integer from 2 to 100"),
    ({"m": "16"}, "vector store parameter 'm' must be an integer from 2 to 100"),
    ({"max_elements": 0}, "'max_elements' must be an integer from 1 to 100000000"),
    ({"max_elements": 100_000_001}, "'max_elements' must be an integer from 1 to 100000000"),
    ({"ef_construction": 0}, "'ef_construction' must be an integer from 1 to 10000"),
    ({"dim": -1}, "'dim' must be an integer from 0 to 65536"),
    ({"dim": 65537}, "'dim' must be an integer from 0 to 65536"),
    ({"ef": 10001}, "'ef' must be an integer from 1 to 10000"),
    ({"metric": "dot"}, "'metric' must be one of l2, ip, cosine"),
    ({"metric": 1}, "'metric' must be one of l2, ip, cosine"),
    ({"embedding_model": ""}, "'embedding_model' must be a string of 1 to 1024 bytes of UTF-8"),
    ({"embedding_model": "m" * 1025}, "'embedding_model' must be a string of 1 to 1024 bytes of UTF-8"),
    ({"embedding_model": "\ud800"}, "'embedding_model' must be a string of 1 to 1024 bytes of UTF-8"),
    ({"embedding_model": 1}, "'embedding_model' must be a string of 1 to 1024 bytes of UTF-8"),
])
def test_params_from_json_rejects_bad_input(obj, message):
    with pytest.raises(LLMError) as error:
        StoreParams.from_json(obj)
    assert message in error.value.args[0]
