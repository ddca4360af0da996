"""Applications: the ``llm-appli`` data type, prompt templates, and what
LLM.RUN does for a simple, a search and a chat app.

An ``App`` names its LLM key (and its vector store key, for search and chat
apps) and holds its prompt template; a chat app also holds the recent
messages of each session. Templates are jinja2, rendered in a sandbox with
undefined variables as errors.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
import string
import threading
import time
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from dataclasses import dataclass, field

import jinja2
import jinja2.compiler
import jinja2.meta
import jinja2.nodes
import jinja2.runtime
import jinja2.sandbox
import jinja2.utils
import jinja2.visitor
import markupsafe

from redis_llm.errors import LLMError
from redis_llm.records import DEFAULT_LIMIT, Records, encode_vector, encode_vectors

ENCODING_VERSION = 1
KINDS = ("app", "search", "chat")
MAX_PROMPT = 64 << 10         # bytes of template source (compiled on Redis' main thread)
MAX_RENDERED = 4 << 20        # characters a rendering, or any value it makes, may have
MAX_LOOP_STEPS = 1_000_000    # range() elements one rendering may create
MAX_RENDER_SECONDS = 2.0      # how long one rendering may hold a worker
MAX_INT_BITS = 1 << 16        # integers a template computes (about 20,000 digits)

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

_budget = threading.local()   # per worker thread: range() steps and the deadline of a rendering


class _RenderTimeout(BaseException):
    """A rendering ran past its deadline. A BaseException: jinja2's runtime
    catches Exception here and there, never this."""


def _check_deadline() -> None:
    """Called by every call a template makes (macros, methods, loop(...)):
    with the loops' own checks (Sandbox.budgeted), whatever a template does
    again and again passes here."""
    if time.monotonic() > getattr(_budget, "deadline", math.inf):
        raise _RenderTimeout


def _refuse(message: str):
    raise jinja2.exceptions.SecurityError(message)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rendered_size(value, limit: int = MAX_RENDERED) -> int:
    """About how many characters str(value) has, counting every reference of a
    repeated element, and more than ``limit`` as soon as that is certain: a
    list holding one long string a million times is small in memory but not
    as text."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 3 + 2   # decimal digits, a little over
    if isinstance(value, jinja2.utils.Namespace):
        value = value._Namespace__attrs     # its repr shows them all
    if isinstance(value, dict):
        value = [item for pair in value.items() for item in pair]
    elif isinstance(value, (KeysView, ValuesView, ItemsView)):
        value = list(value)
    if not isinstance(value, (list, tuple, set, frozenset)):
        return 32
    total = 2
    for item in value:
        total += _rendered_size(item, limit - total) + 2
        if total > limit:
            break
    return total


def _check_size(value, what: str = "value"):
    """value, if its text fits in MAX_RENDERED characters."""
    kind = type(value)
    if kind is str or kind is markupsafe.Markup or kind is bytes:   # most values: fast
        if len(value) > MAX_RENDERED:
            _refuse(f"a {what} longer than {MAX_RENDERED} characters")
        return value
    if kind is int and value.bit_length() > MAX_INT_BITS:
        _refuse(f"a number larger than {MAX_INT_BITS} bits")
    if kind is int or kind is float or kind is bool or value is None:
        return value
    if _rendered_size(value) > MAX_RENDERED:
        _refuse(f"a {what} longer than {MAX_RENDERED} characters")
    return value


def _check_width(number, what: str) -> None:
    if _is_number(number) and abs(number) > MAX_RENDERED:
        _refuse(f"{what} {number} is above {MAX_RENDERED}")


_PERCENT_SPEC = re.compile(r"%(\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.S)


def _check_percent(template, args) -> None:
    """Refuse a printf-style formatting whose widths, precisions and values
    would make more than MAX_RENDERED characters ('%(a)s' ten thousand times
    counts its value ten thousand times)."""
    if not isinstance(template, str):
        return
    values = list(args) if isinstance(args, tuple) else [args]
    total, position = len(template), 0
    for key, width, precision, kind in _PERCENT_SPEC.findall(template):
        if kind == "%":
            continue
        for number in (width, precision):
            if number == "*":
                number = values[position] if position < len(values) else 0
                position += 1
            number = int(number) if isinstance(number, str) and number else number
            _check_width(number, "a format width")
            total += number if _is_number(number) else 0
        if key and isinstance(args, dict):
            total += _rendered_size(args.get(key[1:-1]))
        elif position < len(values):
            total += _rendered_size(values[position])
        position += 1
        if total > MAX_RENDERED:
            _refuse(f"a formatted string longer than {MAX_RENDERED} characters")


def _checked_method_call(method, args: tuple, kwargs: dict) -> tuple:
    """The arguments of a call, checked: bounds on the builtin str and bytes
    methods that can multiply a string (a generator given to join() becomes a
    list, to be measured)."""
    owner = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "")
    if isinstance(owner, int) and not isinstance(owner, bool) and name == "to_bytes":
        _check_width(args[0] if args else kwargs.get("length", 1), "to_bytes() length")
    if not isinstance(owner, (str, bytes)):
        return args
    if name in ("center", "ljust", "rjust", "zfill"):
        _check_width(args[0] if args else kwargs.get("width", 0), f"{name}() width")
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        tabs = owner.count("\t" if isinstance(owner, str) else b"\t")
        if _is_number(tabsize) and tabs * tabsize > MAX_RENDERED:
            _refuse(f"expandtabs() result longer than {MAX_RENDERED} characters")
    elif name == "replace" and len(args) >= 2:
        _check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else -1)
    elif name == "join" and args:
        items = args[0] if isinstance(args[0], (list, tuple)) else list(args[0])
        _check_join(owner, items)
        args = (items, *args[1:])
    elif name in ("translate", "maketrans"):
        _refuse(f"{name}() is not available in templates")
    return args


def _check_replace(text, old, new, count=-1) -> None:
    if not isinstance(text, (str, bytes)) or not isinstance(old, type(text)) or \
            not isinstance(new, type(text)) or len(new) <= len(old):
        return
    times = text.count(old) if old else len(text) + 1
    if _is_number(count) and count >= 0:
        times = min(times, count)
    if len(text) + times * (len(new) - len(old)) > MAX_RENDERED:
        _refuse(f"replace() result longer than {MAX_RENDERED} characters")


def _check_join(separator, items: list | tuple) -> None:
    if _rendered_size(items) + len(separator) * len(items) > MAX_RENDERED:
        _refuse(f"join() result longer than {MAX_RENDERED} characters")


def _bounded_iter(items):
    """items, refused once what they add up to is longer than MAX_RENDERED
    characters: what map(), select() and the like yield is measured too,
    whoever turns it into a list or a string."""
    total = 0
    for item in items:
        total += _rendered_size(item) + 2
        if total > MAX_RENDERED:
            _refuse(f"a sequence longer than {MAX_RENDERED} characters")
        yield item


_MAX_BATCH = 100_000   # batch() and slice() counts


def _check_filter(name: str, value, args: tuple, kwargs: dict) -> None:
    """What a filter must not be given: widths and counts that make more
    than MAX_RENDERED characters."""
    def arg(i, key, default=None):
        return args[i] if len(args) > i else kwargs.get(key, default)

    if name in ("center", "truncate", "wordwrap"):
        _check_width(arg(0, "length" if name == "truncate" else "width"), f"{name}() width")
    if name == "indent":
        width = arg(0, "width", 4)
        per_line = len(width) if isinstance(width, str) else width
        if _is_number(per_line) and (str(value).count("\n") + 1) * per_line > MAX_RENDERED:
            _refuse(f"indent() result longer than {MAX_RENDERED} characters")
    if name == "wordwrap":
        wrapstring = arg(2, "wrapstring")
        if isinstance(wrapstring, str) and len(str(value)) * len(wrapstring) > MAX_RENDERED:
            _refuse(f"wordwrap() result longer than {MAX_RENDERED} characters")
    if name in ("batch", "slice"):
        # Either may make this many lists, or lists this long.
        count = arg(0, "linecount" if name == "batch" else "slices")
        if _is_number(count) and count > _MAX_BATCH:
            _refuse(f"{name}() count {count} is above {_MAX_BATCH}")
    if name == "replace" and len(args) >= 2:
        _check_replace(str(value), args[0], args[1], arg(2, "count", -1))
    if name == "join":
        _check_join(str(arg(0, "d", "")), value)
    if name == "format":
        _check_percent(value, kwargs or tuple(args))
    attribute = kwargs.get("attribute")
    if isinstance(attribute, str) and any(part.startswith("__") for part in attribute.split(".")):
        _refuse(f"attribute {attribute!r} is unsafe")


def _bounded_filters(filters: dict) -> dict:
    """jinja2's filters, each checking its value, arguments and result."""
    def wrap(name, func):
        # The value comes after the environment or context that some filters take.
        position = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0

        @functools.wraps(func)
        def bounded(*args, **kwargs):
            if len(args) > position:
                value = args[position]
                if name == "join" and not isinstance(value, (list, tuple, str)):
                    value = list(value)   # measured as a list
                    args = (*args[:position], value, *args[position + 1:])
                _check_size(value)
                _check_filter(name, value, args[position + 1:], kwargs)
            result = func(*args, **kwargs)
            if isinstance(result, Iterator) and not isinstance(result, (str, bytes)):
                return _bounded_iter(result)
            return _check_size(result)
        return bounded

    return {name: wrap(name, func) for name, func in filters.items()}


class _BoundedFormatter(jinja2.sandbox.SandboxedFormatter):
    """str.format in templates: the sandbox's field checks, plus bounds on
    widths and on the text all fields of one call add up to."""

    def vformat(self, format_string, args, kwargs):
        self._total = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value, format_spec: str):
        for number in re.findall(r"\d+", format_spec):
            _check_width(int(number), "a format width")
        _check_size(value)
        text = super().format_field(value, format_spec)
        self._total += len(text)
        if self._total > MAX_RENDERED:
            _refuse(f"a formatted string longer than {MAX_RENDERED} characters")
        return text


class _BoundedEscapeFormatter(_BoundedFormatter, jinja2.sandbox.SandboxedEscapeFormatter):
    pass


class _CodeGenerator(jinja2.compiler.CodeGenerator):
    """jinja2's compiler, but nothing in a template runs while it compiles
    (Redis' main thread, LLM.CREATE-*), and everything turned into text
    passes a size check first."""

    def _output_child_to_const(self, node, frame, finalize):
        # jinja2 evaluates constant output at compile time even unoptimized:
        # '{{ "%999999999d"|format(1) }}' built a gigabyte string in LLM.CREATE-APP.
        if not isinstance(node, (jinja2.nodes.TemplateData, jinja2.nodes.Const)):
            raise jinja2.nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)

    def _output_child_pre(self, node, frame, finalize):
        super()._output_child_pre(node, frame, finalize)
        self.write("environment.checked_output(")

    def _output_child_post(self, node, frame, finalize):
        self.write(")")
        super()._output_child_post(node, frame, finalize)

    def visit_For(self, node, frame):
        # Every loop steps through Sandbox.budgeted, which keeps the deadline.
        budgeted = jinja2.nodes.EnvironmentAttribute("budgeted")
        if not (isinstance(node.iter, jinja2.nodes.Call) and node.iter.node == budgeted):
            node.iter = jinja2.nodes.Call(budgeted, [node.iter], [], None, None, lineno=node.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node, frame):
        if frame.eval_ctx.volatile:
            escape = "context.eval_ctx.autoescape"
        else:
            escape = "True" if frame.eval_ctx.autoescape else "False"
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(f"), {escape})")

    def visit_List(self, node, frame):
        self.write("environment.checked_literal(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node, frame):
        self.write("environment.checked_literal(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Tuple(self, node, frame):
        if node.ctx != "load":   # an assignment target
            return super().visit_Tuple(node, frame)
        self.write("environment.checked_literal(")
        super().visit_Tuple(node, frame)
        self.write(")")


class _VariableFinder(jinja2.meta.TrackingCodeGenerator, _CodeGenerator):
    """jinja2.meta.find_undeclared_variables without the optimizer, which
    evaluates constant filters (on Redis' main thread) and takes seconds on
    a chain of a hundred filters."""

    def __init__(self, environment):
        jinja2.compiler.CodeGenerator.__init__(self, environment, "<introspection>",
                                               "<introspection>", optimized=False)
        self.undeclared_identifiers: set[str] = set()


class _Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """jinja2's sandbox, plus bounds on what one rendering may cost: a
    template must not be able to exhaust the server's memory or a worker.
    Every value a template makes is at most MAX_RENDERED characters as text
    (literals, operators, filters, method calls), numbers at most
    MAX_INT_BITS bits, and the rendering at most MAX_RENDER_SECONDS."""

    intercepted_binops = frozenset(["*", "**", "+", "%"])
    code_generator_class = _CodeGenerator

    def __init__(self, **options):
        super().__init__(**options)
        self.filters = _bounded_filters(self.filters)
        # Lorem ipsum has no place in a prompt, and makes any amount of text.
        del self.globals["lipsum"]

    def call_binop(self, context, operator, left, right):
        if operator == "**" and _is_number(left) and _is_number(right) and abs(left) > 1 and \
                (abs(right) > 64 or (isinstance(left, int) and left.bit_length() * right > MAX_INT_BITS)):
            _refuse("power too large")
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int) and \
                    left.bit_length() + right.bit_length() > MAX_INT_BITS:
                _refuse(f"a number larger than {MAX_INT_BITS} bits")
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and _is_number(times) and times > 0 and \
                        (len(seq) * times > MAX_RENDERED or
                         _rendered_size(seq, MAX_RENDERED // times + 1) * times > MAX_RENDERED):
                    _refuse("repetition too large")
        sequences = (str, list, tuple)
        if operator == "+" and isinstance(left, sequences) and isinstance(right, sequences):
            if _rendered_size(left) + _rendered_size(right) > MAX_RENDERED:
                _refuse("value too large")
        if operator == "%":
            _check_percent(left, right)
        result = super().call_binop(context, operator, left, right)
        if isinstance(result, (str, list, tuple)) and len(result) > MAX_RENDERED:
            _refuse("value too large")
        return _check_size(result)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja2's signature
        _check_deadline()
        args = _checked_method_call(__obj, args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value):
        sandboxed = super().wrap_str_format(value)
        if sandboxed is None:
            return None
        text = value.__self__
        formatter = (_BoundedEscapeFormatter(self, escape=text.escape)
                     if isinstance(text, markupsafe.Markup) else _BoundedFormatter(self))
        is_format_map = value.__name__ == "format_map"

        def bounded(*args, **kwargs):
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            return _check_size(type(text)(formatter.vformat(text, args, kwargs)))
        return functools.update_wrapper(bounded, value)

    # Called by the code _CodeGenerator writes.
    def budgeted(self, iterable):
        deadline = getattr(_budget, "deadline", math.inf)
        for step, item in enumerate(iterable):
            if not step & 63 and time.monotonic() > deadline:
                raise _RenderTimeout
            yield item

    def checked_output(self, value):
        return _check_size(value, "value to output")

    def checked_concat(self, parts, escape: bool):
        if _rendered_size(parts) > MAX_RENDERED:
            _refuse(f"a concatenation longer than {MAX_RENDERED} characters")
        return jinja2.runtime.markup_join(parts) if escape else jinja2.runtime.str_join(parts)

    def checked_literal(self, value):
        return _check_size(value)


def _bounded_range(*args):
    steps = len(range(*args))
    _budget.steps = getattr(_budget, "steps", 0) + steps
    if _budget.steps > MAX_LOOP_STEPS:
        _refuse(f"range() beyond {MAX_LOOP_STEPS} elements")
    return range(*args)


# optimized=False: the optimizer would evaluate constant expressions when a
# template is created, on Redis' main thread and outside the sandbox's checks.
_env = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
                optimized=False)
_env.globals["range"] = _bounded_range


class _Internals(jinja2.visitor.NodeVisitor):
    """Finds what a template reaches for that no prompt needs: dunder names
    (``x.__class__``, ``x['__init__']``, ``x|attr('__dict__')``, a format
    string's ``{0.__class__}``)."""

    def __init__(self):
        self.found: list[tuple[str, int]] = []

    def _name(self, name, node) -> None:
        if isinstance(name, str) and name.startswith("__"):
            self.found.append((name, node.lineno))

    def visit_Getattr(self, node):
        self._name(node.attr, node)
        if node.attr in ("format", "format_map") and isinstance(node.node, jinja2.nodes.Const):
            self._format_fields(node.node.value, node)
        self.generic_visit(node)

    def visit_Getitem(self, node):
        if isinstance(node.arg, jinja2.nodes.Const):
            self._name(node.arg.value, node)
        self.generic_visit(node)

    def visit_Filter(self, node):
        if node.name == "attr" and node.args and isinstance(node.args[0], jinja2.nodes.Const):
            self._name(node.args[0].value, node)
        self._attribute_keywords(node)
        self.generic_visit(node)

    def visit_Test(self, node):
        self._attribute_keywords(node)
        self.generic_visit(node)

    def _attribute_keywords(self, node) -> None:
        # map(attribute='__class__'), sort(attribute='a.__init__'), ...
        for keyword in node.kwargs:
            if keyword.key == "attribute" and isinstance(keyword.value, jinja2.nodes.Const) and \
                    isinstance(keyword.value.value, str):
                for part in keyword.value.value.split("."):
                    self._name(part, node)

    def _format_fields(self, text, node) -> None:
        if not isinstance(text, str):
            return
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(text) if field]
        except ValueError:
            return   # not a valid format string: it fails when run
        for field in fields:
            for part in re.split(r"[.\[\]]", field):
                self._name(part, node)


class Template:
    """A prompt template: ``{{var}}`` placeholders, jinja2 syntax, sandboxed."""

    def __init__(self, source: str, what: str = "prompt", checked: bool = True):
        """``checked``: refuse a template that reaches for Python internals
        (off for templates read back from RDB, accepted when created)."""
        if len(source.encode()) > MAX_PROMPT:
            raise LLMError(f"{what} is longer than {MAX_PROMPT} bytes")
        self.source = source
        try:
            parsed = _env.parse(source)
            if checked:
                internals = _Internals()
                internals.visit(parsed)
                if internals.found:
                    name, line = internals.found[0]
                    raise LLMError(f"{what} template refused by the sandbox: {name!r} on line "
                                   f"{line}; templates cannot reach Python internals")
            finder = _VariableFinder(_env)
            finder.visit(parsed)
            self.variables = finder.undeclared_identifiers
            self._template = _env.from_string(parsed)
        except jinja2.TemplateSyntaxError as exc:
            raise LLMError(f"{what} template error on line {exc.lineno}: {exc.message}") from None
        except (jinja2.TemplateError, ValueError, RecursionError, MemoryError, SyntaxError) as exc:
            # SyntaxError: Python's compiler refuses what nests too deep.
            raise LLMError(f"{what} template error: {type(exc).__name__}") from None

    def render(self, variables: dict) -> str:
        """Render on a worker thread (never Redis' main thread): a template may
        loop, within the bounds of the sandbox and MAX_RENDER_SECONDS."""
        _budget.steps = 0
        _budget.deadline = time.monotonic() + MAX_RENDER_SECONDS
        try:
            out, size = [], 0
            for chunk in self._template.generate(variables):
                if not chunk:
                    continue   # a loop can output empty strings forever, in bounded memory
                size += len(chunk)
                if size > MAX_RENDERED:
                    raise LLMError(f"the rendered prompt is longer than {MAX_RENDERED} characters")
                out.append(chunk)
            return "".join(out)
        except _RenderTimeout:
            raise LLMError(f"template refused by the sandbox: rendering took longer than "
                           f"{MAX_RENDER_SECONDS:g} seconds") from None
        except jinja2.UndefinedError as exc:
            raise LLMError(f"template variable error: {exc.message}") from None
        except jinja2.exceptions.SecurityError as exc:
            raise LLMError(f"template refused by the sandbox: {exc}") from None
        except MemoryError:
            raise LLMError("template refused: not enough memory to render it") from None
        except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError,
                AttributeError, RecursionError, OverflowError) as exc:
            raise LLMError(f"template error: {type(exc).__name__}: {exc}") from None
        finally:
            _budget.deadline = math.inf


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
                 review: dict | None = None, checked: bool = True):
        """``checked``: refuse templates that reach for Python internals (see
        Template); off for apps read back from RDB."""
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
        self.template = Template(default if prompt is None else prompt, checked=checked)
        if kind == "search":
            missing = {"context", "question"} - self.template.variables
            if missing:
                raise LLMError("a search app's prompt must use {{context}} and {{question}}; "
                               f"missing: {', '.join(sorted(missing))}")
        self.history = _history(history, checked) if kind == "chat" else None
        self.summary_template = Template(self.history["summary_prompt"], "summary_prompt", checked) \
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
                      state["k"], state["history"], checked=False)
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
            yield result_set_command(key, record, self.records.vectors.get(record["id"]),
                                     self.records.question_vectors.get(record["id"]))

    def memory_usage(self) -> int:
        return 1024 + 2 * len(self._json())

    def digest(self) -> list[bytes]:
        return [self.type_tag, self._json()]


def result_set_command(key: bytes, record: dict, vector=None,
                       question_vectors: dict | None = None) -> list[bytes]:
    """The LLM.RESULT-SET command that stores ``record``: how records are
    replicated and rewritten to the AOF. ``question_vectors`` embeds the
    review's --ALSO and --NEVER questions."""
    payload = dict(record)
    if vector is not None:
        payload["vector"] = encode_vector(vector)
    if question_vectors:
        payload["question_vectors"] = encode_vectors(question_vectors)
    return [b"LLM.RESULT-SET", key, _compact(payload)]


def chat_log_command(key: bytes, sid: bytes, session: Session, messages: list[dict]) -> list[bytes]:
    """The LLM.CHAT-LOG command that appends ``messages`` and leaves the
    session's counters as ``session`` has them: how a chat turn is replicated."""
    return [b"LLM.CHAT-LOG", key, b"--SESSION", sid, b"--UNSUMMARISED", b"%d" % session.unsummarised,
            b"--SUMMARIES", b"%d" % session.summaries, _compact(messages)]


def _history(given: dict | None, checked: bool = True) -> dict:
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
            "conversation" not in Template(history["summary_prompt"], "summary_prompt", checked).variables:
        raise LLMError("--HISTORY field 'summary_prompt' must use {{conversation}}")
    return history


def parse_messages(raw: bytes) -> list[dict]:
    """A JSON array of {"role": "user"|"assistant"|"system", "content": text}."""
    try:
        messages = json.loads(raw)
    except (ValueError, RecursionError):
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
