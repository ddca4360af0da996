"""The vector-store commands, end to end against a real redis-server.

LLM.CREATE-VECTOR-STORE, LLM.ADD, LLM.GET, LLM.REM, LLM.SIZE and LLM.KNN:
every path, their bad inputs, and what they tell WATCH and keyspace
notifications. Each error case also checks that nothing changed.
"""

import json
import re
import socket
import time

import numpy as np
import pytest
import redis
from helpers import ERROR_CODE, error_text, expect_error  # noqa: F401

CREATE, ADD, GET, REM, SIZE, KNN = ("LLM.CREATE-VECTOR-STORE", "LLM.ADD", "LLM.GET", "LLM.REM",
                                    "LLM.SIZE", "LLM.KNN")
MAX_ID = 2**64 - 1


# ---- helpers ----------------------------------------------------------------

def blob(values) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()






def wire_reply(port: int, *args: bytes) -> bytes:
    """The first line of the server's raw RESP reply to one command."""
    payload = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk, "connection closed"
            data += chunk
    return data.split(b"\r\n", 1)[0]


def state(r, *keys) -> list:
    """Everything observable about keys: type, content digest, size, items 0..3, string value."""
    out = []
    for key in keys:
        kind = r.type(key)
        digest = r.execute_command("DEBUG", "DIGEST-VALUE", key)
        if kind == b"llm-store":
            extra = [r.execute_command(SIZE, key)] + [r.execute_command(GET, key, i) for i in range(4)]
        elif kind == b"string":
            extra = [r.get(key)]
        else:
            extra = []
        out.append((key, kind, digest, extra))
    return out


def knn(r, key, vector, *options):
    """LLM.KNN with a text embedding; replies as [(id, float distance), ...]."""
    reply = r.execute_command(KNN, key, "--EMBEDDING", ",".join(map(str, vector)), *options)
    return [(int(item[0]), float(item[1])) for item in reply]


def strict_json(text: bytes):
    """JSON as RFC 8259 defines it: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def store(r):
    """Key s: a 3-d store with items 1 (meta) and 2; key str: a string."""
    assert r.execute_command(CREATE, "s") == 1
    assert r.execute_command(ADD, "s", "--EMBEDDING", "1,2,3", "--META", '{"tag":"a"}', "one") == 1
    assert r.execute_command(ADD, "s", "--EMBEDDING", "4,5,6", "two") == 2
    r.set("str", "plain")
    return r


# ---- the seed walk-through --------------------------------------------------

def test_walkthrough_create_add_get_knn_size_rem(r):
    assert r.execute_command(CREATE, "s") == 1
    assert r.execute_command(ADD, "s", "--EMBEDDING", "1,2,3", "first") == 1
    assert r.execute_command(ADD, "s", "--EMBEDDING", "4,5,6", "second") == 2
    assert r.execute_command(GET, "s", 1) == [b"first", b"1.0,2.0,3.0"]
    assert r.execute_command(GET, "s", 2) == [b"second", b"4.0,5.0,6.0"]
    assert r.execute_command(KNN, "s", "--EMBEDDING", "1.1,2.2,3.3") == [[1, b"0.14"], [2, b"23.54"]]
    assert r.execute_command(SIZE, "s") == 2
    assert r.execute_command(REM, "s", 1) == 1
    assert r.execute_command(REM, "s", 1) == 0
    assert r.execute_command(SIZE, "s") == 1
    assert r.execute_command(GET, "s", 1) is None
    assert r.execute_command(KNN, "s", "--EMBEDDING", "1.1,2.2,3.3") == [[2, b"23.54"]]


def test_type_of_a_store_key_is_the_module_type(r):
    r.execute_command(CREATE, "s")
    assert r.type("s") == b"llm-store"


# ---- LLM.CREATE-VECTOR-STORE ------------------------------------------------

def test_create_nx_on_missing_key_creates(r):
    assert r.execute_command(CREATE, "s", "--NX") == 1
    assert r.exists("s") == 1
    assert r.execute_command(SIZE, "s") == 0


def test_create_nx_on_existing_store_returns_0_and_keeps_items(store):
    before = state(store, "s")
    assert store.execute_command(CREATE, "s", "--NX") == 0
    assert state(store, "s") == before
    assert store.execute_command(SIZE, "s") == 2


def test_create_xx_on_missing_key_returns_0_and_creates_nothing(r):
    assert r.execute_command(CREATE, "s", "--XX") == 0
    assert r.exists("s") == 0


def test_create_xx_on_existing_store_replaces_it_with_an_empty_one(store):
    assert store.execute_command(CREATE, "s", "--XX") == 1
    assert store.execute_command(SIZE, "s") == 0
    assert store.execute_command(GET, "s", 1) is None
    assert store.execute_command(KNN, "s", "--EMBEDDING", "1,2,3") == []


def test_create_without_nx_xx_replaces_existing_store_with_empty_one(store):
    assert store.execute_command(CREATE, "s") == 1
    assert store.execute_command(SIZE, "s") == 0
    assert store.execute_command(GET, "s", 2) is None
    # The new store fixes its dimension afresh.
    assert store.execute_command(ADD, "s", "--EMBEDDING", "1,2", "x") == 1


def test_create_flags_are_case_insensitive(store):
    assert store.execute_command(CREATE, "s", "--nx") == 0
    assert store.execute_command(CREATE, "t", "--Xx") == 0
    assert store.exists("t") == 0


@pytest.mark.parametrize("kind", ["hnsw", "HNSW", "Hnsw"])
def test_create_type_hnsw_accepted_case_insensitively(r, kind):
    assert r.execute_command(CREATE, "s", "--TYPE", kind) == 1
    assert r.execute_command(ADD, "s", "--EMBEDDING", "1,2", "x") == 1


def test_create_with_llm_key_creates_store(r):
    assert r.execute_command(CREATE, "s", "--LLM", "my-llm") == 1
    assert r.execute_command(SIZE, "s") == 0
    assert r.exists("my-llm") == 0


def test_params_dim_fixes_dimension_before_first_add(r):
    assert r.execute_command(CREATE, "s", "--PARAMS", '{"dim": 4}') == 1
    expect_error(r, ADD, "s", "--EMBEDDING", "1,2,3", "x", match="dimension 3.*4")
    assert r.execute_command(SIZE, "s") == 0
    assert r.execute_command(ADD, "s", "--EMBEDDING", "1,2,3,4", "x") == 1


def test_first_add_fixes_dimension_when_dim_is_0(r):
    r.execute_command(CREATE, "s")
    r.execute_command(ADD, "s", "--EMBEDDING", "1,2", "x")
    expect_error(r, ADD, "s", "--EMBEDDING", "1,2,3", "y", match="dimension")
    expect_error(r, KNN, "s", "--EMBEDDING", "1,2,3", match="dimension")


def test_params_metric_l2_is_squared_euclidean(r):
    r.execute_command(CREATE, "s", "--PARAMS", '{"metric": "l2"}')
    r.execute_command(ADD, "s", "--EMBEDDING", "0,0", "x")
    assert knn(r, "s", [3, 4]) == [(1, 25.0)]


def test_params_metric_ip_is_one_minus_dot_product(r):
    r.execute_command(CREATE, "s", "--PARAMS", '{"metric": "ip"}')
    r.execute_command(ADD, "s", "--EMBEDDING", "1,0", "x")
    r.execute_command(ADD, "s", "--EMBEDDING", "0.5,0.5", "y")
    # 1 - dot: [1,0]·[2,1] = 2 -> -1; [0.5,0.5]·[2,1] = 1.5 -> -0.5
    assert knn(r, "s", [2, 1]) == [(1, -1.0), (2, -0.5)]


def test_params_metric_cosine_is_one_minus_cosine_and_stores_unit_vectors(r):
    r.execute_command(CREATE, "s", "--PARAMS", '{"metric": "COSINE"}')
    r.execute_command(ADD, "s", "--EMBEDDING", "3,4", "x")
    r.execute_command(ADD, "s", "--EMBEDDING", "0,7", "y")
    assert r.execute_command(GET, "s", 1) == [b"x", b"0.6,0.8"]
    assert r.execute_command(GET, "s", 2) == [b"y", b"0.0,1.0"]
    result = knn(r, "s", [6, 8])
    assert [i for i, _ in result] == [1, 2]
    assert result[0][1] == pytest.approx(0.0, abs=1e-6)
    assert result[1][1] == pytest.approx(1 - 0.8, abs=1e-6)


def test_params_max_elements_is_only_initial_capacity(r):
    r.execute_command(CREATE, "s", "--PARAMS", '{"max_elements": 2, "m": 4, "ef_construction": 10}')
    vectors = np.random.default_rng(1).random((50, 4), dtype=np.float32)
    pipe = r.pipeline(transaction=False)
    for i, vector in enumerate(vectors):
        pipe.execute_command(ADD, "s", "--EMBEDDING-BLOB", blob(vector), f"item{i}")
    assert pipe.execute() == list(range(1, 51))
    assert r.execute_command(SIZE, "s") == 50
    for i in (0, 25, 49):
        assert r.execute_command(KNN, "s", "--EMBEDDING-BLOB", blob(vectors[i]), "--K", 1)[0][0] == i + 1


def test_params_ef_is_accepted_and_knn_still_answers(r):
    r.execute_command(CREATE, "s", "--PARAMS", '{"ef": 1}')
    for i in range(20):
        r.execute_command(ADD, "s", "--EMBEDDING", f"{i},0", "x")
    # The breadth is raised to K, so the 5 nearest are all found.
    assert [i for i, _ in knn(r, "s", [0, 0], "--K", 5)] == [1, 2, 3, 4, 5]


def test_params_all_fields_together_accepted(r):
    params = {"max_elements": 10, "m": 8, "ef_construction": 50, "dim": 2, "metric": "ip", "ef": 20}
    assert r.execute_command(CREATE, "s", "--PARAMS", json.dumps(params)) == 1
    expect_error(r, ADD, "s", "--EMBEDDING", "1,2,3", "x", match="dimension")


# ---- LLM.ADD ----------------------------------------------------------------

def test_add_explicit_id_0(r):
    r.execute_command(CREATE, "s")
    assert r.execute_command(ADD, "s", "--ID", 0, "--EMBEDDING", "1,2", "zero") == 0
    assert r.execute_command(GET, "s", 0) == [b"zero", b"1.0,2.0"]
    assert r.execute_command(KNN, "s", "--EMBEDDING", "1,2") == [[0, b"0"]]
    assert r.execute_command(REM, "s", 0) == 1


def test_add_ids_at_the_signed_boundary_and_uint64_max(r):
    r.execute_command(CREATE, "s")
    # Ids up to 2**63-1 are integer replies; above that RESP integers (signed
    # 64-bit) cannot carry them and the server replies with the decimal digits.
    assert r.execute_command(ADD, "s", "--ID", 2**63 - 1, "--EMBEDDING", "1,0", "a") == 2**63 - 1
    assert r.execute_command(ADD, "s", "--ID", 2**63, "--EMBEDDING", "2,0", "b") == b"9223372036854775808"
    assert r.execute_command(ADD, "s", "--ID", MAX_ID, "--EMBEDDING", "3,0", "c") == b"%d" % MAX_ID
    assert r.execute_command(GET, "s", MAX_ID) == [b"c", b"3.0,0.0"]
    assert r.execute_command(GET, "s", 2**63) == [b"b", b"2.0,0.0"]
    assert r.execute_command(KNN, "s", "--EMBEDDING", "3,0") == [
        [b"%d" % MAX_ID, b"0"], [b"9223372036854775808", b"1"], [2**63 - 1, b"4"]]
    # Generated ids still start from the counter.
    assert r.execute_command(ADD, "s", "--EMBEDDING", "4,0", "d") == 1
    assert r.execute_command(REM, "s", MAX_ID) == 1
    assert r.execute_command(SIZE, "s") == 3


def test_add_generated_ids_count_from_1_and_skip_live_ids(r):
    r.execute_command(CREATE, "s")
    for i in (1, 2, 4):
        r.execute_command(ADD, "s", "--ID", i, "--EMBEDDING", "1,1", "x")
    assert r.execute_command(ADD, "s", "--EMBEDDING", "1,1", "y") == 3
    assert r.execute_command(ADD, "s", "--EMBEDDING", "1,1", "z") == 5
    assert r.execute_command(SIZE, "s") == 5


def test_add_generated_ids_are_not_reused_after_removal(r):
    r.execute_command(CREATE, "s")
    assert r.execute_command(ADD, "s", "--EMBEDDING", "1,1", "a") == 1
    assert r.execute_command(ADD, "s", "--EMBEDDING", "1,1", "b") == 2
    r.execute_command(REM, "s", 2)
    assert r.execute_command(ADD, "s", "--EMBEDDING", "1,1", "c") == 3


def test_add_existing_id_replaces_data_embedding_and_meta(r):
    r.execute_command(CREATE, "s")
    r.execute_command(ADD, "s", "--EMBEDDING", "1,2,3", "--META", '{"v":1}', "old")
    r.execute_command(ADD, "s", "--EMBEDDING", "9,9,9", "other")
    assert r.execute_command(ADD, "s", "--ID", 1, "--EMBEDDING", "7,8,9", "--META", '{"v":2}', "new") == 1
    assert r.execute_command(SIZE, "s") == 2
    assert r.execute_command(GET, "s", 1) == [b"new", b"7.0,8.0,9.0", b'{"v":2}']
    assert knn(r, "s", [7, 8, 9], "--K", 1) == [(1, 0.0)]
    assert r.execute_command(KNN, "s", "--EMBEDDING", "1,2,3", "--FILTER", '{"v":1}') == []
    # Re-added without --META: the old meta is gone.
    assert r.execute_command(ADD, "s", "--ID", 1, "--EMBEDDING", "7,8,9", "newer") == 1
    assert r.execute_command(GET, "s", 1) == [b"newer", b"7.0,8.0,9.0"]
    assert r.execute_command(KNN, "s", "--EMBEDDING", "7,8,9", "--FILTER", '{"v":2}') == []
    assert r.execute_command(KNN, "s", "--EMBEDDING", "7,8,9", "--K", 1, "--WITHDATA") == [
        [1, b"0", b"newer", None]]


def test_add_readd_removed_id_revives_it(r):
    r.execute_command(CREATE, "s")
    r.execute_command(ADD, "s", "--ID", 5, "--EMBEDDING", "1,1", "a")
    r.execute_command(REM, "s", 5)
    assert r.execute_command(ADD, "s", "--ID", 5, "--EMBEDDING", "2,2", "b") == 5
    assert r.execute_command(GET, "s", 5) == [b"b", b"2.0,2.0"]
    assert knn(r, "s", [2, 2]) == [(5, 0.0)]


def test_add_embedding_blob_equals_embedding_text(r):
    values = [0.1, -2.5, 3e-7, 1234.5678]
    r.execute_command(CREATE, "a")
    r.execute_command(CREATE, "b")
    r.execute_command(ADD, "a", "--EMBEDDING", ",".join(map(str, values)), "--META", '{"k":1}', "d")
    r.execute_command(ADD, "b", "--EMBEDDING-BLOB", blob(values), "--META", '{"k":1}', "d")
    assert r.execute_command(GET, "a", 1) == r.execute_command(GET, "b", 1)
    assert r.execute_command(GET, "a", 1)[1] == b"0.1,-2.5,3e-07,1234.5677"
    assert (r.execute_command("DEBUG", "DIGEST-VALUE", "a")
            == r.execute_command("DEBUG", "DIGEST-VALUE", "b"))


def test_get_embedding_text_round_trips_float32_exactly(r):
    vector = np.random.default_rng(7).standard_normal(16).astype(np.float32)
    r.execute_command(CREATE, "s")
    r.execute_command(ADD, "s", "--EMBEDDING-BLOB", blob(vector), "x")
    text = r.execute_command(GET, "s", 1)[1]
    assert np.array_equal(np.array(text.split(b","), dtype=np.float32), vector)


@pytest.mark.parametrize("data", [b"--K", b"--META", b"--EMBEDDING", b"--ID", b"--nx", b"-"])
def test_add_last_argument_is_data_even_if_it_looks_like_an_option(r, data):
    r.execute_command(CREATE, "s")
    assert r.execute_command(ADD, "s", "--EMBEDDING", "1,2", data) == 1
    assert r.execute_command(GET, "s", 1) == [data, b"1.0,2.0"]


def test_add_binary_and_empty_data_round_trip(r):
    binary = bytes(range(256)) + b"\r\n\x00$-1\r\n"
    r.execute_command(CREATE, "s")
    assert r.execute_command(ADD, "s", "--EMBEDDING", "1,2", binary) == 1
    assert r.execute_command(ADD, "s", "--EMBEDDING", "3,4", b"") == 2
    assert r.execute_command(GET, "s", 1)[0] == binary
    assert r.execute_command(GET, "s", 2)[0] == b""
    withdata = r.execute_command(KNN, "s", "--EMBEDDING", "1,2", "--WITHDATA")
    assert [entry[2] for entry in withdata] == [binary, b""]


def test_add_meta_round_trips_as_json(r):
    meta = {"n": 1, "f": 1.5, "t": True, "none": None, "s": "héllo ✓",
            "list": [1, "two", {"three": [3]}], "obj": {"a": {"b": "c"}}}
    r.execute_command(CREATE, "s")
    r.execute_command(ADD, "s", "--EMBEDDING", "1,2", "--META", json.dumps(meta), "x")
    r.execute_command(ADD, "s", "--EMBEDDING", "1,2", "--META", "{}", "y")
    data, vector, meta_json = r.execute_command(GET, "s", 1)
    assert strict_json(meta_json) == meta
    assert r.execute_command(GET, "s", 2) == [b"y", b"1.0,2.0", b"{}"]
    # An item without meta has no third element.
    r.execute_command(ADD, "s", "--EMBEDDING", "1,2", "z")
    assert r.execute_command(GET, "s", 3) == [b"z", b"1.0,2.0"]


@pytest.mark.parametrize("meta", ["[1, 2]", '"text"', "1", "null", "true"])
def test_add_meta_must_be_a_json_object(store, meta):
    before = state(store, "s")
    expect_error(store, ADD, "s", "--EMBEDDING", "1,2,3", "--META", meta, "x", match="--META.*object")
    assert state(store, "s") == before


@pytest.mark.parametrize("meta", ['{"a": NaN}', '{"a": Infinity}', '{"a": 1e999}'])
def test_add_meta_is_strict_json(store, meta):
    # Either refused, or stored so that LLM.GET returns valid JSON.
    try:
        item = store.execute_command(ADD, "s", "--EMBEDDING", "1,2,3", "--META", meta, "x")
    except redis.ResponseError as exc:
        assert error_text(exc).startswith("ERR --META")
        return
    strict_json(store.execute_command(GET, "s", item)[2])


def test_add_meta_with_lone_surrogate_is_atomic(store):
    before = state(store, "s")
    try:
        item = store.execute_command(ADD, "s", "--EMBEDDING", "1,2,3", "--META",
                                     '{"a": "\\ud800"}', "x")
    except redis.ResponseError as exc:
        assert "internal error" not in str(exc)
        assert state(store, "s") == before
        return
    assert store.execute_command(GET, "s", item)[0] == b"x"


# ---- LLM.GET / LLM.REM / LLM.SIZE --------------------------------------------

def test_get_missing_key_or_id_is_nil(store):
    assert store.execute_command(GET, "nokey", 1) is None
    assert store.execute_command(GET, "s", 3) is None
    assert store.execute_command(GET, "s", MAX_ID) is None


def test_rem_missing_key_or_id_returns_0_and_changes_nothing(store):
    before = state(store, "s")
    assert store.execute_command(REM, "nokey", 1) == 0
    assert store.execute_command(REM, "s", 3) == 0
    assert store.exists("nokey") == 0
    assert state(store, "s") == before


def test_rem_all_items_leaves_an_empty_store(store):
    assert store.execute_command(REM, "s", 1) == 1
    assert store.execute_command(REM, "s", 2) == 1
    assert store.execute_command(SIZE, "s") == 0
    assert store.exists("s") == 1
    assert store.execute_command(KNN, "s", "--EMBEDDING", "1,2,3") == []


def test_size_missing_key_is_0(r):
    assert r.execute_command(SIZE, "nokey") == 0


# ---- LLM.KNN ----------------------------------------------------------------

def test_knn_missing_key_or_empty_store_is_empty_list(r):
    assert r.execute_command(KNN, "nokey", "--EMBEDDING", "1,2,3") == []
    r.execute_command(CREATE, "s")
    assert r.execute_command(KNN, "s", "--EMBEDDING", "1,2,3") == []
    assert r.execute_command(KNN, "s", "--EMBEDDING", "1,2,3", "--WITHDATA") == []


def test_knn_k_limits_the_answer(r):
    r.execute_command(CREATE, "s")
    for i in range(30):
        r.execute_command(ADD, "s", "--EMBEDDING", f"{i},0", "x")
    assert len(knn(r, "s", [0, 0])) == 10                         # default K
    assert [i for i, _ in knn(r, "s", [0, 0], "--K", 1)] == [1]
    assert [i for i, _ in knn(r, "s", [0, 0], "--K", 3)] == [1, 2, 3]
    assert len(knn(r, "s", [0, 0], "--K", 10000)) == 30           # K above the size


def test_knn_matches_brute_force_on_random_vectors(r):
    rng = np.random.default_rng(2024)
    dim, count = 12, 500
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    r.execute_command(CREATE, "s")
    pipe = r.pipeline(transaction=False)
    for i, vector in enumerate(vectors):
        pipe.execute_command(ADD, "s", "--ID", i, "--EMBEDDING-BLOB", blob(vector),
                             "--META", json.dumps({"group": i % 5}), b"d%d" % i)
    assert pipe.execute() == list(range(count))
    # Churn: remove some, overwrite some, so deleted slots are in the graph.
    removed = set(range(0, count, 7))
    for i in removed:
        assert r.execute_command(REM, "s", i) == 1
    for i in range(3, count, 11):
        if i not in removed:
            vectors[i] = rng.standard_normal(dim).astype(np.float32)
            r.execute_command(ADD, "s", "--ID", i, "--EMBEDDING-BLOB", blob(vectors[i]),
                              "--META", json.dumps({"group": i % 5}), b"d%d" % i)
    live = np.array(sorted(set(range(count)) - removed))
    assert r.execute_command(SIZE, "s") == len(live)

    for _ in range(5):
        query = rng.standard_normal(dim).astype(np.float32)
        exact = ((vectors[live] - query) ** 2).sum(axis=1)
        order = live[np.argsort(exact, kind="stable")]
        reply = r.execute_command(KNN, "s", "--EMBEDDING-BLOB", blob(query), "--K", 10, "--EF", 500)
        ids = [int(i) for i, _ in reply]
        distances = [float(d) for _, d in reply]
        assert ids == order[:10].tolist()
        assert distances == sorted(distances)
        expected = {int(i): float(d) for i, d in zip(live, exact)}
        for i, d in zip(ids, distances):
            assert d == pytest.approx(expected[i], rel=1e-5, abs=1e-5)
        # Default breadth: nearest first, and (nearly) the true neighbours.
        default = [int(i) for i, _ in r.execute_command(KNN, "s", "--EMBEDDING-BLOB", blob(query))]
        assert len(default) == 10 and len(set(default) & set(order[:10].tolist())) >= 8
        # Filtered: the K nearest among the matching items.
        group = live[live % 5 == 2]
        exact_group = ((vectors[group] - query) ** 2).sum(axis=1)
        filtered = r.execute_command(KNN, "s", "--EMBEDDING-BLOB", blob(query), "--K", 5,
                                     "--FILTER", '{"group": 2}', "--EF", 500)
        assert [int(i) for i, _ in filtered] == group[np.argsort(exact_group, kind="stable")][:5].tolist()


def test_knn_filtered_graph_search_with_ids_above_2_63(r):
    # 100 of 500 items match and --EF is small: the filter runs inside the
    # graph walk (not a scan), on labels that do not fit a signed 64-bit int.
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((500, 8)).astype(np.float32)
    ids = [MAX_ID - i for i in range(500)]
    r.execute_command(CREATE, "s")
    pipe = r.pipeline(transaction=False)
    for i, vector in zip(ids, vectors):
        pipe.execute_command(ADD, "s", "--ID", i, "--EMBEDDING-BLOB", blob(vector),
                             "--META", json.dumps({"g": i % 5}), "x")
    pipe.execute()
    query = rng.standard_normal(8).astype(np.float32)
    matching = [k for k, i in enumerate(ids) if i % 5 == 2]
    exact = ((vectors[matching] - query) ** 2).sum(axis=1)
    nearest = [ids[matching[k]] for k in np.argsort(exact)[:5]]
    reply = r.execute_command(KNN, "s", "--EMBEDDING-BLOB", blob(query), "--K", 5, "--EF", 10,
                              "--FILTER", '{"g": 2}')
    got = [int(i) for i, _ in reply]
    assert all(isinstance(i, bytes) for i, _ in reply)        # above 2**63: bulk strings
    assert all(i % 5 == 2 for i in got)
    distances = [float(d) for _, d in reply]
    assert distances == sorted(distances)
    assert len(set(got) & set(nearest)) >= 4, (got, nearest)


def test_knn_ef_option_accepted(store):
    assert store.execute_command(KNN, "s", "--EMBEDDING", "1,2,3", "--EF", 1)[0][0] == 1
    assert store.execute_command(KNN, "s", "--EMBEDDING", "1,2,3", "--EF", 100000, "--K", 1) == [[1, b"0"]]


def test_knn_withdata_returns_id_distance_data_meta(store):
    assert store.execute_command(KNN, "s", "--EMBEDDING", "1,2,3", "--WITHDATA") == [
        [1, b"0", b"one", b'{"tag":"a"}'],
        [2, b"27", b"two", None],
    ]


def test_knn_distance_has_seven_significant_digits(r):
    r.execute_command(CREATE, "s")
    r.execute_command(ADD, "s", "--EMBEDDING", "0,0", "x")
    (item,) = r.execute_command(KNN, "s", "--EMBEDDING", "1,0.333333333")
    assert re.fullmatch(rb"1\.111111", item[1])


@pytest.fixture
def filtered(r):
    r.execute_command(CREATE, "f")
    metas = {1: {"n": 1, "c": "red"}, 2: {"n": 1.0, "c": "blue"}, 3: {"n": True, "c": "red"},
             4: {"n": "1", "c": "red"}, 5: {"n": None, "c": "red"}, 6: {"c": "red"},
             7: {"n": [1, 2], "c": "red"}, 8: {"n": 0, "c": "red"}, 9: {"n": False}}
    for i, meta in metas.items():
        r.execute_command(ADD, "f", "--ID", i, "--EMBEDDING", f"{i},0", "--META", json.dumps(meta), "x")
    r.execute_command(ADD, "f", "--ID", 10, "--EMBEDDING", "10,0", "no meta")
    return r


def filter_ids(r, where, *options):
    reply = r.execute_command(KNN, "f", "--EMBEDDING", "0,0", "--FILTER", json.dumps(where), *options)
    return [i for i, _ in reply]


@pytest.mark.parametrize("where, ids", [
    ({"n": 1}, [1, 2]),             # 1 == 1.0, but true is not 1
    ({"n": 1.0}, [1, 2]),
    ({"n": True}, [3]),
    ({"n": False}, [9]),            # false is not 0
    ({"n": 0}, [8]),
    ({"n": "1"}, [4]),
    ({"n": None}, [5]),             # null matches null, not a missing field
    ({"n": [1, 2]}, [7]),
    ({"c": "red"}, [1, 3, 4, 5, 6, 7, 8]),
    ({"n": 1, "c": "red"}, [1]),    # every field must match
    ({"n": 1, "c": "green"}, []),
    ({"missing": 1}, []),
    ({}, list(range(1, 11))),       # an empty filter keeps everything
])
def test_knn_filter_is_strict_equality_on_meta_fields(filtered, where, ids):
    assert filter_ids(filtered, where, "--K", 100) == ids


def test_knn_filter_k_nearest_among_matches(filtered):
    assert filter_ids(filtered, {"c": "red"}, "--K", 2) == [1, 3]


def test_knn_filter_with_withdata(filtered):
    reply = filtered.execute_command(KNN, "f", "--EMBEDDING", "0,0", "--FILTER", '{"n": true}', "--WITHDATA")
    assert reply == [[3, b"9", b"x", b'{"n":true,"c":"red"}']]


def test_knn_query_text_ignored_when_embedding_given(store):
    assert store.execute_command(KNN, "s", "--EMBEDDING", "4,5,6", "--K", 1, "some text") == [[2, b"0"]]


def test_knn_text_query_on_empty_store_is_empty_list(r):
    r.execute_command(CREATE, "s")
    assert r.execute_command(KNN, "s", "hello") == []


# ---- option names -------------------------------------------------------------

def test_option_names_are_case_insensitive(r):
    assert r.execute_command(CREATE, "s", "--type", "hnsw", "--Params", '{"dim": 2}', "--nX") == 1
    assert r.execute_command(ADD, "s", "--id", 7, "--Embedding", "1,2", "--meta", '{"a":1}', "x") == 7
    assert r.execute_command(ADD, "s", "--embedding-blob", blob([3, 4]), "y") == 1
    assert r.execute_command(KNN, "s", "--k", 1, "--embedding", "1,2", "--ef", 5,
                             "--filter", '{"a":1}', "--withData") == [[7, b"0", b"x", b'{"a":1}']]
    assert r.execute_command("llm.size", "s") == 2
    assert r.execute_command("Llm.Get", "s", 1) == [b"y", b"3.0,4.0"]


# ---- errors: each one has an upper-case code and changes nothing -------------

def deep_json(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


NAN_BLOB = blob([1, float("nan"), 3])
ERRORS = [
    # LLM.CREATE-VECTOR-STORE
    ((CREATE,), "wrong number of arguments for 'llm.create-vector-store' command"),
    ((CREATE, "s", "--NX", "--XX"), "options --NX and --XX cannot be combined"),
    ((CREATE, "new", "--xx", "--nx"), "cannot be combined"),
    ((CREATE, "s", "--NX", "--NX"), "option --NX given more than once"),
    ((CREATE, "s", "--nx", "--NX"), "option --NX given more than once"),
    ((CREATE, "s", "--TYPE", "flat"), "--TYPE must be one of hnsw, got 'flat'"),
    ((CREATE, "s", "--TYPE"), "option --TYPE needs a value"),
    ((CREATE, "s", "--LLM"), "option --LLM needs a value"),
    ((CREATE, "s", "--PARAMS"), "option --PARAMS needs a value"),
    ((CREATE, "s", "--PARAMS", "{bad"), "--PARAMS must be valid JSON ("),
    ((CREATE, "s", "--PARAMS", ""), "--PARAMS must be valid JSON"),
    ((CREATE, "s", "--PARAMS", "[]"), "--PARAMS must be a JSON object"),
    ((CREATE, "s", "--PARAMS", '{"size": 3}'), "unknown vector store parameter 'size'"),
    ((CREATE, "s", "--PARAMS", '{"dim": "3"}'), "'dim' must be an integer from 0 to 65536"),
    ((CREATE, "s", "--PARAMS", '{"dim": true}'), "'dim' must be an integer"),
    ((CREATE, "s", "--PARAMS", '{"dim": 3.0}'), "'dim' must be an integer"),
    ((CREATE, "s", "--PARAMS", '{"dim": -1}'), "'dim' must be an integer"),
    ((CREATE, "s", "--PARAMS", '{"dim": 65537}'), "'dim' must be an integer"),
    ((CREATE, "s", "--PARAMS", '{"m": 1}'), "'m' must be an integer from 2 to 100"),
    ((CREATE, "s", "--PARAMS", '{"m": 101}'), "'m' must be an integer"),
    ((CREATE, "s", "--PARAMS", '{"max_elements": 0}'), "'max_elements' must be an integer from 1"),
    ((CREATE, "s", "--PARAMS", '{"ef_construction": 0}'), "'ef_construction' must be an integer"),
    ((CREATE, "s", "--PARAMS", '{"ef": 0}'), "'ef' must be an integer"),
    ((CREATE, "s", "--PARAMS", '{"ef": null}'), "'ef' must be an integer"),
    ((CREATE, "s", "--PARAMS", '{"metric": "hamming"}'), "'metric' must be one of l2, ip, cosine"),
    ((CREATE, "s", "--PARAMS", '{"metric": 1}'), "'metric' must be one of"),
    ((CREATE, "s", "--NX", "--PARAMS", '{"dim": -1}'), "'dim'"),
    ((CREATE, "s", "--FOO"), "unknown option '--FOO'"),
    ((CREATE, "s", "extra"), "syntax error at 'extra'"),
    # LLM.ADD
    ((ADD,), "wrong number of arguments for 'llm.add' command"),
    ((ADD, "s"), "wrong number of arguments for 'llm.add' command"),
    ((ADD, "nokey", "--EMBEDDING", "1,2,3", "x"), "no vector store at key 'nokey'"),
    ((ADD, "s", "x"), "no --EMBEDDING given and the vector store has no LLM"),
    ((ADD, "s", "--META", "{}", "x"), "no --EMBEDDING given"),
    ((ADD, "s", "--EMBEDDING", "1,2", "x"), "embedding has dimension 2, the store has 3"),
    ((ADD, "s", "--EMBEDDING", "1,2,3,4", "x"), "dimension 4"),
    ((ADD, "s", "--ID", 1, "--EMBEDDING", "1,2", "x"), "dimension 2"),
    ((ADD, "s", "--EMBEDDING", "nan,2,3", "x"), "--EMBEDDING must hold finite float32 numbers"),
    ((ADD, "s", "--EMBEDDING", "1,inf,3", "x"), "finite"),
    ((ADD, "s", "--EMBEDDING", "1,2,-inf", "x"), "finite"),
    ((ADD, "s", "--EMBEDDING", "1e39,2,3", "x"), "finite"),        # overflows float32
    ((ADD, "s", "--EMBEDDING", "", "x"), "--EMBEDDING must be"),
    ((ADD, "s", "--EMBEDDING", "1,,2", "x"), "--EMBEDDING must be comma-separated numbers, got '1,,2'"),
    ((ADD, "s", "--EMBEDDING", "1_0,2,3", "x"), "--EMBEDDING must be comma-separated numbers, got '1_0,2,3'"),
    ((ADD, "s", "--EMBEDDING", "1,2,3,", "x"), "comma-separated numbers"),
    ((ADD, "s", "--EMBEDDING", "a,b,c", "x"), "comma-separated numbers"),
    ((ADD, "s", "--EMBEDDING", "1;2;3", "x"), "comma-separated numbers"),
    ((ADD, "s", "--EMBEDDING", "0x1,2,3", "x"), "comma-separated numbers"),
    ((ADD, "s", "--EMBEDDING-BLOB", b"\x00" * 7, "x"), "--EMBEDDING-BLOB must be a non-empty multiple of 4 bytes, got 7"),
    ((ADD, "s", "--EMBEDDING-BLOB", b"", "x"), "--EMBEDDING-BLOB must be a non-empty multiple of 4 bytes, got 0"),
    ((ADD, "s", "--EMBEDDING-BLOB", NAN_BLOB, "x"), "--EMBEDDING-BLOB must hold finite"),
    ((ADD, "s", "--EMBEDDING-BLOB", blob([1, 2]), "x"), "dimension 2"),
    ((ADD, "s", "--EMBEDDING", "1,2,3", "--EMBEDDING-BLOB", blob([1, 2, 3]), "x"),
     "options --EMBEDDING and --EMBEDDING-BLOB cannot be combined"),
    ((ADD, "s", "--EMBEDDING", "1,2,3", "--EMBEDDING", "1,2,3", "x"), "option --EMBEDDING given more than once"),
    ((ADD, "s", "--ID", 5, "--id", 6, "--EMBEDDING", "1,2,3", "x"), "option --ID given more than once"),
    ((ADD, "s", "--ID", "x", "--EMBEDDING", "1,2,3", "x"),
     "--ID must be an integer from 0 to 18446744073709551615, got 'x'"),
    ((ADD, "s", "--ID", -1, "--EMBEDDING", "1,2,3", "x"), "--ID must be an integer"),
    ((ADD, "s", "--ID", 2**64, "--EMBEDDING", "1,2,3", "x"), "--ID must be an integer"),
    ((ADD, "s", "--ID", "1.5", "--EMBEDDING", "1,2,3", "x"), "--ID must be an integer"),
    ((ADD, "s", "--ID", "", "--EMBEDDING", "1,2,3", "x"), "--ID must be an integer"),
    ((ADD, "s", "--ID", " 1", "--EMBEDDING", "1,2,3", "x"), "--ID must be an integer"),
    ((ADD, "s", "--ID", "1\n", "--EMBEDDING", "1,2,3", "x"), "--ID must be an integer"),
    ((ADD, "s", "--ID", 5, "--EMBEDDING", "1,2,3"), "option --EMBEDDING needs a value"),
    ((ADD, "s", "--EMBEDDING", "1,2,3", "--ID", "x"), "option --ID needs a value"),
    ((ADD, "s", "--EMBEDDING", "1,2,3", "--META", "{bad", "x"), "--META must be valid JSON ("),
    ((ADD, "s", "--EMBEDDING", "1,2,3", "--META", b"\xff\xfe{", "x"), "--META must be valid JSON"),
    ((ADD, "s", "--EMBEDDING", "1,2,3", "--META", deep_json(65), "x"), "--META nests deeper than 64"),
    ((ADD, "s", "--FOO", "1", "--EMBEDDING", "1,2,3", "x"), "unknown option '--FOO'"),
    ((ADD, "s", "stray", "--EMBEDDING", "1,2,3", "x"), "syntax error at 'stray'"),
    # LLM.GET / LLM.REM / LLM.SIZE
    ((GET, "s"), "wrong number of arguments for 'llm.get' command"),
    ((GET, "s", 1, 2), "wrong number of arguments for 'llm.get' command"),
    ((GET, "s", "x"), "id must be an integer from 0 to 18446744073709551615, got 'x'"),
    ((GET, "s", -1), "id must be an integer"),
    ((GET, "s", 2**64), "id must be an integer"),
    ((GET, "s", "1e3"), "id must be an integer"),
    ((REM, "s"), "wrong number of arguments for 'llm.rem' command"),
    ((REM, "s", 1, 2), "wrong number of arguments for 'llm.rem' command"),
    ((REM, "s", "one"), "id must be an integer"),
    ((REM, "s", -1), "id must be an integer"),
    ((REM, "s", 2**64), "id must be an integer"),
    ((SIZE,), "wrong number of arguments for 'llm.size' command"),
    ((SIZE, "s", "x"), "wrong number of arguments for 'llm.size' command"),
    # LLM.KNN
    ((KNN,), "wrong number of arguments for 'llm.knn' command"),
    ((KNN, "s"), "give --EMBEDDING, --EMBEDDING-BLOB or a query text"),
    ((KNN, "s", "--K", 3), "give --EMBEDDING"),
    ((KNN, "s", "what is near?"), "no --EMBEDDING given and the vector store has no LLM to embed the query"),
    ((KNN, "s", "--K", 0, "--EMBEDDING", "1,2,3"), "--K must be an integer from 1 to 10000, got '0'"),
    ((KNN, "s", "--K", 10001, "--EMBEDDING", "1,2,3"), "--K must be an integer from 1 to 10000"),
    ((KNN, "s", "--K", "x", "--EMBEDDING", "1,2,3"), "--K must be an integer from 1 to 10000, got 'x'"),
    ((KNN, "s", "--K", -1, "--EMBEDDING", "1,2,3"), "--K must be an integer"),
    ((KNN, "s", "--EMBEDDING", "1,2,3", "--K"), "option --K needs a value"),
    ((KNN, "s", "--K", 1, "--k", 2, "--EMBEDDING", "1,2,3"), "option --K given more than once"),
    ((KNN, "s", "--EF", 0, "--EMBEDDING", "1,2,3"), "--EF must be an integer from 1 to 100000"),
    ((KNN, "s", "--EF", "x", "--EMBEDDING", "1,2,3"), "--EF must be an integer"),
    ((KNN, "s", "--EMBEDDING", "1,2"), "embedding has dimension 2, the store has 3"),
    ((KNN, "s", "--EMBEDDING", "1,nan,3"), "finite"),
    ((KNN, "s", "--EMBEDDING", "1,,3"), "comma-separated numbers"),
    ((KNN, "s", "--EMBEDDING-BLOB", b"\x00" * 7), "multiple of 4 bytes, got 7"),
    ((KNN, "s", "--EMBEDDING", "1,2,3", "--EMBEDDING-BLOB", blob([1, 2, 3])), "cannot be combined"),
    ((KNN, "s", "--EMBEDDING", "1,2,3", "--FILTER", "[1]"), "--FILTER must be a JSON object"),
    ((KNN, "s", "--EMBEDDING", "1,2,3", "--FILTER", "{bad"), "--FILTER must be valid JSON"),
    ((KNN, "s", "--EMBEDDING", "1,2,3", "--WITHDATA", "--withdata"), "option --WITHDATA given more than once"),
    ((KNN, "s", "--EMBEDDING", "1,2,3", "--BOGUS"), "unknown option '--BOGUS'"),
    ((KNN, "s", "--EMBEDDING", "1,2,3", "a", "b"), "syntax error at 'a'"),
    # Any key of another type
    ((CREATE, "str"), None),
    ((CREATE, "str", "--NX"), None),
    ((CREATE, "str", "--XX"), None),
    ((ADD, "str", "--EMBEDDING", "1,2,3", "x"), None),
    ((GET, "str", 1), None),
    ((REM, "str", 1), None),
    ((SIZE, "str"), None),
    ((KNN, "str", "--EMBEDDING", "1,2,3"), None),
]


@pytest.mark.parametrize("args, message", ERRORS, ids=[" ".join(
    a if isinstance(a, str) else repr(a) for a in args)[:60] for args, _ in ERRORS])
def test_error_has_code_and_changes_nothing(store, args, message):
    keys = ["s", "str", "new", "nokey"]
    before = state(store, *keys)
    if message is None:
        expect_error(store, *args, code="WRONGTYPE",
                     match="^WRONGTYPE Operation against a key holding the wrong kind of value$")
        assert store.get("str") == b"plain"
    else:
        text = expect_error(store, *args, code="ERR")
        assert message in text
    assert state(store, *keys) == before
    # The store still works, and its id counter did not move.
    assert store.execute_command(ADD, "s", "--EMBEDDING", "0,0,0", "after") == 3


def test_errors_on_the_wire_start_with_an_upper_case_code(store, server):
    assert wire_reply(server.port, b"LLM.GET", b"s") == (
        b"-ERR wrong number of arguments for 'llm.get' command")
    assert wire_reply(server.port, b"LLM.KNN", b"s", b"--X", b"1") == b"-ERR unknown option '--X'"
    assert wire_reply(server.port, b"LLM.SIZE", b"str") == (
        b"-WRONGTYPE Operation against a key holding the wrong kind of value")
    assert wire_reply(server.port, b"LLM.ADD", b"s", b"--EMBEDDING", b"1,2", b"x").startswith(b"-ERR ")


def test_error_inside_multi_exec_is_reported_per_command(store):
    pipe = store.pipeline(transaction=True)
    pipe.execute_command(ADD, "s", "--EMBEDDING", "1,2", "bad")
    pipe.execute_command(ADD, "s", "--EMBEDDING", "7,8,9", "good")
    results = pipe.execute(raise_on_error=False)
    assert isinstance(results[0], redis.ResponseError)
    assert results[1] == 3
    assert store.execute_command(SIZE, "s") == 3


# ---- keyspace notifications and WATCH ------------------------------------------

def events(pubsub, count: int, timeout: float = 5.0) -> list[tuple[bytes, bytes]]:
    """(channel, data) of the next `count` pmessages, or fewer after timeout."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "pmessage":
            out.append((message["channel"], message["data"]))
    return out


@pytest.fixture
def notifications(r):
    r.config_set("notify-keyspace-events", "KEd")
    pubsub = r.pubsub()
    pubsub.psubscribe("__key*@*__:*")
    assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
    yield pubsub
    pubsub.close()
    r.config_set("notify-keyspace-events", "")


def test_module_key_events_are_class_d_keyspace_and_keyevent(r, notifications):
    assert "d" in r.config_get("notify-keyspace-events")["notify-keyspace-events"]
    r.execute_command(CREATE, "s")
    r.execute_command(ADD, "s", "--EMBEDDING", "1,2", "x")
    r.execute_command(REM, "s", 1)
    assert events(notifications, 6) == [
        (b"__keyspace@0__:s", b"llm.create-vector-store"),
        (b"__keyevent@0__:llm.create-vector-store", b"s"),
        (b"__keyspace@0__:s", b"llm.add"),
        (b"__keyevent@0__:llm.add", b"s"),
        (b"__keyspace@0__:s", b"llm.rem"),
        (b"__keyevent@0__:llm.rem", b"s"),
    ]


def test_no_event_when_nothing_changes(r, notifications):
    r.execute_command(CREATE, "s")
    assert len(events(notifications, 2)) == 2
    assert r.execute_command(CREATE, "s", "--NX") == 0
    assert r.execute_command(CREATE, "t", "--XX") == 0
    assert r.execute_command(REM, "s", 1) == 0
    with pytest.raises(redis.ResponseError):
        r.execute_command(ADD, "s", "--EMBEDDING", "1,nan", "x")
    r.execute_command(SIZE, "s")
    r.execute_command(KNN, "s", "--EMBEDDING", "1,2")
    r.set("marker", 1)   # a string event: not class d, so nothing
    r.execute_command(ADD, "s", "--EMBEDDING", "1,2", "x")
    assert events(notifications, 2) == [(b"__keyspace@0__:s", b"llm.add"),
                                        (b"__keyevent@0__:llm.add", b"s")]


def test_module_events_not_sent_without_class_d(r):
    r.config_set("notify-keyspace-events", "KEg$")
    pubsub = r.pubsub()
    try:
        pubsub.psubscribe("__key*@*__:*")
        assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
        r.execute_command(CREATE, "s")
        r.execute_command(ADD, "s", "--EMBEDDING", "1,2", "x")
        r.set("marker", 1)
        got = events(pubsub, 2, timeout=2)
        assert got == [(b"__keyspace@0__:marker", b"set"), (b"__keyevent@0__:set", b"marker")]
    finally:
        pubsub.close()
        r.config_set("notify-keyspace-events", "")


@pytest.mark.parametrize("change", [
    (ADD, "s", "--EMBEDDING", "7,8,9", "x"),
    (ADD, "s", "--ID", 1, "--EMBEDDING", "7,8,9", "x"),
    (REM, "s", 1),
    (CREATE, "s"),
    (CREATE, "s", "--XX"),
])
def test_watch_fails_after_another_client_changes_the_store(store, server, change):
    other = server.client()
    with store.pipeline() as pipe:
        pipe.watch("s")
        other.execute_command(*change)
        pipe.multi()
        pipe.execute_command(SIZE, "s")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    other.close()


@pytest.mark.parametrize("no_change", [
    (REM, "s", 99),
    (CREATE, "s", "--NX"),
    (GET, "s", 1),
    (KNN, "s", "--EMBEDDING", "1,2,3"),
    (SIZE, "s"),
    (ADD, "s", "--EMBEDDING", "1,2", "bad dimension"),
])
def test_watch_survives_commands_that_change_nothing(store, server, no_change):
    other = server.client()
    with store.pipeline() as pipe:
        pipe.watch("s")
        try:
            other.execute_command(*no_change)
        except redis.ResponseError:
            pass
        pipe.multi()
        pipe.execute_command(SIZE, "s")
        assert pipe.execute() == [2]
    other.close()
