"""Applications: the ``llm-appli`` data type, prompt templates, and what
LLM.RUN does for a simple, a search and a chat app.

An ``App`` names its LLM key (and its vector store key, for search and chat
apps) and holds its prompt template; a chat app also holds the recent
messages of each session. Templates are jinja2, rendered in a sandbox with
undefined variables as errors.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field

import jinja2
import jinja2.meta
import jinja2.sandbox

from redis_llm.errors import LLMError
from redis_llm.records import DEFAULT_LIMIT, Records, encode_vector

ENCODING_VERSION = 1
KINDS = ("app", "search", "chat")
MAX_PROMPT = 256 << 10        # bytes of template source
MAX_RENDERED = 4 << 20        # characters a rendering may produce
MAX_LOOP_STEPS = 1_000_000    # range() elements one rendering may create

DEFAULT_SEARCH_PROMPT = (
    'Please answer the following question based on the given context.\n'
    'Context: """\n{{context}}\n"""\nQuestion: """\n{{question}}\n"""\nAnswer:')
DEFAULT_CHAT_PROMPT = (
    'You are a friendly chatbot. The following is a summary of parts of your chat history '
    'with user: """\n{{history}}\n"""')
DEFAULT_HISTORY = {
    "summary_cnt": 20,
    "summary_ctx_cnt": 1,
    "summary_prompt": (
        "Give a concise and comprehensive summary of the given conversation (in JSON format). "
        "The summary should capture the main points and supporting details.\n"
        'Conversation: """\n{{conversation}}\n"""\nSummary:'),
    "msg_ctx_cnt": 10,
}
_HISTORY_LIMITS = {"summary_cnt": 10000, "summary_ctx_cnt": 100, "msg_ctx_cnt": 10000}

_budget = threading.local()


class _Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """jinja2's sandbox, plus bounds on what one rendering may cost: a
    template must not be able to exhaust the server's memory or a worker."""

    intercepted_binops = frozenset(["*", "**", "+"])

    def call_binop(self, context, operator, left, right):
        if operator == "**" and _is_number(left) and _is_number(right) and \
                abs(right) > 64 and abs(left) > 1:
            raise jinja2.exceptions.SecurityError("power too large")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and _is_number(times) and \
                        len(seq) * times > MAX_RENDERED:
                    raise jinja2.exceptions.SecurityError("repetition too large")
        result = super().call_binop(context, operator, left, right)
        if isinstance(result, (str, list, tuple)) and len(result) > MAX_RENDERED:
            raise jinja2.exceptions.SecurityError("value too large")
        return result


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bounded_range(*args):
    steps = len(range(*args))
    _budget.steps = getattr(_budget, "steps", 0) + steps
    if _budget.steps > MAX_LOOP_STEPS:
        raise jinja2.exceptions.SecurityError(f"range() beyond {MAX_LOOP_STEPS} elements")
    return range(*args)


# optimized=False: the optimizer would evaluate constant expressions when a
# template is created, on Redis' main thread and outside the sandbox's checks.
_env = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
                optimized=False)
_env.globals["range"] = _bounded_range


class Template:
    """A prompt template: ``{{var}}`` placeholders, jinja2 syntax, sandboxed."""

    def __init__(self, source: str, what: str = "prompt"):
        if len(source.encode()) > MAX_PROMPT:
            raise LLMError(f"{what} is longer than {MAX_PROMPT} bytes")
        self.source = source
        try:
            parsed = _env.parse(source)
            self.variables = jinja2.meta.find_undeclared_variables(parsed)
            self._template = _env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise LLMError(f"{what} template error on line {exc.lineno}: {exc.message}") from None
        except (jinja2.TemplateError, ValueError, RecursionError, MemoryError) as exc:
            raise LLMError(f"{what} template error: {type(exc).__name__}") from None

    def render(self, variables: dict) -> str:
        """Render on a worker thread (never Redis' main thread): a template may
        loop, within the bounds of the sandbox."""
        _budget.steps = 0
        try:
            out, size = [], 0
            for chunk in self._template.generate(variables):
                size += len(chunk)
                if size > MAX_RENDERED:
                    raise LLMError(f"the rendered prompt is longer than {MAX_RENDERED} characters")
                out.append(chunk)
            return "".join(out)
        except jinja2.UndefinedError as exc:
            raise LLMError(f"template variable error: {exc.message}") from None
        except jinja2.exceptions.SecurityError as exc:
            raise LLMError(f"template refused by the sandbox: {exc}") from None
        except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError,
                AttributeError, RecursionError, OverflowError) as exc:
            raise LLMError(f"template error: {type(exc).__name__}: {exc}") from None


@dataclass
class Session:
    """One conversation of a chat app: its recent messages (newest last),
    how many of them are not summarised yet, and how many summaries exist."""

    messages: list[dict] = field(default_factory=list)
    unsummarised: int = 0
    summaries: int = 0

    def append(self, messages: list[dict], unsummarised: int | None, summaries: int | None,
               keep: int) -> None:
        """Append messages, then set the counters (by default: the new messages
        are unsummarised) and keep the newest ``keep`` messages, or more while
        they wait to be summarised."""
        self.messages.extend(messages)
        self.unsummarised = min(len(self.messages), self.unsummarised + len(messages)
                                if unsummarised is None else unsummarised)
        if summaries is not None:
            self.summaries = summaries
        del self.messages[:max(0, len(self.messages) - max(keep, self.unsummarised))]


class App:
    """The value of an app key."""

    type_tag = b"llm-app"

    def __init__(self, kind: str, llm: bytes, prompt: str | None = None, store: bytes | None = None,
                 k: int = 3, history: dict | None = None, record_limit: int = DEFAULT_LIMIT,
                 review: dict | None = None):
        if kind not in KINDS:
            raise LLMError(f"unknown app kind {kind!r}")
        # Checked here too for values read back from RDB or RESTORE.
        if not isinstance(llm, bytes) or (kind != "app") != isinstance(store, bytes):
            raise LLMError("an app names its LLM key, and a search or chat app its vector store key")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 100:
            raise LLMError("--K must be an integer from 1 to 100")
        self.kind = kind
        self.llm = llm
        self.store = store
        self.k = k
        default = {"app": "", "search": DEFAULT_SEARCH_PROMPT, "chat": DEFAULT_CHAT_PROMPT}[kind]
        self.template = Template(default if prompt is None else prompt)
        if kind == "search":
            missing = {"context", "question"} - self.template.variables
            if missing:
                raise LLMError("a search app's prompt must use {{context}} and {{question}}; "
                               f"missing: {', '.join(sorted(missing))}")
        self.history = _history(history) if kind == "chat" else None
        self.summary_template = Template(self.history["summary_prompt"], "summary_prompt") \
            if self.history else None
        self.sessions: dict[bytes, Session] = {}
        self.records = Records(record_limit, review)

    @property
    def prompt(self) -> str:
        return self.template.source

    def session(self, sid: bytes) -> Session:
        return self.sessions.get(sid) or Session()

    def log_messages(self, sid: bytes, messages: list[dict], unsummarised: int | None = None,
                     summaries: int | None = None) -> Session:
        """Append messages to a session (see Session.append)."""
        session = self.sessions.setdefault(sid, Session())
        if not self.history["summary_cnt"]:
            unsummarised = 0  # nothing waits for a summary that never comes
        session.append(messages, unsummarised, summaries, self.history["msg_ctx_cnt"])
        return session

    # ---- persistence (called by the C shim) ----
    def _state(self) -> dict:
        return {"kind": self.kind, "llm": _text(self.llm), "store": _text(self.store),
                "prompt": self.prompt, "k": self.k, "history": self.history,
                "records": self.records.state(),
                "sessions": {_text(sid): [s.messages, s.unsummarised, s.summaries]
                             for sid, s in sorted(self.sessions.items())}}

    def _json(self) -> bytes:
        return json.dumps(self._state(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode()

    def dump(self) -> list:
        return [self.type_tag, self._json()]

    @classmethod
    def restore(cls, encver: int, chunks: list) -> App:
        if encver > ENCODING_VERSION or len(chunks) != 2:
            raise ValueError("unsupported app encoding")
        try:
            state = json.loads(bytes(chunks[1]))
            app = cls(state["kind"], _bytes(state["llm"]), state["prompt"], _bytes(state["store"]),
                      state["k"], state["history"])
            if "records" in state:
                app.records = Records.from_state(state["records"])
            for sid, (messages, unsummarised, summaries) in state["sessions"].items():
                if not all(_is_message(m) for m in messages) or not _count(unsummarised) or \
                        not _count(summaries) or unsummarised > len(messages):
                    raise ValueError("bad chat session")
                app.sessions[_bytes(sid)] = Session(messages, unsummarised, summaries)
        except (LLMError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"corrupt app: {exc}") from None
        return app

    def create_command(self, key: bytes) -> list[bytes]:
        """The LLM.CREATE-* command that makes this app (without sessions)."""
        name = {"app": b"LLM.CREATE-APP", "search": b"LLM.CREATE-SEARCH",
                "chat": b"LLM.CREATE-CHAT"}[self.kind]
        command = [name, key, b"--LLM", self.llm, b"--PROMPT", self.prompt.encode()]
        if self.kind != "app":
            command += [b"--VECTOR-STORE", self.store]
        if self.kind == "search":
            command += [b"--K", b"%d" % self.k]
        if self.kind == "chat":
            command += [b"--HISTORY", _compact(self.history)]
        command += [b"--RECORD", b"%d" % self.records.limit, b"--REVIEW", _compact(self.records.review)]
        return command

    def aof_commands(self, key: bytes):
        yield self.create_command(key)
        for sid, session in sorted(self.sessions.items()):
            yield chat_log_command(key, sid, session, session.messages)
        for record in self.records.items.values():
            yield result_set_command(key, record, self.records.vectors.get(record["id"]))

    def memory_usage(self) -> int:
        return 1024 + 2 * len(self._json())

    def digest(self) -> list[bytes]:
        return [self.type_tag, self._json()]


def result_set_command(key: bytes, record: dict, vector=None) -> list[bytes]:
    """The LLM.RESULT-SET command that stores ``record``: how records are
    replicated and rewritten to the AOF."""
    payload = dict(record)
    if vector is not None:
        payload["vector"] = encode_vector(vector)
    return [b"LLM.RESULT-SET", key, _compact(payload)]


def chat_log_command(key: bytes, sid: bytes, session: Session, messages: list[dict]) -> list[bytes]:
    """The LLM.CHAT-LOG command that appends ``messages`` and leaves the
    session's counters as ``session`` has them: how a chat turn is replicated."""
    return [b"LLM.CHAT-LOG", key, b"--SESSION", sid, b"--UNSUMMARISED", b"%d" % session.unsummarised,
            b"--SUMMARIES", b"%d" % session.summaries, _compact(messages)]


def _history(given: dict | None) -> dict:
    history = copy.deepcopy(DEFAULT_HISTORY)
    for name, value in (given or {}).items():
        if name not in history:
            raise LLMError(f"unknown --HISTORY field {name!r}; known: {', '.join(DEFAULT_HISTORY)}")
        if name == "summary_prompt":
            if not isinstance(value, str):
                raise LLMError("--HISTORY field 'summary_prompt' must be a string")
        elif isinstance(value, bool) or not isinstance(value, int) or \
                not 0 <= value <= _HISTORY_LIMITS[name]:
            raise LLMError(f"--HISTORY field {name!r} must be an integer from 0 to "
                           f"{_HISTORY_LIMITS[name]}")
        history[name] = value
    if history["summary_cnt"] and \
            "conversation" not in Template(history["summary_prompt"], "summary_prompt").variables:
        raise LLMError("--HISTORY field 'summary_prompt' must use {{conversation}}")
    return history


def parse_messages(raw: bytes) -> list[dict]:
    """A JSON array of {"role": "user"|"assistant"|"system", "content": text}."""
    try:
        messages = json.loads(raw)
    except ValueError:
        raise LLMError("messages must be a JSON array") from None
    if not isinstance(messages, list) or not all(_is_message(m) for m in messages):
        raise LLMError('messages must be a JSON array of {"role": "user"|"assistant"|"system", '
                       '"content": "..."}')
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def _is_message(m) -> bool:
    return isinstance(m, dict) and set(m) == {"role", "content"} and \
        m["role"] in ("user", "assistant", "system") and isinstance(m["content"], str)


def conversation_text(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# Keys and session ids are binary-safe bytes; JSON holds them as latin-1 text.
def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else value.encode("latin-1")
