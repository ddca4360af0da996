"""The vector store: the value behind an HNSW vector-store key.

An hnswlib index holds the vectors and the graph, labelled with the item ids;
two dicts hold the rest: id -> data for every live item, and id -> meta for
the items that have a meta object. Removed items stay in the graph, marked
deleted, until a later add reuses their slot.

Serialized buffers are little-endian, like hnswlib's own memory on every
platform Redis runs on.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import asdict, dataclass, replace
from typing import Iterator

import hnswlib
import numpy as np

from redis_llm.errors import LLMError
from redis_llm.parsing import MAX_DATA_BYTES, MAX_DIM, MAX_MODEL_NAME_BYTES

# RDB encoding version of this type. 2: params may hold embedding_model; 1
# (still read) had no such field, its stores' model is unknown.
ENCODING_VERSION = 2
DEFAULT_EF = 64               # query breadth when neither the store nor the query sets one
MAX_ID = 2**64 - 1
_SEED = 100                   # hnswlib's default: graphs built from the same adds are identical
_EXACT_CHUNK = 4096           # vectors fetched from hnswlib per step of an exact search
# A cosine vector is stored as is when its squared norm is 1 within this: a
# unit vector rounded to float32 has |sum(v*v) - 1| <= ~2**-23 (1.2e-7), so
# what _unit() returns passes unchanged through it again (replays, AOF
# rewrites), while leaving out a normalization this close to 1 changes a
# cosine distance by at most 5e-7, about float32's own precision on it.
_UNIT_TOLERANCE = 1e-6

_METRICS = ("l2", "ip", "cosine")
_INT_PARAMS = {
    "max_elements": (1, 100_000_000),
    "m": (2, 100),
    "ef_construction": (1, 10_000),
    "dim": (0, MAX_DIM),
    "ef": (1, 10_000),
}
# What an index allocates before it holds an item, per slot of capacity: the
# level-0 block (reserved_bytes()), then a link-list pointer, a level, a lock
# and a visited-list mark. 46 bytes of it (level, lock, mark) are written at
# once; the rest is address space, written as items come.
_RESERVED_PER_SLOT = 8 + 4 + 40 + 2
MAX_CAPACITY = 10_000_000           # max_elements: at most 460 MB written up front
MAX_RESERVED_BYTES = 4 << 30        # max_elements x the bytes per slot at the dimension

# Rough C++ costs of an hnswlib index, for memory_usage(), checked against RSS:
# per slot of capacity an int level and a std::mutex (the link-list pointers
# and visited list are allocated too but stay mostly untouched); per used slot
# a label_lookup_ hash node and bucket; per index 65536 label mutexes.
_HNSW_PER_CAPACITY = 4 + 40
_HNSW_PER_LABEL = 48
_HNSW_FIXED = 65536 * 40 + 4096
_INT_OBJECT = 32              # an id as a Python int (pymalloc block)

# hnswlib.Index.__getstate__() arrays: dump() writes them in this order.
_INDEX_ARRAYS = (
    ("label_lookup_external", "<u8"),
    ("label_lookup_internal", "<u4"),
    ("element_levels", "<i4"),
    ("data_level0", "u1"),
    ("link_lists", "u1"),
)
_INDEX_SCALARS = {
    "ser_version": int, "space": str, "dim": int, "index_inited": bool, "ep_added": bool,
    "normalize": bool, "num_threads": int, "seed": int, "offset_level0": int,
    "max_elements": int, "cur_element_count": int, "size_data_per_element": int,
    "label_offset": int, "offset_data": int, "max_level": int, "enterpoint_node": int,
    "max_M": int, "max_M0": int, "M": int, "mult": float, "ef_construction": int, "ef": int,
    "has_deletions": bool, "size_links_per_element": int, "allow_replace_deleted": bool,
}
_HEADER_KEYS = {"params", "llm", "next_id", "items", "metas", "index"}
_PLAIN_CHUNKS = 8             # chunks before the index arrays
_MISSING = object()


@dataclass
class StoreParams:
    """Creation parameters of a vector store (the --PARAMS JSON object)."""

    max_elements: int = 100_000   # initial capacity; the index doubles when full
    m: int = 16
    ef_construction: int = 200
    dim: int = 0                  # 0: fixed by the first vector added
    metric: str = "l2"            # l2 (squared), ip (1 - dot), cosine (1 - cos)
    ef: int = DEFAULT_EF          # default query breadth
    # The name of the model whose embeddings the store holds (the provider's
    # embedding_model); None: unknown until an LLM embeds into the store, or
    # an add declares it (--EMBEDDING-MODEL). Text embedded by another model
    # is refused: its vectors cannot be compared with these.
    embedding_model: str | None = None

    @classmethod
    def from_json(cls, obj, limits: bool = True) -> StoreParams:
        """Validate parsed JSON; raise LLMError naming the offending field.

        ``limits``: also refuse a capacity that would reserve too much memory
        up front (lowering the default one instead). Off for values read back
        from RDB, which keep what they were created with.
        """
        if not isinstance(obj, dict):
            raise LLMError("--PARAMS must be a JSON object")
        values = {}
        for name, value in obj.items():
            if name == "metric":
                if not isinstance(value, str) or value.lower() not in _METRICS:
                    raise LLMError("vector store parameter 'metric' must be one of l2, ip, cosine")
                values[name] = value.lower()
            elif name == "embedding_model":
                if value is not None and not valid_model_name(value):
                    raise LLMError("vector store parameter 'embedding_model' must be a string of "
                                   f"1 to {MAX_MODEL_NAME_BYTES} bytes of UTF-8")
                values[name] = value
            elif name in _INT_PARAMS:
                low, high = _INT_PARAMS[name]
                if type(value) is not int or not low <= value <= high:
                    raise LLMError(f"vector store parameter '{name}' must be an integer "
                                   f"from {low} to {high}")
                values[name] = value
            else:
                raise LLMError(f"unknown vector store parameter '{name}'")
        params = cls(**values)
        if limits:
            params._check_capacity(given="max_elements" in values)
        return params

    def _check_capacity(self, given: bool) -> None:
        if self.max_elements > MAX_CAPACITY:
            raise LLMError(f"vector store parameter 'max_elements' must be at most {MAX_CAPACITY}: "
                           "it is the initial capacity, and the store grows past it")
        fits = self.capacity_that_fits()
        if self.max_elements <= fits:
            return
        if not given:
            self.max_elements = fits   # the default capacity, lowered to fit
            return
        where = f"dimension {self.dim}" if self.dim else "dimension 1, the least,"
        raise LLMError(
            f"vector store parameter 'max_elements' {self.max_elements} would reserve more than "
            f"{MAX_RESERVED_BYTES >> 20} MB up front at {where} with m {self.m} "
            f"({reserved_bytes(1, max(self.dim, 1), self.m)} bytes per slot): give at most {fits}; "
            "the store grows past it")

    def capacity_that_fits(self, dim: int | None = None) -> int:
        """The largest capacity whose index reserves at most MAX_RESERVED_BYTES
        at dimension ``dim`` (default: the store's; 0, unknown yet, counts as 1)."""
        per_slot = reserved_bytes(1, max(1, self.dim if dim is None else dim), self.m)
        return max(1, min(MAX_CAPACITY, MAX_RESERVED_BYTES // per_slot))

    def to_json(self) -> dict:
        """The parameters as a JSON object that from_json accepts. An unknown
        embedding model is left out: such a store is written as before it existed."""
        params = asdict(self)
        if params["embedding_model"] is None:
            del params["embedding_model"]
        return params


def valid_model_name(name) -> bool:
    """Whether ``name`` can be a store's embedding model: what --EMBEDDING-MODEL accepts."""
    if type(name) is not str or not name:
        return False
    try:
        return len(name.encode()) <= MAX_MODEL_NAME_BYTES
    except UnicodeEncodeError:      # a lone surrogate
        return False


class VectorStore:
    """Items (id, vector, data, optional meta) searchable by nearest neighbours.

    Ids are uint64. Generated ids come from a counter that starts at 1, moves
    past every id it hands out and skips ids that are live. The counter moves
    only in add(), when the id added is peek_id() (the next free id), however
    it was resolved: it depends only on the sequence of adds and removes and
    their ids, so replicas and AOF replays, which see explicit ids, reproduce it.

    A cosine store keeps unit vectors (normalized by _unit(), idempotently) in
    an hnswlib "ip" index: 1 - dot of unit vectors is hnswlib's cosine distance.
    """

    type_tag = b"vector-store"
    __slots__ = ("params", "llm", "_index", "_data", "_meta", "_removed", "_next_id",
                 "_free_from", "_data_bytes", "_meta_bytes", "_ef", "_slot_bytes")

    def __init__(self, params: StoreParams, llm: bytes | None = None):
        self.params = replace(params)   # own copy: dim is filled in by the first add
        self.llm = llm
        self._index: hnswlib.Index | None = None   # created by the first add
        self._data: dict[int, bytes] = {}
        self._meta: dict[int, dict] = {}
        # Removed ids whose deleted slot may still carry their label. hnswlib
        # reuses deleted slots without saying whose, so this is a superset.
        self._removed: set[int] = set()
        self._next_id = 1
        # A cache for peek_id(), not state: every id in [_next_id, _free_from) is live.
        self._free_from = 1
        self._data_bytes = 0            # running totals for memory_usage()
        self._meta_bytes = 0
        self._ef = 0                    # the ef last set on the index
        self._slot_bytes = 0

    @property
    def dim(self) -> int:
        """The vectors' dimension; 0 until the first add fixes it."""
        return self.params.dim

    @property
    def embedding_model(self) -> str | None:
        """The name of the model whose embeddings the store holds; None if unknown."""
        return self.params.embedding_model

    def other_model(self, model: str | None) -> str | None:
        """The store's embedding model if ``model`` (None: unknown) is known and
        another one: a vector of ``model`` cannot be compared with the store's."""
        recorded = self.params.embedding_model
        return recorded if model is not None and recorded is not None and model != recorded else None

    def __len__(self) -> int:
        return len(self._data)

    # ---- items -------------------------------------------------------------

    def add(self, vector: np.ndarray, data: bytes, meta: dict | None = None,
            id: int | None = None, model: str | None = None) -> int:
        """Add an item, or replace every part of the live item with this id; return the id.

        ``vector`` is 1-D float32, finite and non-empty. Without ``id`` the
        item gets peek_id(). ``model``: the embedding model the vector came
        from, if known; a store that knows none records it. Raises LLMError,
        changing nothing, when the dimension does not match the store's, or
        the model is another than the store's (callers check other_model()
        first, to name the key in the error).
        """
        self._check_dim(vector)
        if model is not None and not valid_model_name(model):
            raise LLMError(f"an embedding model name must be 1 to {MAX_MODEL_NAME_BYTES} bytes of UTF-8")
        recorded = self.other_model(model)
        if recorded is not None:
            raise LLMError(f"the vector store holds embeddings of model {recorded!r}, "
                           f"not of {model!r}")
        if len(data) > MAX_DATA_BYTES:
            # Given data is checked when parsed; this is a chat summary's.
            raise LLMError(f"data must be at most {MAX_DATA_BYTES} bytes, got {len(data)} bytes")
        if meta is not None:
            meta = _own_meta(meta)
        if id is None:
            id = self.peek_id()
        elif not 0 <= id <= MAX_ID:
            raise LLMError(f"id must be an integer from 0 to {MAX_ID}")
        # The command layer resolves ids with peek_id() and passes them
        # explicitly (to replicate them): whichever way the next free id is
        # added, the counter moves past it, and only then.
        takes_next = id == self._free_id()
        if self.params.metric == "cosine":
            vector = _unit(vector)
        index = self._index
        if index is None:
            index = self._create_index(vector.shape[0])

        old = self._data.get(id)
        if old is not None:
            index.add_items(vector, id)     # hnswlib updates a live label in place
            self._data_bytes -= sys.getsizeof(old)
            old_meta = self._meta.pop(id, None)
            if old_meta is not None:
                self._meta_bytes -= _meta_size(old_meta)
        else:
            self._insert(index, vector, id)
        self._data[id] = data
        self._data_bytes += sys.getsizeof(data)
        if meta is not None:
            self._meta[id] = meta
            self._meta_bytes += _meta_size(meta)
        if takes_next:
            self._next_id = self._free_from = id + 1
        if model is not None:
            self.params.embedding_model = model
        return id

    def _insert(self, index: hnswlib.Index, vector: np.ndarray, id: int) -> None:
        removed = self._removed
        if id in removed:
            removed.discard(id)
            try:
                # Revive the id's own slot: letting hnswlib put the label in
                # another deleted slot would leave two slots with that label,
                # and reusing the stale one later unmaps the live one.
                index.unmark_deleted(id)
            except RuntimeError:
                pass                        # a later add has reused that slot
            else:
                index.add_items(vector, id)
                return
        slots = index.element_count
        deleted = slots - len(self._data)
        if not deleted and slots >= index.max_elements:
            try:
                index.resize_index(2 * slots)
            except (RuntimeError, MemoryError):
                raise LLMError(f"not enough memory to grow the vector store to {2 * slots} items") from None
        index.add_items(vector, id, replace_deleted=True)
        if deleted:
            self._forget_reused(index, deleted - 1)

    def _forget_reused(self, index: hnswlib.Index, deleted: int) -> None:
        """Drop from _removed the ids whose slot was reused, when that is cheap to know."""
        removed = self._removed
        if not deleted:
            removed.clear()
        elif len(removed) > 2 * deleted + 1024:
            # Amortized: at least 1024 removals happen between two rescans.
            removed.intersection_update(index.get_ids_list())

    def peek_id(self) -> int:
        """The id add(id=None) would give now: the first id from the counter on that is not live.

        Changes no state (the counter moves in add()), so calling it or not,
        as a master does and its replicas do not, makes no difference.
        """
        id = self._free_id()
        if id > MAX_ID:
            raise LLMError("the vector store has no free id left")
        return id

    def _free_id(self) -> int:
        """peek_id(), or MAX_ID + 1 when every id from the counter on is live."""
        id, data = self._free_from, self._data
        while id in data:
            id += 1
        self._free_from = id
        return id

    def get(self, id: int) -> tuple[bytes, np.ndarray, dict | None] | None:
        """(data, vector, meta) of a live id, or None. Cosine stores keep unit vectors."""
        data = self._data.get(id)
        if data is None:
            return None
        return data, self._index.get_items([id])[0], self._meta.get(id)

    def item(self, id: int) -> tuple[bytes, dict | None]:
        """(data, meta) of a live id; KeyError if it is not live."""
        return self._data[id], self._meta.get(id)

    def remove(self, id: int) -> bool:
        """Remove a live item; False if there is none with this id."""
        if id not in self._data:
            return False
        self._index.mark_deleted(id)
        self._removed.add(id)
        if self._next_id <= id < self._free_from:
            self._free_from = id
        self._data_bytes -= sys.getsizeof(self._data.pop(id))
        meta = self._meta.pop(id, None)
        if meta is not None:
            self._meta_bytes -= _meta_size(meta)
        return True

    # ---- search ------------------------------------------------------------

    def knn(self, vector: np.ndarray, k: int, ef: int | None = None,
            where: dict | None = None) -> list[tuple[int, float]]:
        """At most k (id, distance) pairs, nearest first.

        ``ef`` (default params.ef, raised to k) sets the search breadth.
        ``where`` keeps the items whose meta has all these fields equal to
        these values (JSON equality: true is not 1).
        """
        self._check_dim(vector)
        live = len(self._data)
        if not live or k < 1:
            return []
        if self.params.metric == "cosine":
            vector = _unit(vector)
        if ef is None:
            ef = self.params.ef
        if not where:
            return self._search(vector, min(k, live), ef, None, None)
        if type(where) is not dict:
            raise LLMError("the filter must be a JSON object")
        ids = self._matching(where)
        if not ids:
            return []
        k = min(k, len(ids))
        if _prefer_exact(len(ids), live, max(ef, k)):
            return self._exact(vector, ids, k)
        return self._search(vector, k, ef, set(ids).__contains__, ids)

    def _search(self, vector, k, ef, allowed, ids) -> list[tuple[int, float]]:
        index = self._index
        ef = max(ef, k)
        if ef != self._ef:
            index.set_ef(ef)
            self._ef = ef
        try:
            labels, distances = index.knn_query(vector, k=k, filter=allowed)
        except RuntimeError:
            # Fewer than k reachable: deletions can cut the graph.
            return self._exact(vector, list(self._data) if ids is None else ids, k)
        return list(zip(labels[0].tolist(), distances[0].tolist()))

    def _exact(self, vector: np.ndarray, ids: list[int], k: int) -> list[tuple[int, float]]:
        """Brute force over ids with hnswlib's distance, in float32 like hnswlib.

        ``vector`` is the query as the graph search gets it (a cosine query
        already normalized by knn()). A distance depends only on the two
        vectors (einsum sums each row alike; a BLAS matrix product does not:
        its rounding depends on the row's place in the chunk), and ids are
        scanned in id order, ties going to the lower id: stores with the same
        items answer alike whatever their history (an AOF rewrite's replay).
        """
        metric = self.params.metric
        query = np.asarray(vector, dtype=np.float32)
        one = np.float32(1)
        ids = np.sort(np.array(ids, dtype=np.uint64))
        best_ids = np.empty(0, dtype=np.uint64)
        best = np.empty(0, dtype=np.float32)
        for start in range(0, len(ids), _EXACT_CHUNK):
            chunk = ids[start:start + _EXACT_CHUNK]
            # return_type="list" then numpy is 2-3x faster than hnswlib's "numpy".
            vectors = np.array(self._index.get_items(chunk.tolist(), return_type="list"),
                               dtype=np.float32)
            if metric == "l2":
                diff = vectors - query
                distances = np.einsum("ij,ij->i", diff, diff)
            else:
                distances = one - np.einsum("ij,j->i", vectors, query)
            best = np.concatenate((best, distances))
            best_ids = np.concatenate((best_ids, chunk))
            if len(best) > k:
                keep = np.argpartition(best, k - 1)[:k]
                best, best_ids = best[keep], best_ids[keep]
        order = np.lexsort((best_ids, best))
        return list(zip(best_ids[order].tolist(), best[order].tolist()))

    def _matching(self, where: dict) -> list[int]:
        """Ids of the items whose meta matches every field of where."""
        metas = self._meta
        ids = None
        for field, value in where.items():
            pairs = metas.items() if ids is None else ((i, metas[i]) for i in ids)
            if value is True or value is False:
                ids = [i for i, m in pairs if m.get(field) is value]
            elif type(value) is int or type(value) is float:
                # 1 == 1.0 matches; true == 1 must not.
                ids = [i for i, m in pairs
                       if (v := m.get(field, _MISSING)) == value and v is not True and v is not False]
            else:
                ids = [i for i, m in pairs if m.get(field, _MISSING) == value]
            if not ids:
                break
        return ids

    # ---- persistence -------------------------------------------------------

    def dump(self) -> list:
        """The store as bytes-like chunks for RDB; chunk 0 is type_tag.

        0 tag, 1 JSON header (params, with the embedding model when known
        since encoding version 2, llm?, next id, counts, the hnswlib state's
        scalars), 2 llm, 3 ids (u64), 4 data offsets (u64, one more than
        ids), 5 data blob, 6 ids with meta (u64), 7 their metas (a JSON
        array), then, once the index exists, its state arrays in
        _INDEX_ARRAYS order: the graph is saved, not rebuilt on load.
        """
        count = len(self._data)
        ids = np.fromiter(self._data, dtype="<u8", count=count)
        offsets = np.zeros(count + 1, dtype="<u8")
        np.cumsum(np.fromiter(map(len, self._data.values()), dtype="<u8", count=count),
                  out=offsets[1:])
        meta_ids = np.fromiter(self._meta, dtype="<u8", count=len(self._meta))
        header = {"params": self.params.to_json(), "llm": self.llm is not None,
                  "next_id": self._next_id, "items": count, "metas": len(meta_ids), "index": None}
        arrays = []
        if self._index is not None:
            state = self._index.__getstate__()[0]
            arrays = [state.pop(name).view(dtype) for name, dtype in _INDEX_ARRAYS]
            # Label lookup in slot order, not hash-map order: equal stores dump equal bytes.
            order = np.argsort(arrays[1], kind="stable")
            arrays[0], arrays[1] = arrays[0][order], arrays[1][order]
            state["ef"] = self.params.ef   # not the last query's: equal stores dump equal bytes
            header["index"] = state
        chunks = [
            self.type_tag,
            json.dumps(header, separators=(",", ":")).encode(),
            self.llm or b"",
            _raw(ids),
            _raw(offsets),
            b"".join(self._data.values()),
            _raw(meta_ids),
            _compact_json(list(self._meta.values())),
        ]
        chunks += map(_raw, arrays)
        return chunks

    @classmethod
    def restore(cls, encver: int, chunks: list) -> VectorStore:
        """Rebuild a store from dump()'s chunks (tag included) without rebuilding its graph.

        RDB payloads can come from RESTORE: everything is checked (ValueError)
        before a buffer reaches hnswlib, which trusts what it is given.
        """
        if not 1 <= encver <= ENCODING_VERSION:
            raise ValueError(f"vector store encoding version {encver} is not supported "
                             f"(this module reads 1 to {ENCODING_VERSION})")
        _check(len(chunks) in (_PLAIN_CHUNKS, _PLAIN_CHUNKS + len(_INDEX_ARRAYS)),
               "wrong number of chunks")
        _check(bytes(chunks[0]) == cls.type_tag, "not a vector store")
        header = _load_json(chunks[1], dict, "header")
        _check(header.keys() == _HEADER_KEYS, "bad header")
        try:
            params = StoreParams.from_json(header["params"], limits=False)
        except LLMError as exc:
            raise ValueError(f"corrupt vector store: {exc.args[0]}") from None
        # Version 1 knew no embedding model: its stores load with none recorded.
        _check(encver >= 2 or "embedding_model" not in header["params"], "bad params")
        has_llm, next_id = header["llm"], header["next_id"]
        _check(type(has_llm) is bool and (has_llm or not len(chunks[2])), "bad llm")
        _check(type(next_id) is int and 1 <= next_id <= MAX_ID + 1, "bad next id")

        count, meta_count = header["items"], header["metas"]
        _check(type(count) is int and type(meta_count) is int and 0 <= meta_count <= count,
               "bad item counts")
        ids = _array(chunks[3], "<u8", count, "ids")
        offsets = _array(chunks[4], "<u8", count + 1, "data offsets")
        blob = bytes(chunks[5])
        _check(offsets[0] == 0 and offsets[-1] == len(blob) and bool(np.all(offsets[1:] >= offsets[:-1])),
               "bad data offsets")
        _check(len(np.unique(ids)) == count, "duplicate ids")
        meta_ids = _array(chunks[6], "<u8", meta_count, "meta ids")
        _check(len(np.unique(meta_ids)) == meta_count and bool(np.isin(meta_ids, ids).all()),
               "bad meta ids")
        metas = _load_json(chunks[7], list, "metas")
        _check(len(metas) == meta_count and all(type(m) is dict for m in metas), "bad metas")

        state = header["index"]
        index = None
        if state is None:
            _check(len(chunks) == _PLAIN_CHUNKS and count == 0, "items without an index")
            deleted_labels = []
        else:
            _check(len(chunks) > _PLAIN_CHUNKS, "missing index arrays")
            arrays = {name: _array(chunk, dtype, None, name)
                      for (name, dtype), chunk in zip(_INDEX_ARRAYS, chunks[_PLAIN_CHUNKS:])}
            if (params.metric == "cosine" and type(state) is dict
                    and state.get("space") == "cosine" and state.get("normalize") is True):
                # Written before cosine stores used an "ip" index: hnswlib's
                # cosine space is its ip space plus normalization in add and
                # query, so the saved vectors (unit already) and graph are the same.
                state = {**state, "space": "ip", "normalize": False}
            deleted_labels = _check_index(state, arrays, params, ids)
            index = hnswlib.Index.__new__(hnswlib.Index)
            try:
                index.__setstate__(({**state, **arrays},))
            except (RuntimeError, TypeError, ValueError) as exc:
                raise ValueError(f"corrupt vector store index: {exc}") from None
            index.set_num_threads(1)

        store = cls(params, bytes(chunks[2]) if has_llm else None)
        store._index = index
        if index is not None:
            store._slot_bytes = _slot_bytes(params)
            store._ef = state["ef"]
        store._next_id = store._free_from = next_id
        bounds = offsets.tolist()
        store._data = {i: blob[a:b] for i, a, b in zip(ids.tolist(), bounds, bounds[1:])}
        store._meta = {i: _own_meta(m) for i, m in zip(meta_ids.tolist(), metas)}
        store._removed = set(deleted_labels)
        store._data_bytes = sum(map(sys.getsizeof, store._data.values()))
        store._meta_bytes = sum(map(_meta_size, store._meta.values()))
        return store

    def aof_commands(self, key: bytes) -> Iterator[list[bytes]]:
        """Commands that rebuild this store when replayed: its items, with their ids.

        The order sets the replayed id counter (see add()). Let end be the
        counter or, if an id from 1 up to it is not live (a removed item), the
        first such id. The items with other ids come first, in graph order,
        while the replay's counter stays at 1 (id 1 is still free); then ids
        1 to end - 1, in order, each moving the counter past it, to end. So the
        replay has the same counter unless an id below it was removed: adds
        cannot move a counter past an id that is not live, and the replay
        restarts at the first such id, which may then be handed out again.
        Either way a rewrite of the replay emits the same commands.
        """
        create = [b"LLM.CREATE-VECTOR-STORE", key, b"--PARAMS", _compact_json(self.params.to_json())]
        if self.llm is not None:
            create += [b"--LLM", self.llm]
        yield create
        if not self._data:
            return
        data, metas = self._data, self._meta
        end = 1
        while end < self._next_id and end in data:
            end += 1
        labels, vectors = self._slots()
        head = np.empty(end - 1, dtype=np.int64)    # slot of each id from 1 to end - 1

        def add(label, vector):
            command = [b"LLM.ADD", key, b"--ID", b"%d" % label, b"--EMBEDDING-BLOB", vector.tobytes()]
            meta = metas.get(label)
            if meta is not None:
                command += [b"--META", _compact_json(meta)]
            command.append(data[label])
            return command

        for row, label in enumerate(labels.tolist()):
            if label not in data:
                continue                    # a deleted slot (labels are unique across slots)
            if 1 <= label < end:
                head[label - 1] = row
            else:
                yield add(label, vectors[row])
        for label, row in enumerate(head.tolist(), start=1):
            yield add(label, vectors[row])

    def _slots(self) -> tuple[np.ndarray, np.ndarray]:
        """(label, vector) of every used slot, in slot order, from a copy of the index."""
        state = self._index.__getstate__()[0]
        slots = state["cur_element_count"]
        level0 = state["data_level0"].view(np.uint8).reshape(slots, state["size_data_per_element"])
        offset, label = state["offset_data"], state["label_offset"]
        labels = level0[:, label:label + 8].view("<u8").reshape(slots)
        vectors = level0[:, offset:offset + 4 * self.params.dim].view("<f4")
        return labels, vectors

    # ---- introspection -----------------------------------------------------

    def memory_usage(self) -> int:
        """Estimated bytes used by the store, in O(1)."""
        size = (sys.getsizeof(self) + 512   # the object, params, llm
                + sys.getsizeof(self._data) + sys.getsizeof(self._meta) + sys.getsizeof(self._removed)
                + (len(self._data) + len(self._removed)) * _INT_OBJECT
                + self._data_bytes + self._meta_bytes)
        index = self._index
        if index is not None:
            size += (_HNSW_FIXED + index.max_elements * _HNSW_PER_CAPACITY
                     + index.element_count * self._slot_bytes)
        return size

    def digest(self) -> list[bytes]:
        """Canonical chunks of the content: equal stores give equal digests.

        The id counter and the graph's shape are left out: a replica that
        replays the same commands holds the same content.
        """
        out = [self.type_tag, json.dumps(self.params.to_json(), sort_keys=True).encode(),
               b"\x00" if self.llm is None else b"\x01" + self.llm]
        if not self._data:
            return out
        labels, vectors = self._slots()
        row = {label: i for i, label in enumerate(labels.tolist()) if label in self._data}
        for id in sorted(self._data):
            data = self._data[id]
            meta = self._meta.get(id)
            meta_json = b"" if meta is None else json.dumps(meta, sort_keys=True).encode()
            out.append(struct.pack("<QQq", id, len(data), len(meta_json) if meta is not None else -1)
                       + data + meta_json + vectors[row[id]].tobytes())
        return out

    # ---- internals ---------------------------------------------------------

    def _check_dim(self, vector: np.ndarray) -> None:
        dim = self.params.dim
        if vector.shape[0] > MAX_DIM:
            # An embedding a provider returned: given ones are checked when parsed.
            raise LLMError(f"embedding has dimension {vector.shape[0]}, more than {MAX_DIM}")
        if dim and vector.shape[0] != dim:
            raise LLMError(f"embedding has dimension {vector.shape[0]}, the store has {dim}")

    def _create_index(self, dim: int) -> hnswlib.Index:
        params = self.params
        # A store created without a dimension learns it now: its capacity is
        # lowered to what fits at this dimension (the index grows past it).
        # Deterministic, so replicas and AOF replays create the same index,
        # and the lowered value is what dump() and AOF rewrites record.
        capacity = min(params.max_elements, params.capacity_that_fits(dim))
        index = hnswlib.Index(space=_space(params.metric), dim=dim)
        try:
            index.init_index(max_elements=capacity, M=params.m,
                             ef_construction=params.ef_construction, random_seed=_SEED,
                             allow_replace_deleted=True)
        except (RuntimeError, MemoryError):
            raise LLMError(f"not enough memory for a vector store index of {capacity} slots "
                           f"at dimension {dim}") from None
        index.set_num_threads(1)            # one item per call, inside redis-server
        params.dim = dim
        params.max_elements = capacity
        self._index = index
        self._slot_bytes = _slot_bytes(params)
        return index


def reserved_bytes(capacity: int, dim: int, m: int) -> int:
    """Bytes an hnswlib index of this capacity, dimension and m allocates when
    created: 4 * dim + 8 * m + 66 per slot."""
    level0 = 4 + 4 * 2 * m + 4 * dim + 8   # link count, 2m links, the vector, the label
    return capacity * (level0 + _RESERVED_PER_SLOT)


def _space(metric: str) -> str:
    """The hnswlib space of a metric: cosine stores normalize vectors themselves (_unit)."""
    return "ip" if metric == "cosine" else metric


def _unit(vector: np.ndarray) -> np.ndarray:
    """vector scaled to unit length, as float32; unchanged if it is unit already.

    Idempotent, to the bit: an AOF rewrite emits the stored unit vectors and
    its replay must store them unchanged (hnswlib's own normalization moves
    their last bits each time). The squared norm is summed in float64 (the
    float32 squares are exact in it; numpy's pairwise sum, not a BLAS dot,
    whose order depends on the CPU) and the scaling is rounded to float32
    once. A zero vector stays zero, as with hnswlib (which divides by
    norm + 1e-30): it is at distance 1 from everything, as a zero query is.
    """
    wide = vector.astype(np.float64)
    squared = float(np.add.reduce(wide * wide))
    if abs(squared - 1.0) <= _UNIT_TOLERANCE or squared == 0.0:
        return np.asarray(vector, dtype=np.float32)
    return (wide / math.sqrt(squared)).astype(np.float32)


def _prefer_exact(matches: int, live: int, ef: int) -> bool:
    """Whether a filtered query should scan its matches rather than walk the graph.

    Exact search fetches every match's vector from hnswlib: cost ~ matches.
    A filtered graph walk collects ef matches, so with matches spread among
    live items it visits ~ ef * live / matches nodes, each costing about a
    quarter of a fetched vector (measured, 100k x 128). Scan when it is the
    cheaper: matches**2 <= ef * live / 4, and always when ef covers every
    match (the walk would then visit the whole graph). Both return the true
    k nearest in practice; the scan is exact.
    """
    return matches <= ef or 4 * matches * matches <= ef * live


def _slot_bytes(params: StoreParams) -> int:
    """hnswlib bytes per used slot: level-0 links, vector, label, lookup, upper levels."""
    m = params.m
    level0 = 4 + 8 * m + 4 * params.dim + 8
    # A slot reaches level l with probability m**-l: m/(m-1)-1 upper lists expected.
    upper = (4 * m + 4) / (m - 1) + 16 / m
    return level0 + _HNSW_PER_LABEL + math.ceil(upper)


def _own_meta(meta) -> dict:
    """A copy of meta with interned keys: items share one string per field name."""
    if type(meta) is not dict:
        raise LLMError("meta must be a JSON object")
    return {sys.intern(k): v for k, v in meta.items()}


def _meta_size(meta: dict) -> int:
    return sys.getsizeof(meta) + sum(map(_json_size, meta.values()))


def _json_size(value) -> int:
    if type(value) is dict:
        return sys.getsizeof(value) + sum(_json_size(k) + _json_size(v) for k, v in value.items())
    if type(value) is list:
        return sys.getsizeof(value) + sum(map(_json_size, value))
    return sys.getsizeof(value)


def _compact_json(value) -> bytes:
    # ASCII escapes keep any str (even a lone surrogate) encodable.
    return json.dumps(value, separators=(",", ":")).encode()


def _raw(array: np.ndarray) -> memoryview:
    return memoryview(array).cast("B")


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"corrupt vector store: {what}")


def _load_json(chunk, kind: type, what: str):
    try:
        value = json.loads(bytes(chunk))
    except ValueError:
        raise ValueError(f"corrupt vector store: {what} is not JSON") from None
    _check(type(value) is kind, f"bad {what}")
    return value


def _array(chunk, dtype: str, count: int | None, what: str) -> np.ndarray:
    """chunk as a read-only array of dtype, of count items when count is given."""
    itemsize = np.dtype(dtype).itemsize
    size = len(memoryview(chunk).cast("B"))
    _check(size % itemsize == 0 and (count is None or size == count * itemsize), f"bad {what} size")
    return np.frombuffer(chunk, dtype=dtype)


def _check_index(state, arrays: dict[str, np.ndarray], params: StoreParams, ids: np.ndarray) -> np.ndarray:
    """Check an hnswlib state against itself and the store; return the labels of deleted slots.

    hnswlib copies these buffers and follows the links in them without bounds
    checks, so anything a crafted payload could make it read out of bounds is
    checked here: sizes, levels, entry point, every link, the label lookup.
    """
    _check(type(state) is dict and state.keys() == _INDEX_SCALARS.keys()
           and all(type(state[k]) is t for k, t in _INDEX_SCALARS.items()), "bad index header")
    m, dim = params.m, params.dim
    max_m0 = 2 * m
    links0 = 4 + 4 * max_m0
    expected = {
        "ser_version": 1, "space": _space(params.metric), "dim": dim, "index_inited": True,
        "normalize": False, "offset_level0": 0, "M": m, "max_M": m,
        "max_M0": max_m0, "ef_construction": max(params.ef_construction, m),
        "size_data_per_element": links0 + 4 * dim + 8, "offset_data": links0,
        "label_offset": links0 + 4 * dim, "size_links_per_element": 4 + 4 * m,
        "allow_replace_deleted": True,
    }
    _check(dim > 0 and all(state[k] == v for k, v in expected.items()), "index does not fit the params")
    _check(0 <= state["seed"] <= MAX_ID and 0 <= state["ef"] <= 2**31
           and -2**31 <= state["num_threads"] < 2**31, "bad index settings")

    slots, capacity = state["cur_element_count"], state["max_elements"]
    per_slot, per_link = state["size_data_per_element"], state["size_links_per_element"]
    # The store only grows a full index, to twice its size: a bound on what
    # hnswlib allocates that a legitimate CREATE could not exceed.
    _check(len(ids) <= slots <= capacity <= max(params.max_elements, 2 * slots), "bad index counts")
    levels = arrays["element_levels"]
    _check(len(levels) == capacity and len(arrays["label_lookup_external"]) == slots
           and len(arrays["label_lookup_internal"]) == slots
           and len(arrays["data_level0"]) == slots * per_slot, "bad index array sizes")
    used = levels[:slots].astype(np.int64)
    _check(bool(np.all(used >= 0)) and not np.any(levels[slots:]), "bad levels")
    upper = int(used.sum())
    _check(len(arrays["link_lists"]) == upper * per_link, "bad link lists size")
    if slots:
        _check(state["max_level"] == int(used.max()) and state["enterpoint_node"] < slots
               and used[state["enterpoint_node"]] == state["max_level"], "bad entry point")
    else:
        _check(state["max_level"] == -1, "bad entry point")

    level0 = arrays["data_level0"].reshape(slots, per_slot)
    head = level0[:, :4].view("<u4").reshape(slots)
    _links_ok(head, level0[:, 4:links0].view("<u4"), max_m0, slots, None, None)
    if upper:
        rows = arrays["link_lists"].reshape(upper, per_link)
        owners = np.repeat(np.arange(slots), used)
        first_row = np.cumsum(used) - used
        row_levels = np.arange(upper) - first_row[owners] + 1
        _links_ok(rows[:, :4].view("<u4").reshape(upper), rows[:, 4:].view("<u4"), m, slots,
                  used, row_levels)

    labels = level0[:, links0 + 4 * dim:per_slot].view("<u8").reshape(slots)
    internal = arrays["label_lookup_internal"]
    _check(bool(np.all(internal < slots)) and len(np.unique(internal)) == slots
           and np.array_equal(labels[internal], arrays["label_lookup_external"]), "bad label lookup")
    deleted = (head >> 16) & 1 == 1
    _check(state["has_deletions"] == bool(deleted.any())
           and np.array_equal(np.sort(labels[~deleted]), np.sort(ids)), "index and items differ")
    return labels[deleted].tolist()


def _links_ok(head, neighbours, max_links, slots, levels, row_levels) -> None:
    """Every list holds at most max_links links to used slots (at its level or above)."""
    counts = head & 0xFFFF
    _check(bool(np.all(counts <= max_links)), "bad link count")
    present = np.arange(neighbours.shape[1]) < counts[:, None]
    targets = neighbours[present]
    _check(bool(np.all(targets < slots)), "bad link")
    if levels is not None:
        needed = np.broadcast_to(row_levels[:, None], neighbours.shape)[present]
        _check(bool(np.all(levels[targets] >= needed)), "bad link level")
