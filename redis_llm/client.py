"""A typed Python client for the LLM.* commands, over redis-py.

``Client`` wraps a ``redis.Redis`` or ``redis.cluster.RedisCluster``: one
method per command, options as keyword arguments, replies decoded into
Python values. Embeddings go to the server as ``--EMBEDDING-BLOB`` (the
float32 bytes) and come back as numpy arrays::

    import numpy as np
    import redis
    from redis_llm import Client

    llm = Client(redis.Redis())
    llm.create_vector_store("docs")
    llm.add("docs", "Paris is in France.", np.array([0.1, 0.2, 0.3]), meta={"page": 1})
    llm.knn("docs", [0.1, 0.2, 0.25], k=1)        # [(1, 0.0025)]

The mapping rule: the key and a command's positional arguments are
positional; every ``--OPTION`` is the keyword argument ``option`` in
snake_case (``--VECTOR-STORE`` is ``vector_store``), with three exceptions:
``embedding`` (sent as ``--EMBEDDING-BLOB``) may also follow the key
positionally, ``--ASYNC`` is ``async_`` (``async`` is a Python keyword), and
``reviewed=True``/``False`` is ``--REVIEWED``/``--UNREVIEWED``. A keyword left
at None (or False, for a flag) is not sent, so the server's default applies.
JSON options take a dict (serialised with ``json.dumps``) or a ready JSON
string; ``tags`` a list of strings.

An error reply is raised as the class its code maps to in
``redis_llm.client_errors.ERROR_CLASSES`` (one table, as redis-py has one):
``ERR`` is a ``CommandError``, ``WRONGTYPE`` a ``WrongTypeError``, ``NOPERM``
a ``NoPermissionError``, ``BUSY`` a ``BusyError``, ``TIMEOUT`` a
``ServerTimeoutError``, ``OOM`` an ``OutOfMemoryError``, another code a
``ServerError`` (the base of them all, a ``redis.ResponseError``). Their text
is the whole line the server sent, code first, under any redis-py from 5 on
(``str(error)``, with ``error.code`` and ``error.message``);
``NoPermissionError`` and ``OutOfMemoryError`` are also redis-py's classes of
those names, so ``except redis.exceptions.NoPermissionError`` still catches
them. An error redis-py raises as a class of its own that the table does not
cover (``ReadOnlyError``, ``ClusterDownError``) is raised unchanged. Arguments
the client can check itself (embedding shapes, tags) raise ``ValueError`` or
``TypeError`` before anything is sent::

    from redis_llm.client_errors import WrongTypeError

    try:
        llm.size("a-string-key")
    except WrongTypeError as exc:
        print(exc)    # WRONGTYPE Operation against a key holding the wrong kind of value
"""

from __future__ import annotations

import base64
import json
import operator
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, Mapping, Sequence, TypedDict, Union, overload

import numpy as np
import redis
import redis.cluster
from redis.client import NEVER_DECODE

from redis_llm.client_errors import response_error

__all__ = ["Client", "Item", "Match", "Record", "RunDetails", "Stats", "embedding_blob",
           "parse_vector"]

KeyT = Union[str, bytes]
DataT = Union[str, bytes]
EmbeddingT = Union[np.ndarray, Sequence[float]]
JSONT = Union[Mapping[str, Any], str, bytes]


@dataclass(eq=False)
class Item:
    """An item of a vector store, as LLM.GET returns it."""

    data: bytes
    embedding: np.ndarray  # float32, 1-D
    meta: dict | None


@dataclass(frozen=True)
class Match:
    """A neighbour found by LLM.KNN --WITHDATA (or an item of a verbose run)."""

    id: int
    distance: float
    data: bytes
    meta: dict | None


class RunDetails(TypedDict):
    """What LLM.RUN --VERBOSE replies."""

    answer: str
    prompt: str
    items: list[Match]
    model: str
    prompt_tokens: int
    completion_tokens: int
    served_from: str
    record: int | None
    served_review: int | None  # the record whose review answered, when served_from is review


class Record(TypedDict):
    """A recorded result (LLM.RESULT, LLM.RESULTS). Every field is present;
    a value the server sends empty (missing) is None, and ``tags``,
    ``also`` and ``never`` are lists ([] when empty)."""

    id: int
    app: str
    state: str
    question: str | None
    vars: dict | None
    answer: str | None
    error: str | None
    model: str | None
    embed_model: str | None
    latency_ms: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    matches: list[dict] | None
    match_source: str | None
    match_page: int | str | None
    session: str | None
    tags: list[str]
    meta: dict | None
    created_at: int
    updated_at: int
    reviewed_answer: str | None
    reviewed_score: float | None
    reviewed_notes: str | None
    reviewer: str | None
    served_from: str | None
    served_review: int | None  # the record whose review answered this run
    also: list[str]            # questions the review also answers (--ALSO)
    never: list[str]           # questions it is never served for (--NEVER)


class Stats(TypedDict):
    """What LLM.STATS replies. ``models`` maps a model name to its ``results``
    (done results), ``mean_latency_ms``, ``prompt_tokens``,
    ``completion_tokens``, ``reviewed`` and ``mean_score`` (None when none is
    reviewed). ``over_time`` (with ``interval``) is a list of
    ``(start ms, results, reviewed)``."""

    records: int
    by_state: dict[str, int]
    by_band: dict[str, int]
    reviewed: int
    mean_score: float | None
    models: dict[str, dict[str, float | None]]
    over_time: list[tuple[int, int, int]]


class Client:
    """The LLM.* commands of a redis-llm server, as typed methods.

    ``Client(redis.Redis(...))`` or ``Client(redis.cluster.RedisCluster(...))``;
    the connection is ``client.redis``. Replies are read undecoded whatever the
    connection's ``decode_responses``, so the same types come back either way:
    item data as bytes, text as str. In Redis Cluster every command goes to the
    node of its key (redis-py routes it from COMMAND's key-specs); the LLM and
    vector store keys an app or store names must share its slot (a hash tag:
    ``{tenant}:app``, ``{tenant}:llm``), else redis-py refuses the command
    (``RedisClusterException``) before sending it.
    The client is as thread-safe as the connection; it does not work on a
    pipeline, whose replies come later.
    """

    def __init__(self, connection: redis.Redis | redis.cluster.RedisCluster):
        self.redis = connection

    @classmethod
    def from_url(cls, url: str, cluster: bool = False, **kwargs: Any) -> Client:
        """A client of the server at ``url`` (``redis://host:port/db``); with
        ``cluster=True``, of the Redis Cluster that node belongs to. Keyword
        arguments go to redis-py's ``from_url``."""
        if cluster:
            return cls(redis.cluster.RedisCluster.from_url(url, **kwargs))
        return cls(redis.Redis.from_url(url, **kwargs))

    def __repr__(self) -> str:
        return f"Client({self.redis!r})"

    def _call(self, *args: Any, **options: Any) -> Any:
        # NEVER_DECODE: binary item data must reach the caller as bytes even
        # on a decode_responses connection; text is decoded here.
        try:
            return self.redis.execute_command(*args, **options, **{NEVER_DECODE: True})
        except redis.ResponseError as exc:
            error = response_error(exc)
            if error is exc:
                raise
            # The mapped error carries the whole reply; redis-py's frames add nothing.
            raise error from None

    # ---- LLMs -----------------------------------------------------------------

    def create_llm(self, key: KeyT, *, type: str | None = None, params: JSONT | None = None,
                   nx: bool = False, xx: bool = False) -> bool:
        """LLM.CREATE-LLM: store an LLM (``type`` openai, azure_openai or
        llamacpp; the server's default is openai). False when ``nx``/``xx``
        prevented it.

        >>> llm.create_llm("gpt", params={"api_key": "env:OPENAI_API_KEY"})
        True
        """
        args: list = ["LLM.CREATE-LLM", key]
        _flags(args, nx=nx, xx=xx)
        _option(args, "--TYPE", type)
        _option(args, "--PARAMS", _json(params, "params"))
        return bool(self._call(*args))

    # ---- vector stores --------------------------------------------------------

    def create_vector_store(self, key: KeyT, *, llm: KeyT | None = None,
                            params: JSONT | None = None, type: str | None = None,
                            nx: bool = False, xx: bool = False) -> bool:
        """LLM.CREATE-VECTOR-STORE: create (or replace, emptied) an HNSW store.
        ``llm`` embeds data and queries given as text; ``params`` holds
        ``dim``, ``metric``, ``m``, ``ef_construction``, ``ef``, ``max_elements``.

        >>> llm.create_vector_store("docs", params={"dim": 384, "metric": "cosine"})
        True
        """
        args: list = ["LLM.CREATE-VECTOR-STORE", key]
        _flags(args, nx=nx, xx=xx)
        _option(args, "--TYPE", type)
        _option(args, "--LLM", llm)
        _option(args, "--PARAMS", _json(params, "params"))
        return bool(self._call(*args))

    def add(self, key: KeyT, data: DataT, embedding: EmbeddingT | None = None, *,
            id: int | None = None, meta: JSONT | None = None,
            timeout: int | None = None, embedding_model: str | None = None) -> int | None:
        """LLM.ADD: add an item and return its id. Without ``embedding`` the
        store's LLM embeds ``data`` (``timeout`` in ms: None at the deadline,
        the item is still added). ``embedding_model`` names the model that
        made ``embedding``: the store refuses another than its own.

        >>> llm.add("docs", "Paris is in France.", np.array([0.1, 0.2, 0.3]), meta={"page": 1})
        1
        """
        args: list = ["LLM.ADD", key]
        _option(args, "--ID", _integer(id, "id"))
        _option(args, "--EMBEDDING-BLOB", None if embedding is None else embedding_blob(embedding))
        _option(args, "--EMBEDDING-MODEL", embedding_model)
        _option(args, "--META", _json(meta, "meta"))
        _option(args, "--TIMEOUT", _integer(timeout, "timeout"))
        args.append(data)
        reply = self._call(*args)
        return None if reply is None else int(reply)

    def get(self, key: KeyT, id: int) -> Item | None:
        """LLM.GET: an item's data, embedding (float32, exactly as stored) and
        meta; None for a missing key or id.

        >>> llm.get("docs", 1).embedding
        array([0.1, 0.2, 0.3], dtype=float32)
        """
        reply = self._call("LLM.GET", key, _integer(id, "id"))
        if reply is None:
            return None
        meta = _load_json(reply[2]) if len(reply) > 2 else None
        return Item(reply[0], parse_vector(reply[1]), meta)

    def rem(self, key: KeyT, id: int) -> bool:
        """LLM.REM: remove an item; False when the key or the id does not exist."""
        return bool(self._call("LLM.REM", key, _integer(id, "id")))

    def size(self, key: KeyT) -> int:
        """LLM.SIZE: the number of items; 0 for a missing key."""
        return int(self._call("LLM.SIZE", key))

    @overload
    def knn(self, key: KeyT, embedding: EmbeddingT | None = None, *, k: int | None = None,
            ef: int | None = None, filter: JSONT | None = None, withdata: Literal[False] = False,
            timeout: int | None = None, query: DataT | None = None,
            embedding_model: str | None = None) -> list[tuple[int, float]]: ...

    @overload
    def knn(self, key: KeyT, embedding: EmbeddingT | None = None, *, k: int | None = None,
            ef: int | None = None, filter: JSONT | None = None, withdata: Literal[True],
            timeout: int | None = None, query: DataT | None = None,
            embedding_model: str | None = None) -> list[Match]: ...

    def knn(self, key, embedding=None, *, k=None, ef=None, filter=None, withdata=False,
            timeout=None, query=None, embedding_model=None):
        """LLM.KNN: the ``k`` (server default 10) items nearest to
        ``embedding``, or to the text ``query`` embedded by the store's LLM;
        nearest first, as ``(id, distance)``, or with ``withdata`` as
        ``Match(id, distance, data, meta)``. ``filter`` matches meta fields.
        None when ``timeout`` (ms, for a query) passed. ``embedding_model``
        names the model that made ``embedding``: the store refuses another
        than its own.

        >>> llm.knn("docs", [0.1, 0.2, 0.25], k=2, filter={"page": 1}, withdata=True)
        [Match(id=1, distance=0.0025, data=b'Paris is in France.', meta={'page': 1})]
        """
        args: list = ["LLM.KNN", key]
        _option(args, "--K", _integer(k, "k"))
        _option(args, "--EMBEDDING-BLOB", None if embedding is None else embedding_blob(embedding))
        _option(args, "--EMBEDDING-MODEL", embedding_model)
        _option(args, "--EF", _integer(ef, "ef"))
        _option(args, "--FILTER", _json(filter, "filter"))
        _flags(args, withdata=withdata)
        _option(args, "--TIMEOUT", _integer(timeout, "timeout"))
        if query is not None:
            _trailing(args, query)
        reply = self._call(*args)
        if reply is None:
            return None
        if withdata:
            return [_match(row) for row in reply]
        return [(int(row[0]), float(row[1])) for row in reply]

    # ---- apps -----------------------------------------------------------------

    def create_app(self, key: KeyT, *, llm: KeyT, prompt: DataT | None = None,
                   record: int | None = None, review: JSONT | None = None,
                   nx: bool = False, xx: bool = False) -> bool:
        """LLM.CREATE-APP: a prompt template (jinja2, ``{{input}}`` and
        ``vars``) run by the LLM at ``llm``. ``record`` bounds the records
        kept (0: none); ``review`` sets ``serve_score``, ``context_score``,
        ``distance``.

        >>> llm.create_app("hello", llm="gpt", prompt="Say hello to {{name}}")
        True
        """
        args: list = ["LLM.CREATE-APP", key]
        _flags(args, nx=nx, xx=xx)
        _option(args, "--LLM", llm)
        _option(args, "--PROMPT", prompt)
        _records_options(args, record, review)
        return bool(self._call(*args))

    def create_search(self, key: KeyT, *, llm: KeyT, vector_store: KeyT, k: int | None = None,
                      prompt: DataT | None = None, record: int | None = None,
                      review: JSONT | None = None, nx: bool = False, xx: bool = False) -> bool:
        """LLM.CREATE-SEARCH: a RAG app answering from the ``k`` (server
        default 3) nearest items of ``vector_store``; a ``prompt`` must use
        ``{{context}}`` and ``{{question}}``.

        >>> llm.create_search("ask", llm="gpt", vector_store="docs", k=5)
        True
        """
        args: list = ["LLM.CREATE-SEARCH", key]
        _flags(args, nx=nx, xx=xx)
        _option(args, "--LLM", llm)
        _option(args, "--VECTOR-STORE", vector_store)
        _option(args, "--K", _integer(k, "k"))
        _option(args, "--PROMPT", prompt)
        _records_options(args, record, review)
        return bool(self._call(*args))

    def create_chat(self, key: KeyT, *, llm: KeyT, vector_store: KeyT,
                    history: JSONT | None = None, prompt: DataT | None = None,
                    record: int | None = None, review: JSONT | None = None,
                    nx: bool = False, xx: bool = False) -> bool:
        """LLM.CREATE-CHAT: a chat app whose long history is summarised into
        ``vector_store``; ``history`` sets ``summary_cnt``,
        ``summary_ctx_cnt``, ``msg_ctx_cnt``, ``summary_prompt``.

        >>> llm.create_chat("chat", llm="gpt", vector_store="memory", history={"msg_ctx_cnt": 4})
        True
        """
        args: list = ["LLM.CREATE-CHAT", key]
        _flags(args, nx=nx, xx=xx)
        _option(args, "--LLM", llm)
        _option(args, "--VECTOR-STORE", vector_store)
        _option(args, "--HISTORY", _json(history, "history"))
        _option(args, "--PROMPT", prompt)
        _records_options(args, record, review)
        return bool(self._call(*args))

    @overload
    def run(self, key: KeyT, input: DataT | None = None, *, vars: JSONT | None = None,
            params: JSONT | None = None, verbose: Literal[False] = False,
            timeout: int | None = None, session: DataT | None = None,
            async_: Literal[False] = False, tags: Sequence[str] | str | None = None
            ) -> str | None: ...

    @overload
    def run(self, key: KeyT, input: DataT | None = None, *, vars: JSONT | None = None,
            params: JSONT | None = None, verbose: Literal[True], timeout: int | None = None,
            session: DataT | None = None, async_: Literal[False] = False,
            tags: Sequence[str] | str | None = None) -> RunDetails | None: ...

    @overload
    def run(self, key: KeyT, input: DataT | None = None, *, vars: JSONT | None = None,
            params: JSONT | None = None, verbose: bool = False, timeout: None = None,
            session: DataT | None = None, async_: Literal[True],
            tags: Sequence[str] | str | None = None) -> int: ...

    def run(self, key, input=None, *, vars=None, params=None, verbose=False, timeout=None,
            session=None, async_=False, tags=None):
        """LLM.RUN: run an app and return its answer (str); with ``verbose``
        a ``RunDetails`` dict (answer, prompt, items, model, tokens,
        served_from, record, served_review); with ``async_=True`` (``--ASYNC``) the id of the record
        to poll with ``result``. ``params`` are model params for this call,
        ``session`` a chat app's conversation. None when ``timeout`` (ms)
        passed.

        >>> llm.run("hello", vars={"name": "Ada"})
        'Hello, Ada!'
        >>> rid = llm.run("ask", "Who wrote redis-llm?", async_=True, tags=["faq"])
        """
        args: list = ["LLM.RUN", key]
        _option(args, "--VARS", _json(vars, "vars"))
        _option(args, "--PARAMS", _json(params, "params"))
        _flags(args, verbose=verbose)
        _option(args, "--TIMEOUT", _integer(timeout, "timeout"))
        _option(args, "--SESSION", session)
        _flags(args, **{"async": async_})
        _option(args, "--TAGS", _tags(tags))
        if input is not None:
            _trailing(args, input)
        reply = self._call(*args)
        if reply is None:
            return None
        if async_:
            return int(reply)
        if verbose:
            return _run_details(reply)
        return _text(reply)

    def chat_log(self, key: KeyT, messages: Sequence[Mapping[str, str] | tuple[str, str]], *,
                 session: DataT | None = None, unsummarised: int | None = None,
                 summaries: int | None = None) -> int:
        """LLM.CHAT-LOG: append messages (``{"role": ..., "content": ...}``
        dicts or ``(role, content)`` pairs) to a chat session; returns the
        number of messages the session keeps.

        >>> llm.chat_log("chat", [("user", "Hi, I am Ada."), ("assistant", "Hello Ada!")])
        2
        """
        entries = [{"role": m[0], "content": m[1]} if isinstance(m, tuple) else dict(m)
                   for m in messages]
        args: list = ["LLM.CHAT-LOG", key]
        _option(args, "--SESSION", session)
        _option(args, "--UNSUMMARISED", _integer(unsummarised, "unsummarised"))
        _option(args, "--SUMMARIES", _integer(summaries, "summaries"))
        args.append(_dump(entries))
        return int(self._call(*args))

    def history(self, key: KeyT, *, session: DataT | None = None) -> list[tuple[str, str]]:
        """LLM.HISTORY: the messages a chat session keeps, oldest first, as
        ``(role, content)``; empty for a missing key or session."""
        args: list = ["LLM.HISTORY", key]
        _option(args, "--SESSION", session)
        return [(_text(role), _text(content)) for role, content in self._call(*args)]

    # ---- listing ----------------------------------------------------------------

    def list_keys(self, *, type: str | None = None, match: KeyT | None = None,
                  count: int | None = None) -> list[tuple[bytes, str]]:
        """LLM.LIST: the LLMs, vector stores and apps the calling user may
        read, as ``(key, type)`` sorted by key, at most ``count`` (server
        default 1000); ``type`` is llm, vector-store, app, search or chat,
        ``match`` a glob pattern. Keys are bytes (they are binary-safe). On a
        RedisCluster every primary is asked, and their answers are merged
        (and cut at ``count``, when given).

        >>> llm.list_keys(type="search")
        [(b'ask', 'search')]
        """
        args: list = ["LLM.LIST"]
        _option(args, "--TYPE", type)
        _option(args, "--MATCH", match)
        _option(args, "--COUNT", _integer(count, "count"))
        if isinstance(self.redis, redis.cluster.RedisCluster):
            # A keyless command: redis-py would refuse it, or ask one node.
            replies = self._call(*args, target_nodes=self.redis.get_primaries())
            rows = [row for reply in (replies.values() if isinstance(replies, dict) else [replies])
                    for row in reply]
        else:
            rows = self._call(*args)
        found = sorted((bytes(key), _text(kind)) for key, kind in rows)
        return found if count is None else found[:count]

    # ---- records and reviews --------------------------------------------------

    def result(self, key: KeyT, id: int) -> Record | None:
        """LLM.RESULT: a record as a dict (see ``Record``); None for an
        unknown id or a missing key.

        >>> llm.result("ask", rid)["state"]
        'done'
        """
        reply = self._call("LLM.RESULT", key, _integer(id, "id"))
        return None if reply is None else decode_record(reply)

    def results(self, key: KeyT, *, state: str | None = None, reviewed: bool | None = None,
                model: str | None = None, tag: str | None = None, session: DataT | None = None,
                min_score: float | None = None, max_score: float | None = None,
                since: int | None = None, until: int | None = None, text: DataT | None = None,
                count: int | None = None, offset: int | None = None) -> list[Record]:
        """LLM.RESULTS: records matching every filter, newest first, ``count``
        (server default 10) at most after ``offset``. ``reviewed=True`` sends
        ``--REVIEWED``, ``reviewed=False`` ``--UNREVIEWED``; ``since`` and
        ``until`` are Unix ms (``until`` excluded); ``text`` is found in the
        question, answer or reviewed answer, ignoring case.

        >>> [r["id"] for r in llm.results("ask", reviewed=False, state="done", count=50)]
        [3, 2]
        """
        args: list = ["LLM.RESULTS", key]
        _option(args, "--STATE", state)
        if reviewed is not None:
            args.append("--REVIEWED" if reviewed else "--UNREVIEWED")
        _option(args, "--MODEL", model)
        _option(args, "--TAG", tag)
        _option(args, "--SESSION", session)
        _option(args, "--MIN-SCORE", _decimal(min_score, "min_score"))
        _option(args, "--MAX-SCORE", _decimal(max_score, "max_score"))
        _option(args, "--SINCE", _integer(since, "since"))
        _option(args, "--UNTIL", _integer(until, "until"))
        _option(args, "--TEXT", text)
        _option(args, "--COUNT", _integer(count, "count"))
        _option(args, "--OFFSET", _integer(offset, "offset"))
        return [decode_record(reply) for reply in self._call(*args)]

    def review(self, key: KeyT, id: int, *, answer: DataT, score: float,
               notes: DataT | None = None, also: Sequence[DataT] | None = None,
               never: Sequence[DataT] | None = None) -> bool:
        """LLM.REVIEW: an expert's answer and 0-100 confidence ``score`` for
        a done result (95 and above serves it for the same question).
        ``also`` lists questions the answer also answers (served as if
        asked), ``never`` questions it must never be served for. Each list
        replaces the stored one; None (the default) keeps it and ``[]``
        clears it.

        >>> llm.review("ask", rid, answer="sewenew", score=97, notes="checked",
        ...            also=["Who maintains redis-llm?"], never=["Who wrote redis-py?"])
        True
        """
        args: list = ["LLM.REVIEW", key, _integer(id, "id"), "--ANSWER", answer,
                      "--SCORE", _decimal(score, "score")]
        _option(args, "--NOTES", notes)
        _questions(args, "--ALSO", also, "also")
        _questions(args, "--NEVER", never, "never")
        return bool(self._call(*args))

    def record(self, key: KeyT, *, question: DataT, answer: DataT, model: str | None = None,
               latency: int | None = None, tags: Sequence[str] | str | None = None,
               session: DataT | None = None, meta: JSONT | None = None) -> int:
        """LLM.RECORD: record a question and answer computed elsewhere (state
        done); returns its id. ``latency`` is in ms.

        >>> llm.record("ask", question="2+2?", answer="4", model="agent-1", latency=120)
        4
        """
        args: list = ["LLM.RECORD", key, "--QUESTION", question, "--ANSWER", answer]
        _option(args, "--MODEL", model)
        _option(args, "--LATENCY", _integer(latency, "latency"))
        _option(args, "--TAGS", _tags(tags))
        _option(args, "--SESSION", session)
        _option(args, "--META", _json(meta, "meta"))
        return int(self._call(*args))

    def stats(self, key: KeyT, *, interval: int | None = None) -> Stats:
        """LLM.STATS: counts by state and review band, mean score, per-model
        figures; with ``interval`` (ms, at least 1000) results and reviewed
        results per interval, in ``over_time``.

        >>> llm.stats("ask")["by_state"]["done"]
        3
        >>> llm.stats("ask", interval=3_600_000)["over_time"]
        [(1764648000000, 3, 2)]
        """
        args: list = ["LLM.STATS", key]
        _option(args, "--INTERVAL", _integer(interval, "interval"))
        fields = _pairs(self._call(*args))
        mean = fields["mean_score"]
        return {
            "records": int(fields["records"]),
            "by_state": {name: int(count) for name, count in _pairs(fields["by_state"]).items()},
            "by_band": {name: int(count) for name, count in _pairs(fields["by_band"]).items()},
            "reviewed": int(fields["reviewed"]),
            "mean_score": float(mean) if mean else None,
            "models": {_text(name): {"results": int(count), "mean_latency_ms": float(latency),
                                     "prompt_tokens": int(prompt),
                                     "completion_tokens": int(completion),
                                     "reviewed": int(reviewed),
                                     "mean_score": float(score) if score else None}
                       for name, count, latency, prompt, completion, reviewed, score
                       in fields["models"]},
            "over_time": [(int(start), int(results), int(reviewed))
                          for start, results, reviewed in fields.get("over_time", [])],
        }

    def result_set(self, key: KeyT, record: Mapping[str, Any] | str | bytes, *,
                   vector: EmbeddingT | None = None) -> bool:
        """LLM.RESULT-SET: store a whole record (a dict as ``result`` returns
        it, or its JSON), with the embedding of its question when ``vector``
        is given. This is how records are replicated; tools use it to copy
        records between apps."""
        if isinstance(record, (str, bytes)):
            if vector is not None:
                raise TypeError("give vector with a record dict, not inside a JSON string")
            payload = record
        else:
            fields = dict(record)
            for name in _KEY_FIELDS:
                if isinstance(fields.get(name), str):
                    fields[name] = _server_text(fields[name])
            for name in _RECORD_LISTS:
                if fields.get(name) == []:
                    fields[name] = None     # as ``result`` reads an unset list
            if vector is not None:
                fields["vector"] = base64.b64encode(embedding_blob(vector)).decode()
            payload = _dump(fields)
        return bool(self._call("LLM.RESULT-SET", key, payload))


# ---- arguments ------------------------------------------------------------------

def embedding_blob(embedding: EmbeddingT) -> bytes:
    """An embedding as ``--EMBEDDING-BLOB`` bytes (little-endian float32);
    ValueError unless it is a non-empty 1-D sequence of numbers."""
    try:
        vector = np.asarray(embedding, dtype="<f4")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"an embedding must be a 1-D sequence of numbers ({exc})") from None
    if vector.ndim != 1:
        raise ValueError(f"an embedding must be 1-D, got an array of shape {vector.shape}")
    if vector.size == 0:
        raise ValueError("an embedding must not be empty")
    return vector.tobytes()


def _option(args: list, name: str, value: Any) -> None:
    if value is not None:
        args += [name, value]


def _flags(args: list, **flags: bool) -> None:
    for name, given in flags.items():
        if given:
            args.append("--" + name.upper())


def _records_options(args: list, record: int | None, review: JSONT | None) -> None:
    _option(args, "--RECORD", _integer(record, "record"))
    _option(args, "--REVIEW", _json(review, "review"))


def _integer(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


def _decimal(value: Any, name: str) -> str | None:
    """A number in the plain decimal form the server reads (no exponent)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = repr(float(value))
    if "e" in text or "E" in text:
        text = f"{float(value):.20f}".rstrip("0").rstrip(".")
    return text


def _json(value: JSONT | None, name: str) -> bytes | str | None:
    if value is None or isinstance(value, (str, bytes)):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict or a JSON string, got {type(value).__name__}")
    return _dump(dict(value))


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _tags(tags: Sequence[str] | str | None) -> str | None:
    if tags is None or isinstance(tags, str):
        return tags
    tags = list(tags)
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip() or "," in tag:
            raise ValueError(f"a tag must be a non-empty string without commas, got {tag!r}")
    return ",".join(tags)


def _questions(args: list, option: str, questions: Sequence[DataT] | None, name: str) -> None:
    """--ALSO / --NEVER: one option per question; an empty list sends the
    single empty value that clears the stored list."""
    if questions is None:
        return
    if isinstance(questions, (str, bytes)):
        raise TypeError(f"{name} must be a list of questions, not a single string")
    questions = list(questions)
    for question in questions:
        if not isinstance(question, (str, bytes)):
            raise TypeError(f"{name} questions must be strings, got {question!r}")
        if not question.strip():
            # The server reads a single empty value as "clear the list".
            raise ValueError(f"{name} questions must not be empty (give [] to clear the list)")
    for question in questions or [""]:
        args += [option, question]


def _trailing(args: list, value: DataT) -> None:
    # "--" ends the options, so an input that looks like one is still the input.
    if (value.encode() if isinstance(value, str) else bytes(value)).startswith(b"--"):
        args.append("--")
    args.append(value)


# ---- replies --------------------------------------------------------------------

_RECORD_INTEGERS = {"id", "latency_ms", "prompt_tokens", "completion_tokens", "created_at",
                    "updated_at", "served_review"}
_RECORD_LISTS = ("also", "never")  # JSON arrays of strings; [] when empty
_RECORD_JSON = {"vars", "matches", "meta"}
# Fields the server holds as the latin-1 text of their bytes (a key, a session id).
_KEY_FIELDS = ("app", "session")
_INTEGER_TEXT = re.compile(rb"-?[0-9]+\Z")


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", "replace")


def _load_json(raw: bytes | None) -> Any:
    return None if raw is None else json.loads(raw)


def _pairs(flat: list) -> dict[str, Any]:
    return {_text(name): value for name, value in zip(flat[0::2], flat[1::2])}


def _match(row: list) -> Match:
    return Match(int(row[0]), float(row[1]), row[2], _load_json(row[3]))


def _run_details(reply: list) -> RunDetails:
    details: dict[str, Any] = {}
    for name, value in _pairs(reply).items():
        if name == "items":
            details[name] = [_match(row) for row in value]
        elif name in ("prompt_tokens", "completion_tokens"):
            details[name] = int(value)
        elif name in ("record", "served_review"):
            details[name] = None if value is None else int(value)
        else:
            details[name] = _text(value)
    return details  # type: ignore[return-value]


def decode_record(reply: list) -> Record:
    """Decode a record as records.reply() sends it: field/value pairs, every
    value a string, empty for a missing value."""
    record: dict[str, Any] = {}
    for name, raw in _pairs(reply).items():
        if name == "tags":
            record[name] = _text(raw).split(",") if raw else []
        elif name in _RECORD_LISTS:
            record[name] = json.loads(raw) if raw else []
        elif not raw:
            record[name] = None
        elif name in _RECORD_INTEGERS:
            record[name] = int(raw)
        elif name == "reviewed_score":
            record[name] = float(raw)
        elif name in _RECORD_JSON:
            record[name] = json.loads(raw)
        elif name == "match_page":
            # The page of the best match's meta: sent as text, a number or not.
            record[name] = int(raw) if _INTEGER_TEXT.match(raw) else _text(raw)
        elif name in _KEY_FIELDS:
            record[name] = _client_text(_text(raw))
        else:
            record[name] = _text(raw)
    return record  # type: ignore[return-value]


def _client_text(server_text: str) -> str:
    """A key or session id the server holds as latin-1 text, as the caller
    wrote it: its bytes read as UTF-8 (bytes that are not UTF-8 kept as
    surrogate escapes, so ``_server_text`` restores them exactly)."""
    try:
        raw = server_text.encode("latin-1")
    except UnicodeEncodeError:
        return server_text
    return raw.decode("utf-8", "surrogateescape")


def _server_text(client_text: str) -> str:
    return client_text.encode("utf-8", "surrogateescape").decode("latin-1")


def parse_vector(text: bytes | str) -> np.ndarray:
    """An embedding as LLM.GET sends it (comma-separated decimals, each the
    shortest that reads back as its float32) as a float32 array, bit for bit."""
    tokens = (text.encode() if isinstance(text, str) else text).split(b",")
    wide = np.array(tokens, dtype=np.float64)
    vector = wide.astype(np.float32)
    # Reading through float64 rounds twice: a decimal that float64 rounds
    # onto the midpoint of two float32 values then goes to the even one,
    # which may be the wrong one. Those (rare) values are rounded exactly.
    toward = np.where(wide > vector, np.float32(np.inf), np.float32(-np.inf))
    with np.errstate(invalid="ignore", over="ignore"):
        neighbour = np.nextafter(vector, toward)
        midpoint = (vector.astype(np.float64) + neighbour.astype(np.float64)) / 2
    for i in np.flatnonzero((wide == midpoint) & (wide != vector)):
        vector[i] = _nearest_float32(tokens[i], vector[i], neighbour[i])
    return vector


def _nearest_float32(token: bytes, a: np.float32, b: np.float32) -> np.float32:
    exact = Fraction(token.decode())
    error_a, error_b = abs(Fraction(float(a)) - exact), abs(Fraction(float(b)) - exact)
    if error_a != error_b:
        return a if error_a < error_b else b
    return a if not int(np.array(a).view(np.uint32)) & 1 else b  # a tie: the even one
