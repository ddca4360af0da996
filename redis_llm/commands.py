"""The LLM.* commands: one table, and a handler per command.

Each entry of ``COMMANDS`` names the command, its handler, its Redis flags,
its arity, its key-specs (for cluster routing and ACL key patterns) and its
syntax. The C shim registers exactly these, and ``bridge.dispatch`` parses a
call with its syntax before the handler sees it.
"""

import fnmatch
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from redis_llm import command_info, keys, metrics, pool, review_match
from redis_llm.embedding_source import Declared, Embedder, check_model
from redis_llm.apps import (
    App,
    chat_log_command,
    conversation_text,
    parse_messages,
    result_set_command,
)
from redis_llm.errors import LLMError
from redis_llm.parsing import (
    Args,
    Option,
    Syntax,
    choice,
    data_bytes,
    decimal,
    embedding_blob,
    embedding_text,
    format_distance,
    format_vector,
    integer,
    json_object,
    json_value,
    model_name,
    record_json,
    shown,
    text_bytes,
    uint64,
    vars_object,
)
from redis_llm.records import (
    STATES,
    check_record,
    decode_vector,
    decode_vectors,
    guard_questions,
    now_ms,
    source_text,
)
from redis_llm.records import reply as record_reply
from redis_llm.providers import TYPES as LLM_TYPES
from redis_llm.providers import Completion
from redis_llm.providers import LLMModel
from redis_llm.store import StoreParams, VectorStore

# Context flags: a command replayed from the AOF or sent by a master; where
# a client cannot be blocked (Lua, MULTI, deny-blocking).
_CTX_MASTER, _CTX_REPLICATED, _CTX_LOADING = 1 << 2, 1 << 12, 1 << 13
_CTX_NO_BLOCKING = (1 << 0) | (1 << 1) | (1 << 21)

# Key-spec flags of the module API (RedisModule_SetCommandInfo).
KEY_RO, KEY_RW, KEY_OW, KEY_RM = 1 << 0, 1 << 1, 1 << 2, 1 << 3
KEY_ACCESS, KEY_UPDATE, KEY_INSERT, KEY_DELETE = 1 << 4, 1 << 5, 1 << 6, 1 << 7


@dataclass(frozen=True)
class KeySpec:
    """Where a command's key is: at ``index``, or right after ``keyword``."""

    flags: int
    index: int = 1
    keyword: str | None = None
    startfrom: int = 2  # where the search for the keyword starts: after the key

    def as_tuple(self) -> tuple:
        # (flags, begin index, begin keyword, keyword search start, lastkey, keystep, limit)
        return (self.flags, self.index, self.keyword, self.startfrom, 0, 1, 0)


@dataclass(frozen=True)
class Command:
    name: str
    handler: Callable[[int, Args], object]
    flags: str
    arity: int
    key_specs: tuple[KeySpec, ...]
    syntax: Syntax
    summary: str
    complexity: str = "O(1)"
    since: str = "0.1.0"
    debug: bool = False  # registered only with the DEBUG_COMMANDS module argument
    # Options whose values may hold secrets: hidden from SLOWLOG, MONITOR and the log.
    secret_options: tuple[bytes, ...] = ()

    def registration(self) -> tuple:
        """What the C shim needs to register this command: its name, flags
        and the RedisModuleCommandInfo to set (command_info.Built)."""
        flags = self.flags
        if any(spec.keyword for spec in self.key_specs):
            # Keys given as option values: Redis 7.0 routes a cluster command
            # by its first key unless the module reports them all (key_positions).
            flags += " getkeys-api"
        info = command_info.Built(self.summary, self.complexity, self.since, self.arity,
                                  tuple(spec.as_tuple() for spec in self.key_specs),
                                  self.argument_docs())
        return (self.name.lower(), flags, info)

    def key_positions(self, argv: Sequence[bytes]) -> list[int]:
        """The positions of the keys in ``argv`` (the command name at 0), found
        as the key-specs say: at an index, or after the first keyword found
        from ``startfrom`` on."""
        positions = []
        for spec in self.key_specs:
            if spec.keyword is None:
                if spec.index < len(argv):
                    positions.append(spec.index)
                continue
            keyword = spec.keyword.encode()
            for pos in range(spec.startfrom, len(argv) - 1):
                if argv[pos].upper() == keyword:
                    positions.append(pos + 1)
                    break
        return positions

    def argument_docs(self) -> tuple:
        """The arguments COMMAND DOCS shows, from the syntax: (name, type,
        key-spec index, token, summary, flags, sub-arguments) tuples."""
        syntax = self.syntax
        key_spec_of = {spec.keyword: i for i, spec in enumerate(self.key_specs) if spec.keyword}
        docs = []
        for name, convert in syntax.positional:
            is_key = name == "key"
            docs.append((name, _ARG_KEY if is_key else _arg_type(convert), 0 if is_key else -1,
                         None, None, 0, ()))
        grouped = {name: group for group in syntax.exclusive for name in group}
        for option in syntax.options.values():
            group = grouped.get(option.name)
            if group is None:
                flags = _ARG_OPTIONAL * (not option.required) | _ARG_MULTIPLE_TOKEN * option.repeat
                docs.append(_option_doc(option, key_spec_of, flags))
            elif option.name == group[0]:  # the group, where its first option is
                members = tuple(_option_doc(syntax.options[name.encode()], key_spec_of, 0)
                                for name in group)
                docs.append(("-or-".join(n.lstrip("-").lower() for n in group), _ARG_ONEOF, -1,
                             None, None, _ARG_OPTIONAL, members))
        if syntax.trailing == "optional":
            docs.append(("end-of-options", _ARG_PURE_TOKEN, -1, "--", None, _ARG_OPTIONAL, ()))
        if syntax.trailing:
            docs.append((syntax.trailing_name, _ARG_STRING, -1, None, None,
                         _ARG_OPTIONAL if syntax.trailing == "optional" else 0, ()))
        return tuple(docs)


# COMMAND DOCS argument types and flags of the module API.
_ARG_STRING, _ARG_INTEGER, _ARG_DOUBLE, _ARG_KEY, _ARG_PURE_TOKEN, _ARG_ONEOF = 0, 1, 2, 3, 6, 7
_ARG_OPTIONAL, _ARG_MULTIPLE_TOKEN = 1 << 0, 1 << 2


def _arg_type(convert) -> int:
    # parsing.integer() and parsing.decimal() make the numeric converters.
    maker = getattr(convert, "__qualname__", "").split(".")[0]
    return {"integer": _ARG_INTEGER, "decimal": _ARG_DOUBLE}.get(maker, _ARG_STRING)


def _option_doc(option: Option, key_spec_of: dict, flags: int) -> tuple:
    name = option.attr.replace("_", "-")
    if option.convert is None:
        return (name, _ARG_PURE_TOKEN, -1, option.name, None, flags, ())
    spec = key_spec_of.get(option.name)
    if spec is not None:
        return (name, _ARG_KEY, spec, option.name, None, flags, ())
    return (name, _arg_type(option.convert), -1, option.name, None, flags, ())


# ---- vector stores ----------------------------------------------------------

def _trusted(ctx: int) -> bool:
    """A replica or an AOF replay must take what the master took, even when
    its model files or packages differ, or the master ran an older release
    with other limits."""
    return bool(keys.context_flags(ctx) & (_CTX_REPLICATED | _CTX_LOADING))


def create_vector_store(ctx: int, args: Args):
    params = StoreParams.from_json(args.params if args.params is not None else {},
                                   limits=not _trusted(ctx))
    existing = keys.read(ctx, args.key, VectorStore)
    if (args.nx and existing is not None) or (args.xx and existing is None):
        return 0
    keys.write(ctx, args.key, VectorStore(params, llm=args.llm))
    keys.replicate_verbatim(ctx)
    keys.notify(ctx, b"llm.create-vector-store", args.key)
    return 1


def add(ctx: int, args: Args):
    store = _store(ctx, args.key)
    vector = _given_vector(args)
    if vector is not None:
        return _add_item(ctx, store, args, vector, _declared(args))
    _no_declared_model(args)
    embedder = _embedder(ctx, store, args.key, None, "data")
    text = _text(args.data)

    def job(locked):
        vector = embedder.embed([text])[0]
        return locked(lambda ctx: _add_item(ctx, _store(ctx, args.key), args, vector, embedder))
    pool.workers.run(ctx, job, args.timeout)
    return keys.BLOCKED


def _store(ctx: int, key: bytes) -> VectorStore:
    store = keys.read(ctx, key, VectorStore)
    if store is None:
        raise LLMError(f"no vector store at key {shown(key)}")
    return store


def _add_item(ctx: int, store: VectorStore, args: Args, vector, source=None) -> int:
    """Add the item of ``args`` with ``vector`` and replicate it. ``source``
    (an Embedder, a Declared or None) names the model that made ``vector``."""
    model = source.model if source is not None else None
    if store.other_model(model) is not None:
        if not _trusted(ctx):
            check_model(store, args.key, source)
        # A replica or a replay takes what its master took; the store keeps its model.
        model = None
    item_id = args.id if args.id is not None else store.peek_id()
    # Replicas and the AOF get the resolved id, embedding and embedding model,
    # never a request they would have to compute again. Built first: nothing
    # may fail after the store has changed.
    command = [args.key, b"--ID", b"%d" % item_id, b"--EMBEDDING-BLOB", vector.astype("<f4").tobytes()]
    if model is not None:
        command += [b"--EMBEDDING-MODEL", model.encode()]
    if args.meta is not None:
        command += [b"--META", _dump_json(args.meta)]
    store.add(vector, args.data, args.meta, item_id, model)
    keys.replicate(ctx, b"LLM.ADD", command + [args.data])
    keys.notify(ctx, b"llm.add", args.key)
    return item_id


def get(ctx: int, args: Args):
    store = keys.read(ctx, args.key, VectorStore)
    item = store.get(args.id) if store is not None else None
    if item is None:
        return None
    data, vector, meta = item
    reply = [data, format_vector(vector)]
    if meta is not None:
        reply.append(_dump_json(meta))
    return reply


def rem(ctx: int, args: Args):
    store = keys.read(ctx, args.key, VectorStore)
    if store is None or not store.remove(args.id):
        return 0
    keys.replicate_verbatim(ctx)
    keys.notify(ctx, b"llm.rem", args.key)
    return 1


def size(ctx: int, args: Args):
    store = keys.read(ctx, args.key, VectorStore)
    return len(store) if store is not None else 0


def knn(ctx: int, args: Args):
    store = keys.read(ctx, args.key, VectorStore)
    vector = _given_vector(args)
    if vector is None and args.query is None:
        raise LLMError("give --EMBEDDING, --EMBEDDING-BLOB or a query text")
    if vector is None:
        _no_declared_model(args)
    if store is None or not len(store):
        return []
    if vector is not None:
        check_model(store, args.key, _declared(args))
        return _knn_reply(store, args, vector)
    embedder = _embedder(ctx, store, args.key, None, "query")
    text = _text(args.query)

    def job(locked):
        vector = embedder.embed([text])[0]

        def search(ctx):
            store = keys.read(ctx, args.key, VectorStore)
            if store is None or not len(store):
                return []
            check_model(store, args.key, embedder)     # the store may have changed meanwhile
            return _knn_reply(store, args, vector)
        return locked(search)
    pool.workers.run(ctx, job, args.timeout)
    return keys.BLOCKED


def _knn_reply(store: VectorStore, args: Args, vector) -> list:
    neighbours = store.knn(vector, args.k, ef=args.ef, where=args.filter)
    if not args.withdata:
        return [[item_id, format_distance(distance)] for item_id, distance in neighbours]
    reply = []
    for item_id, distance in neighbours:
        data, meta = store.item(item_id)
        reply.append([item_id, format_distance(distance), data,
                      _dump_json(meta) if meta is not None else None])
    return reply


def _given_vector(args: Args):
    return args.embedding if args.embedding is not None else args.embedding_blob


def _embedder(ctx: int, store: VectorStore, owner: bytes, app_llm: bytes | None, what: str,
              store_key: bytes | None = None) -> Embedder:
    """What embeds text for ``store``: the store's own LLM, else the app's, so
    that queries and items share one embedding space. ``owner`` is the key of
    the store or app the command named; ``store_key`` the store's (default:
    ``owner``). Refuses an LLM whose embedding model is not the store's."""
    llm = store.llm if store.llm is not None else app_llm
    if llm is None:
        raise LLMError(f"no --EMBEDDING given and the vector store has no LLM to embed the {what}")
    embedder = Embedder(keys.read_referenced(ctx, llm, LLMModel, "an LLM", owner).provider(), llm)
    check_model(store, owner if store_key is None else store_key, embedder)
    return embedder


def _declared(args: Args) -> Declared | None:
    return None if args.embedding_model is None else Declared(args.embedding_model)


def _no_declared_model(args: Args) -> None:
    if args.embedding_model is not None:
        raise LLMError("option --EMBEDDING-MODEL names the model of --EMBEDDING or --EMBEDDING-BLOB; "
                       "text is embedded by the store's LLM")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _dump_json(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# ---- LLMs -------------------------------------------------------------------

def create_llm(ctx: int, args: Args):
    trusted = _trusted(ctx)
    # From an older master or AOF file, a left-out field means what it meant
    # there (legacy); replicas and the AOF get the params in full, defaults
    # included, so that the meaning of a default never changes under them.
    model = LLMModel(args.type or "openai", args.params or {}, check_files=not trusted, legacy=trusted)
    return _create(ctx, args, LLMModel, model, b"llm.create-llm", next(model.aof_commands(args.key)))


def _create(ctx: int, args: Args, cls: type, value, event: bytes,
            propagate: list[bytes] | None = None) -> int:
    existing = keys.read(ctx, args.key, cls)
    if (args.nx and existing is not None) or (args.xx and existing is None):
        return 0
    keys.write(ctx, args.key, value)
    if propagate:
        keys.replicate(ctx, propagate[0], propagate[1:])
    else:
        keys.replicate_verbatim(ctx)
    keys.notify(ctx, event, args.key)
    return 1


# ---- applications -----------------------------------------------------------

def create_app(ctx: int, args: Args):
    app = App("app", args.llm, _prompt(args), record_limit=args.record, review=args.review,
              checked=not _trusted(ctx))
    return _create(ctx, args, App, app, b"llm.create-app")


def create_search(ctx: int, args: Args):
    app = App("search", args.llm, _prompt(args), store=args.vector_store, k=args.k,
              record_limit=args.record, review=args.review, checked=not _trusted(ctx))
    return _create(ctx, args, App, app, b"llm.create-search")


def create_chat(ctx: int, args: Args):
    app = App("chat", args.llm, _prompt(args), store=args.vector_store, history=args.history,
              record_limit=args.record, review=args.review, checked=not _trusted(ctx))
    return _create(ctx, args, App, app, b"llm.create-chat")


def _prompt(args: Args) -> str | None:
    return None if args.prompt is None else _text(args.prompt)


def run(ctx: int, args: Args):
    app = keys.read(ctx, args.key, App)
    if app is None:
        raise LLMError(f"no app at key {shown(args.key)}")
    if args.session is not None and app.kind != "chat":
        raise LLMError("--SESSION is for chat apps")
    model = keys.read_referenced(ctx, app.llm, LLMModel, "an LLM", args.key)
    if getattr(args, "async") and not app.records.limit:
        raise LLMError("--ASYNC needs records: the app was created with --RECORD 0")
    if getattr(args, "async") and args.timeout:
        raise LLMError("options --ASYNC and --TIMEOUT cannot be combined")
    text = None if args.input is None else _text(args.input)
    variables = args.vars or {}
    provider = model.provider()
    embed_model = ""
    if app.kind == "app":
        job = _simple_job(app, provider, text, variables, args)
    else:
        # A chat app writes its summaries into its store.
        store = keys.read_referenced(ctx, app.store, VectorStore, "a vector store", args.key,
                                     write=app.kind == "chat")
        embedder = _embedder(ctx, store, args.key, app.llm, "question", store_key=app.store)
        embed_model = embedder.embedding_model
        if text is None:
            raise LLMError(f"a {app.kind} app needs an input")
        make = _search_job if app.kind == "search" else _chat_job
        job = make(app, provider, embedder, text, variables, args)
    record = None
    # Nothing is recorded for a run the pool would refuse.
    pool.workers.check(ctx, blocking=not getattr(args, "async"))
    _fail_orphans(ctx, args.key, app)
    if app.records.limit:
        record = app.records.new(
            args.key, question=text or "", vars=args.vars, model=provider.chat_model,
            embed_model=embed_model,
            session=None if args.session is None else args.session.decode("latin-1"),
            tags=args.tags or [])
        app.records.running.add(record["id"])
        _save_record(ctx, args.key, app, record)
        metrics.records.add(created=1)
    job = _recorded(app, args, record, job)
    if getattr(args, "async"):
        pool.workers.submit(ctx, job)
        return record["id"]
    pool.workers.run(ctx, job, args.timeout)
    return keys.BLOCKED


def _recorded(app: App, args: Args, record: dict | None, job):
    """Wrap a run's job: its record goes running, then done or failed."""
    def recorded(locked):
        try:
            return run_recorded(locked)
        finally:
            if record is not None:
                app.records.running.discard(record["id"])

    def run_recorded(locked):
        started = time.monotonic()
        if record is not None:
            locked(lambda ctx: _update_record(ctx, args.key, app, record, state="running"))
        try:
            outcome = job(locked)
        except LLMError as exc:
            error = exc.args[0]
            if record is not None:
                locked(lambda ctx: _update_record(ctx, args.key, app, record, state="failed",
                                                  error=error))
            raise
        if record is not None:
            best = outcome.items[0] if outcome.items and app.kind == "search" else None
            meta = (best[3] or {}) if best else {}
            changes = dict(
                state="done", question=outcome.question, answer=outcome.completion.text,
                model=outcome.completion.model if outcome.served_from == "llm" else record["model"],
                latency_ms=int((time.monotonic() - started) * 1000),
                prompt_tokens=outcome.completion.prompt_tokens,
                completion_tokens=outcome.completion.completion_tokens,
                served_from=outcome.served_from)
            if outcome.served_from == "review":
                metrics.records.add(served=1)
                changes["served_review"] = outcome.review["id"]
            if outcome.embed_model:
                changes["embed_model"] = outcome.embed_model
            if app.kind == "search":
                changes["matches"] = [
                    {"id": item_id, "distance": float(distance),
                     "source": (m or {}).get("source"), "page": (m or {}).get("page"),
                     "content": _text(data)}
                    for item_id, distance, data, m in outcome.items]
                changes["match_source"] = source_text(meta.get("source"))
                changes["match_page"] = meta.get("page")
            locked(lambda ctx: _update_record(ctx, args.key, app, record, outcome.vector, **changes))
        return _answer(outcome, args, record)
    return recorded


_INTERRUPTED = ("interrupted: the run was lost when the server restarted, failed over or "
                "reloaded the app while it ran")


def _fail_orphans(ctx: int, key: bytes, app: App) -> None:
    """Mark failed the records whose run was lost (see Records.orphans), on a
    master's write to the app; a replica or a replay takes the master's word."""
    if _trusted(ctx) or not keys.context_flags(ctx) & _CTX_MASTER:
        return
    for record in app.records.orphans():
        _save_record(ctx, key, app, {**record, "state": "failed", "error": _INTERRUPTED,
                                     "updated_at": now_ms()})


def _save_record(ctx: int, key: bytes, app: App, record: dict, vector=None,
                 question_vectors: dict | None = None) -> None:
    # What RDB loading, RESTORE and replicas will check, checked here first: a
    # record they would refuse must never be stored.
    app.records.put(check_record(record), vector, question_vectors)
    keys.replicate(ctx, b"LLM.RESULT-SET",
                   result_set_command(key, record, vector, question_vectors)[1:])
    keys.notify(ctx, b"llm.result", key)


def _update_record(ctx: int, key: bytes, app: App, record: dict, vector=None,
                   question_vectors: dict | None = None, **changes) -> bool:
    """Change a record under Redis' lock; False (nothing changed) when the app
    was replaced, deleted, or the record dropped out of its retention meanwhile."""
    if keys.read(ctx, key, App) is not app:
        return False
    current = app.records.get(record["id"])
    if current is None:
        return False
    _save_record(ctx, key, app, {**current, **changes, "updated_at": now_ms()}, vector,
                 question_vectors)
    return True


@dataclass
class _Outcome:
    """What a run produced, for its reply and its record."""

    completion: Completion
    prompt: str
    question: str
    items: list = field(default_factory=list)
    vector: object = None
    served_from: str = "llm"
    review: dict | None = None  # the record whose review was served
    embed_model: str | None = None  # the model that embedded ``vector``


def _simple_job(app: App, provider, text: str | None, variables: dict, args: Args):
    def job(locked):
        prompt = app.template.render({**variables, "input": text or ""})
        if text and "input" not in app.template.variables:
            prompt = f"{prompt}\n\n{text}" if prompt else text
        if not prompt:
            raise LLMError("nothing to ask: the app has no prompt and no input was given")
        question = text or prompt
        vector = None
        if app.records.limit:
            found = _find_reviews(locked, app, question, None, None, _serve(app))
            if not found and locked(lambda ctx: app.records.has_reviews(_serve(app))):
                try:  # a close question may match, if the LLM can embed
                    vector = provider.embed([question])[0]
                except LLMError:
                    vector = None
                if vector is not None:
                    found = _find_reviews(locked, app, question, vector, provider, _serve(app))
            if found:
                return _served(found[0], prompt, question, vector, provider)
        completion = provider.chat([{"role": "user", "content": prompt}], args.params)
        return _Outcome(completion, prompt, question, vector=vector,
                        embed_model=provider.embedding_model if vector is not None else None)
    return job


def _serve(app: App) -> float:
    return app.records.review["serve_score"]


def _find_reviews(locked, app: App, question: str, vector, embedder, low: float,
                  high: float = 101, first: bool = True) -> list[dict]:
    """The reviews in the score range [low, high) that answer ``question``
    (nearest first; only the nearest with ``first``): exact matches, and
    matches within the app's distance that pass the guard. The guard's
    embeddings run here, on the worker, outside Redis' lock."""
    model = embedder.embedding_model if embedder is not None else None
    found = locked(lambda ctx: app.records.candidates(question, vector, model, low, high))
    settings = app.records.review
    out = []
    # Each guard check may embed: a question close to many reviews checks
    # the nearest few, not all of them.
    for candidate in found[:_MAX_GUARD_CHECKS]:
        if not candidate.exact and settings["guard"]:
            try:
                refused = review_match.mismatch(question, candidate.question, embedder.embed,
                                                settings["guard_similarity"])
            except LLMError as exc:
                refused = f"the guard could not embed ({exc})"
            if refused:
                continue
        out.append(candidate.record)
        if first:
            break
    return out


_MAX_GUARD_CHECKS = 8


def _served(record: dict, prompt: str, question: str, vector, embedder) -> _Outcome:
    """A run answered by a review."""
    return _Outcome(Completion(record["reviewed_answer"], "review"), prompt, question,
                    vector=vector, served_from="review", review=record,
                    embed_model=embedder.embedding_model if vector is not None else None)


def _search_job(app: App, provider, embedder, question: str, variables: dict, args: Args):
    def job(locked):
        app.template.render({**variables, "context": "", "question": question})  # fail early
        vector = embedder.embed([question])[0]
        experts = []
        if app.records.limit:
            found = _find_reviews(locked, app, question, vector, embedder, _serve(app))
            if found:
                return _served(found[0], "", question, vector, embedder)
            experts = _find_reviews(locked, app, question, vector, embedder,
                                    app.records.review["context_score"], _serve(app), first=False)
        items = locked(lambda ctx: _nearest(ctx, app.store, vector, app.k, None, embedder))
        context = "\n\n".join(
            [_expert_item(record) for record in experts] +
            [_context_item(data, meta) for _, _, data, meta in items])
        prompt = app.template.render({**variables, "context": context, "question": question})
        completion = provider.chat([{"role": "user", "content": prompt}], args.params)
        return _Outcome(completion, prompt, question, items, vector)
    return job


def _expert_item(record: dict) -> str:
    return (f"{record['question']}\n{record['reviewed_answer']}\n"
            f"(source: expert review, score: {record['reviewed_score']:g})")


def _chat_job(app: App, provider, embedder, text: str, variables: dict, args: Args):
    history = app.history
    sid = args.session if args.session is not None else b""
    session = app.session(sid)
    recent = session.messages[len(session.messages) - history["msg_ctx_cnt"]:] \
        if history["msg_ctx_cnt"] else []
    where = {"session": sid.decode("latin-1"), "app": args.key.decode("latin-1")}

    def job(locked):
        app.template.render({**variables, "history": ""})  # fail before any model call
        summaries = []
        if history["summary_cnt"] and history["summary_ctx_cnt"] and session.summaries:
            vector = embedder.embed([text])[0]
            summaries = locked(lambda ctx: _nearest(ctx, app.store, vector,
                                                    history["summary_ctx_cnt"], where, embedder))
        system = app.template.render({**variables,
                                      "history": "\n".join(_text(data) for _, _, data, _ in summaries)})
        messages = [{"role": "system", "content": system}] if system else []
        messages += [*recent, {"role": "user", "content": text}]
        completion = provider.chat(messages, args.params)
        turn = [{"role": "user", "content": text}, {"role": "assistant", "content": completion.text}]
        pending = locked(lambda ctx: _log_turn(ctx, args.key, app, sid, turn))
        if pending:
            try:
                _summarise(locked, args.key, app, provider, embedder, sid, pending)
            except LLMError as exc:
                # The turn is recorded and answered; the messages wait for
                # the next turn's summary.
                keys.log("warning", f"chat app {shown(args.key)}: summary failed: {exc}")
        return _Outcome(completion, system, text, summaries)
    return job


def _log_turn(ctx: int, key: bytes, app: App, sid: bytes, turn: list[dict]) -> list[dict]:
    """Record a chat turn; returns the messages due for a summary, if any."""
    if keys.read(ctx, key, App) is not app:
        raise LLMError(f"the chat app at key {shown(key)} was replaced or deleted during the call; "
                       "the turn was not recorded")
    session = app.log_messages(sid, turn)
    keys.replicate(ctx, b"LLM.CHAT-LOG", chat_log_command(key, sid, session, turn)[1:])
    keys.notify(ctx, b"llm.chat-log", key)
    due = app.history["summary_cnt"]
    return session.messages[-session.unsummarised:] if due and session.unsummarised >= due else []


def _summarise(locked, key: bytes, app: App, provider, embedder, sid: bytes, messages: list[dict]):
    """Summarise ``messages`` into the app's vector store, for {{history}}."""
    prompt = app.summary_template.render({"conversation": conversation_text(messages)})
    summary = provider.chat([{"role": "user", "content": prompt}]).text
    vector = embedder.embed([summary])[0]
    meta = {"session": sid.decode("latin-1"), "app": key.decode("latin-1")}

    def store_summary(ctx):
        store = keys.read_referenced(ctx, app.store, VectorStore, "a vector store")
        summary_args = Args()
        summary_args.key, summary_args.id, summary_args.meta = app.store, None, meta
        summary_args.data = summary.encode()
        _add_item(ctx, store, summary_args, vector, embedder)
        if keys.read(ctx, key, App) is app:
            session = app.session(sid)
            session = app.log_messages(sid, [], max(0, session.unsummarised - len(messages)),
                                       session.summaries + 1)
            keys.replicate(ctx, b"LLM.CHAT-LOG", chat_log_command(key, sid, session, [])[1:])
    locked(store_summary)


def _nearest(ctx: int, store_key: bytes, vector, k: int, where: dict | None, embedder) -> list:
    """The k items of the store nearest to ``vector``, which ``embedder`` made."""
    store = keys.read_referenced(ctx, store_key, VectorStore, "a vector store")
    if not len(store):
        return []
    check_model(store, store_key, embedder)
    out = []
    for item_id, distance in store.knn(vector, k, where=where):
        data, meta = store.item(item_id)
        out.append((item_id, distance, data, meta))
    return out


def _context_item(data: bytes, meta: dict | None) -> str:
    fields = [f"{name}: {value}" for name, value in (meta or {}).items()
              if isinstance(value, (str, int, float)) and not isinstance(value, bool)]
    return _text(data) + (f"\n({', '.join(fields)})" if fields else "")


def _answer(outcome: _Outcome, args: Args, record: dict | None):
    completion, prompt, items = outcome.completion, outcome.prompt, outcome.items
    if not args.verbose:
        return completion.text.encode()
    return [b"answer", completion.text.encode(), b"prompt", prompt.encode(),
            b"items", [[item_id, format_distance(distance), data,
                        _dump_json(meta) if meta is not None else None]
                       for item_id, distance, data, meta in items],
            b"model", completion.model.encode(), b"prompt_tokens", completion.prompt_tokens,
            b"completion_tokens", completion.completion_tokens,
            b"served_from", outcome.served_from.encode(),
            b"record", record["id"] if record is not None else None,
            b"served_review", outcome.review["id"] if outcome.review is not None else None]


# ---- records and reviews ----------------------------------------------------

def _app(ctx: int, key: bytes) -> App:
    app = keys.read(ctx, key, App)
    if app is None:
        raise LLMError(f"no app at key {shown(key)}")
    return app


def result(ctx: int, args: Args):
    app = keys.read(ctx, args.key, App)
    record = app.records.get(args.id) if app is not None else None
    return record_reply(record) if record is not None else None


def results(ctx: int, args: Args):
    app = keys.read(ctx, args.key, App)
    if app is None:
        return []
    reviewed = True if args.reviewed else False if args.unreviewed else None
    found = app.records.query(
        state=args.state, reviewed=reviewed, model=_opt_text(args.model), tag=_opt_text(args.tag),
        session=None if args.session is None else args.session.decode("latin-1"),
        min_score=args.min_score, max_score=args.max_score, since=args.since, until=args.until,
        text=_opt_text(args.text), count=args.count, offset=args.offset)
    return [record_reply(record) for record in found]


def review(ctx: int, args: Args):
    app = _app(ctx, args.key)
    record = app.records.get(args.id)
    if record is None:
        raise LLMError(f"no result {args.id} in app {shown(args.key)}")
    if record["state"] != "done":
        raise LLMError(f"result {args.id} is {record['state']}; only done results can be reviewed")
    changes = {"reviewed_answer": _text(args.answer), "reviewed_score": args.score,
               "reviewed_notes": None if args.notes is None else _text(args.notes),
               "reviewer": keys.current_user(ctx).decode("utf-8", "replace")}
    # --ALSO / --NEVER replace the lists they are given for; lists not given
    # are kept, so a re-review never drops a reviewer's guards unasked.
    for name, values in (("also", args.also), ("never", args.never)):
        questions = guard_questions(values, f"--{name.upper()}")
        if questions is not None:
            changes[name] = questions
    reviewed = check_record({**record, **changes})  # refused before anything changes
    _fail_orphans(ctx, args.key, app)
    known = app.records.question_vectors.get(args.id, {})
    texts = [text for text in (reviewed.get("also") or []) + (reviewed.get("never") or [])
             if text not in known]
    needs_vector = (args.score >= _serve(app) and args.id not in app.records.vectors and
                    bool(record.get("question")))
    if (needs_vector or texts) and not keys.context_flags(ctx) & _CTX_NO_BLOCKING:
        # Served answers should also match close questions, and --ALSO and
        # --NEVER questions close ones too: embed them (a worker; the
        # reviewer waits). Without embeddings they match identical questions.
        embedder = _review_embedder(ctx, app, args.key)

        def job(locked):
            wanted = ([record["question"]] if needs_vector else []) + texts
            try:
                vectors = embedder.embed(wanted)
            except LLMError as exc:
                keys.log("warning", f"app {shown(args.key)}: cannot embed reviewed questions: {exc}")
                vectors = None
            vector, extra, embedded = None, {}, {}
            if vectors is not None:
                vector = vectors[0] if needs_vector else None
                extra = dict(zip(texts, vectors[1:] if needs_vector else vectors))
                if not record.get("embed_model"):
                    embedded = {"embed_model": embedder.embedding_model}
            if not locked(lambda ctx: _update_record(ctx, args.key, app, record, vector,
                                                     question_vectors={**known, **extra},
                                                     **changes, **embedded)):
                raise LLMError(f"the app at key {shown(args.key)} or its result {args.id} changed "
                               "while the review was stored; review again")
            metrics.records.add(reviewed=1)
            return 1
        pool.workers.run(ctx, job)
        return keys.BLOCKED
    _save_record(ctx, args.key, app, {**reviewed, "updated_at": now_ms()})
    metrics.records.add(reviewed=1)
    return 1


def _review_embedder(ctx: int, app: App, key: bytes):
    """The provider that embeds an app's questions: the app's LLM, or for a
    search or chat app the embedder of its store (see _embedder)."""
    if app.kind == "app":
        return keys.read_referenced(ctx, app.llm, LLMModel, "an LLM", key).provider()
    store = keys.read_referenced(ctx, app.store, VectorStore, "a vector store", key)
    return _embedder(ctx, store, key, app.llm, "question", store_key=app.store)


def record_result(ctx: int, args: Args):
    app = _app(ctx, args.key)
    if not app.records.limit:
        raise LLMError(f"the app at key {shown(args.key)} keeps no records (--RECORD 0)")
    _fail_orphans(ctx, args.key, app)
    record = app.records.new(
        args.key, state="done", question=_text(args.question), answer=_text(args.answer),
        model=_opt_text(args.model), latency_ms=args.latency, tags=args.tags or [],
        session=None if args.session is None else args.session.decode("latin-1"),
        meta=args.meta, served_from="llm")
    _save_record(ctx, args.key, app, record)
    metrics.records.add(created=1)
    return record["id"]


def stats(ctx: int, args: Args):
    return _app(ctx, args.key).records.stats(args.interval)


def result_set(ctx: int, args: Args):
    app = _app(ctx, args.key)
    try:
        payload = json.loads(args.record)
        if not isinstance(payload, dict):
            raise ValueError
        vector = payload.pop("vector", None)
        vector = None if vector is None else decode_vector(vector)
        question_vectors = payload.pop("question_vectors", None)
        if question_vectors is not None:
            question_vectors = decode_vectors(question_vectors)
    except (ValueError, TypeError):
        raise LLMError("the record must be a JSON object") from None
    app.records.put(check_record(payload), vector, question_vectors)
    keys.replicate_verbatim(ctx)
    keys.notify(ctx, b"llm.result", args.key)
    return 1


def _opt_text(value: bytes | None) -> str | None:
    return None if value is None else _text(value)


def _tags(arg: bytes) -> list[str]:
    tags = [tag.strip() for tag in arg.decode("utf-8", "replace").split(",")]
    if not all(tags):
        raise ValueError("must be comma-separated non-empty tags")
    return tags


def chat_log(ctx: int, args: Args):
    app = _chat_app(ctx, args.key)
    messages = parse_messages(args.messages)
    session = app.session(args.session or b"")
    total = len(session.messages) + len(messages)
    for name in ("unsummarised", "summaries"):
        value = getattr(args, name)
        if name == "unsummarised" and value is not None and value > total:
            raise LLMError(f"--UNSUMMARISED must be at most {total}, the messages in the session")
    session = app.log_messages(args.session or b"", messages, args.unsummarised, args.summaries)
    keys.replicate_verbatim(ctx)
    keys.notify(ctx, b"llm.chat-log", args.key)
    return len(session.messages)


def history(ctx: int, args: Args):
    app = keys.read(ctx, args.key, App)
    if app is None:
        return []
    if app.kind != "chat":
        raise LLMError(f"the app at key {shown(args.key)} is not a chat app")
    session = app.session(args.session or b"")
    return [[m["role"].encode(), m["content"].encode()] for m in session.messages]


def _chat_app(ctx: int, key: bytes) -> App:
    app = keys.read(ctx, key, App)
    if app is None:
        raise LLMError(f"no app at key {shown(key)}")
    if app.kind != "chat":
        raise LLMError(f"the app at key {shown(key)} is not a chat app")
    return app


# ---- listing ------------------------------------------------------------------

def list_keys(ctx: int, args: Args):
    readable = keys.read_permission(ctx)
    found = []
    for key, value in keys.scan(ctx):
        kind = value.kind if type(value) is App else _KIND_OF[type(value)]
        if ((args.type is None or kind == args.type) and
                (args.match is None or fnmatch.fnmatchcase(key, args.match)) and readable(key)):
            found.append([key, kind.encode()])
    found.sort()
    return found[:args.count]


def _pattern(arg: bytes) -> bytes:
    # fnmatch compiles a pattern in time quadratic in its brackets: a long one
    # would hold Redis' main thread for minutes.
    if len(arg) > _MAX_PATTERN:
        raise ValueError(f"must be at most {_MAX_PATTERN} bytes, got {len(arg)}")
    return arg


_MAX_PATTERN = 1024


def _search_text(arg: bytes) -> bytes:
    if not arg or len(arg) > _MAX_PATTERN:
        raise ValueError(f"must be 1 to {_MAX_PATTERN} bytes, got {len(arg)}")
    return arg


_KIND_OF = {LLMModel: "llm", VectorStore: "vector-store"}  # an app's is its kind
KINDS = ("llm", "vector-store", "app", "search", "chat")


# ---- debugging (tests only) -------------------------------------------------

def debug(ctx: int, args: Args):
    """Testing aids. SPIN: keep --THREADS Python threads busy in the interpreter
    for --SECONDS. SLEEP: block this client while a worker sleeps --SECONDS
    (--TIMEOUT ms gives nil at the deadline). RAISE: fail unexpectedly."""
    if args.subcommand == "raise":
        raise RuntimeError("LLM.DEBUG RAISE")
    if args.subcommand == "sleep":
        def job(locked):
            time.sleep(args.seconds)
            return "OK"
        pool.workers.run(ctx, job, args.timeout)
        return keys.BLOCKED
    deadline = time.monotonic() + args.seconds

    def spin():
        n = 0
        while time.monotonic() < deadline:
            n += 1

    for _ in range(args.threads):
        threading.Thread(target=spin, name="llm-debug-spin", daemon=True).start()
    return "OK"


# ---- the table --------------------------------------------------------------

_EMBEDDING = (Option("--EMBEDDING", embedding_text), Option("--EMBEDDING-BLOB", embedding_blob),
              Option("--EMBEDDING-MODEL", model_name))
_KEY = (("key", None),)
_KEY_ID = (("key", None), ("id", uint64))

_NX_XX = (Option("--NX"), Option("--XX"))
_LLM_OPTION = Option("--LLM", bytes, required=True)
_STORE_OPTION = Option("--VECTOR-STORE", bytes, required=True)
_TIMEOUT = Option("--TIMEOUT", integer(0, 2**31 - 1), default=0)
_RECORDS = (Option("--RECORD", integer(0, 1_000_000), default=10000), Option("--REVIEW", json_object))
_SCORE = decimal(0, 100)

COMMANDS = [
    Command("LLM.CREATE-LLM", create_llm, "write deny-oom", -2, (KeySpec(KEY_OW | KEY_UPDATE),),
            Syntax(_KEY, [*_NX_XX, Option("--TYPE", choice(*LLM_TYPES)),
                          Option("--PARAMS", json_object)],
                   exclusive=[("--NX", "--XX")]),
            "Create an LLM: an OpenAI, Azure OpenAI or local llama.cpp model and its params",
            secret_options=(b"--PARAMS",)),
    Command("LLM.CREATE-APP", create_app, "write deny-oom", -4,
            (KeySpec(KEY_OW | KEY_UPDATE), KeySpec(KEY_RO, keyword="--LLM")),
            Syntax(_KEY, [*_NX_XX, _LLM_OPTION, Option("--PROMPT", bytes), *_RECORDS],
                   exclusive=[("--NX", "--XX")]),
            "Create an app: a prompt template run by an LLM"),
    Command("LLM.CREATE-SEARCH", create_search, "write deny-oom", -6,
            (KeySpec(KEY_OW | KEY_UPDATE), KeySpec(KEY_RO, keyword="--LLM"),
             KeySpec(KEY_RO, keyword="--VECTOR-STORE")),
            Syntax(_KEY, [*_NX_XX, _LLM_OPTION, _STORE_OPTION, Option("--K", integer(1, 100), default=3),
                          Option("--PROMPT", bytes), *_RECORDS],
                   exclusive=[("--NX", "--XX")]),
            "Create a search app: answers questions from the K nearest items of a vector store"),
    Command("LLM.CREATE-CHAT", create_chat, "write deny-oom", -6,
            (KeySpec(KEY_OW | KEY_UPDATE), KeySpec(KEY_RO, keyword="--LLM"),
             KeySpec(KEY_RO, keyword="--VECTOR-STORE")),
            Syntax(_KEY, [*_NX_XX, _LLM_OPTION, _STORE_OPTION, Option("--HISTORY", json_object),
                          Option("--PROMPT", bytes), *_RECORDS],
                   exclusive=[("--NX", "--XX")]),
            "Create a chat app whose long history is summarised into a vector store"),
    Command("LLM.RUN", run, "write deny-oom", -2, (KeySpec(KEY_RW | KEY_UPDATE),),
            Syntax(_KEY, [Option("--VARS", vars_object), Option("--PARAMS", json_object),
                          Option("--VERBOSE"), _TIMEOUT, Option("--SESSION", bytes),
                          Option("--ASYNC"), Option("--TAGS", _tags)],
                   trailing="optional", trailing_name="input", trailing_convert=text_bytes),
            "Run an app with an input and template variables; returns the completion",
            complexity="O(1) plus the model call"),
    Command("LLM.RESULT", result, "readonly", 3, (KeySpec(KEY_RO | KEY_ACCESS),), Syntax(_KEY_ID),
            "A recorded result of an app, as field/value pairs; nil for an unknown id"),
    Command("LLM.RESULTS", results, "readonly", -2, (KeySpec(KEY_RO | KEY_ACCESS),),
            Syntax(_KEY, [Option("--STATE", choice(*STATES)), Option("--REVIEWED"),
                          Option("--UNREVIEWED"), Option("--MODEL", bytes), Option("--TAG", bytes),
                          Option("--SESSION", bytes), Option("--MIN-SCORE", _SCORE),
                          Option("--MAX-SCORE", _SCORE), Option("--SINCE", integer(0, 2**62)),
                          Option("--UNTIL", integer(0, 2**62)), Option("--TEXT", _search_text),
                          Option("--COUNT", integer(1, 10000), default=10),
                          Option("--OFFSET", integer(0, 2**31), default=0)],
                   exclusive=[("--REVIEWED", "--UNREVIEWED")]),
            "Recorded results of an app matching filters, newest first", complexity="O(N)"),
    Command("LLM.REVIEW", review, "write deny-oom", -7, (KeySpec(KEY_RW | KEY_UPDATE),),
            Syntax(_KEY_ID, [Option("--ANSWER", text_bytes, required=True),
                             Option("--SCORE", _SCORE, required=True), Option("--NOTES", text_bytes),
                             Option("--ALSO", text_bytes, repeat=True),
                             Option("--NEVER", text_bytes, repeat=True)]),
            "Review a result: the expert's answer, a 0-100 confidence score, and the questions "
            "it also answers (--ALSO) or must never be served for (--NEVER)"),
    Command("LLM.RECORD", record_result, "write deny-oom", -6, (KeySpec(KEY_RW | KEY_INSERT),),
            Syntax(_KEY, [Option("--QUESTION", text_bytes, required=True),
                          Option("--ANSWER", text_bytes, required=True), Option("--MODEL", bytes),
                          Option("--LATENCY", integer(0, 2**31)), Option("--TAGS", _tags),
                          Option("--SESSION", bytes), Option("--META", json_object)]),
            "Record a question and answer computed elsewhere (an agent's result); returns its id"),
    Command("LLM.STATS", stats, "readonly", -2, (KeySpec(KEY_RO | KEY_ACCESS),),
            Syntax(_KEY, [Option("--INTERVAL", integer(1000, 2**40))]),
            "Counts by state and review band, mean score, per model figures, and counts over time",
            complexity="O(N)"),
    Command("LLM.RESULT-SET", result_set, "write deny-oom", 3, (KeySpec(KEY_RW | KEY_UPDATE),),
            Syntax(_KEY, trailing="required", trailing_name="record", trailing_convert=record_json),
            "Store a whole record (how records are replicated and rewritten to the AOF)"),
    Command("LLM.CHAT-LOG", chat_log, "write deny-oom", -3, (KeySpec(KEY_RW | KEY_INSERT),),
            Syntax(_KEY, [Option("--SESSION", bytes), Option("--UNSUMMARISED", integer(0, 2**31)),
                          Option("--SUMMARIES", integer(0, 2**31))],
                   trailing="required", trailing_name="messages"),
            "Append messages to a chat session (how chat turns are replicated)",
            complexity="O(N) with N the messages given"),
    Command("LLM.HISTORY", history, "readonly", -2, (KeySpec(KEY_RO | KEY_ACCESS),),
            Syntax(_KEY, [Option("--SESSION", bytes)]),
            "The recent messages of a chat session, oldest first", complexity="O(N)"),
    Command("LLM.CREATE-VECTOR-STORE", create_vector_store, "write deny-oom", -2,
            (KeySpec(KEY_OW | KEY_UPDATE), KeySpec(KEY_RO, keyword="--LLM")),
            Syntax(_KEY, [Option("--NX"), Option("--XX"), Option("--TYPE", choice("hnsw")),
                          Option("--LLM", bytes), Option("--PARAMS", json_value)],
                   exclusive=[("--NX", "--XX")]),
            "Create (or with --XX re-create, emptied) an HNSW vector store"),
    Command("LLM.ADD", add, "write deny-oom", -3, (KeySpec(KEY_RW | KEY_UPDATE),),
            Syntax(_KEY, [Option("--ID", uint64), *_EMBEDDING, Option("--META", json_object), _TIMEOUT],
                   trailing="required", exclusive=[("--EMBEDDING", "--EMBEDDING-BLOB")],
                   trailing_convert=data_bytes),
            "Add an item (data, embedding, meta) to a vector store; returns its id",
            complexity="O(log N)"),
    Command("LLM.GET", get, "readonly", 3, (KeySpec(KEY_RO | KEY_ACCESS),), Syntax(_KEY_ID),
            "Get the data, embedding and meta of an item"),
    Command("LLM.REM", rem, "write", 3, (KeySpec(KEY_RW | KEY_DELETE),), Syntax(_KEY_ID),
            "Remove an item from a vector store", complexity="O(log N)"),
    Command("LLM.SIZE", size, "readonly fast", 2, (KeySpec(KEY_RO),), Syntax(_KEY),
            "Count the items of a vector store"),
    Command("LLM.KNN", knn, "readonly", -2, (KeySpec(KEY_RO | KEY_ACCESS),),
            Syntax(_KEY, [Option("--K", integer(1, 10000), default=10), *_EMBEDDING,
                          Option("--EF", integer(1, 100000)), Option("--FILTER", json_object),
                          Option("--WITHDATA"), _TIMEOUT],
                   trailing="optional", trailing_name="query", trailing_convert=text_bytes,
                   exclusive=[("--EMBEDDING", "--EMBEDDING-BLOB")]),
            "Find the K items nearest to an embedding", complexity="O(log N)"),
    Command("LLM.LIST", list_keys, "readonly", -1, (),
            Syntax((), [Option("--TYPE", choice(*KINDS)), Option("--MATCH", _pattern),
                        Option("--COUNT", integer(1, 100_000), default=1000)]),
            "The LLMs, vector stores and apps of this database that the calling user may read, "
            "as [key, type] pairs sorted by key", complexity="O(N) with N the keys of the database"),
    Command("LLM.DEBUG", debug, "admin", -2, (),
            Syntax((("subcommand", choice("spin", "sleep", "raise")),),
                   [Option("--THREADS", integer(1, 64), default=1),
                    Option("--SECONDS", decimal(0, 3600), default=1),
                    Option("--TIMEOUT", integer(0, 2**31 - 1), default=0)]),
            "Testing aids: SPIN --THREADS n --SECONDS s | SLEEP --SECONDS s [--TIMEOUT ms] | RAISE",
            debug=True),
]

COMMANDS_BY_NAME = {command.name.lower().encode(): command for command in COMMANDS}
