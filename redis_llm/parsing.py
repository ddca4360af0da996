"""Declarative, case-insensitive parsing of command arguments.

Each command declares its syntax once: positional arguments, ``--OPTION``
flags and valued options, and an optional trailing argument (the data or the
query). Option names are case-insensitive, each may be given once, and an
unknown, repeated or incomplete option is an ``ERR`` reply; the few options
declared ``repeat`` may be given several times and collect a list.
"""

import json
import re
from typing import Any, Callable, Sequence

import numpy as np

from redis_llm.errors import LLMError

Converter = Callable[[bytes], Any]

_INTEGER = re.compile(rb"-?[0-9]+\Z")

# ---- limits on what one command may send (README: "Limits and hostile input")
# JSON sizes are measured on the value as compact JSON, so that a replica or
# an AOF replay, which may get the value re-encoded, measures the same size.
MAX_JSON_DEPTH = 64           # nesting levels of a JSON option
MAX_JSON_BYTES = 1 << 20      # a JSON option (--META, --FILTER, --PARAMS, ...), as compact JSON
MAX_VARS_BYTES = 4 << 20      # LLM.RUN --VARS, as compact JSON
MAX_DIM = 65_536              # numbers in an embedding
MAX_DATA_BYTES = 16 << 20     # an item's data (LLM.ADD)
MAX_TEXT_BYTES = 4 << 20      # a run's input, a query, a recorded or reviewed question or answer
MAX_MODEL_NAME_BYTES = 1024   # an embedding model's name (--EMBEDDING-MODEL, a store's record of it)
# Nesting levels of a whole record (LLM.RESULT-SET): its vars and meta nest
# MAX_JSON_DEPTH levels inside it, and the matches' page values a few more.
MAX_RECORD_DEPTH = 2 * MAX_JSON_DEPTH
# Raw JSON is refused unread beyond this many times its limit: a re-encoded
# value (ASCII escapes) is at most 3 times longer than its compact form.
_RAW_JSON_FACTOR = 4


def shown(arg: bytes, limit: int = 40) -> str:
    """A client-supplied value, quoted and shortened for an error message."""
    text = arg[:limit].decode("utf-8", "replace")
    return repr(text + ("..." if len(arg) > limit else ""))


class Option:
    """``--NAME`` on its own (a flag, when ``convert`` is None) or followed by a
    value. A ``repeat`` option may be given several times: its value is the
    list of the values given, in order (None when not given)."""

    def __init__(self, name: str, convert: Converter | None = None, default: Any = None,
                 required: bool = False, repeat: bool = False):
        self.name = name.upper()
        self.required = required
        self.repeat = repeat
        self.attr = name.lstrip("-").lower().replace("-", "_")
        self.convert = convert
        self.default = False if convert is None else default


class Syntax:
    """The arguments a command takes after its name.

    ``positional``: (name, converter) pairs that come first, in order.
    ``trailing``: None, ``"optional"`` (a last argument that is not an option,
    e.g. a query; after ``--`` it may look like one) or ``"required"`` (the
    last argument, always, e.g. data: so data may look like an option).
    ``exclusive``: groups of options that cannot be combined.
    ``trailing_convert``: a converter for the trailing argument (e.g. a size limit).
    """

    def __init__(self, positional: Sequence[tuple[str, Converter | None]] = (),
                 options: Sequence[Option] = (), trailing: str | None = None,
                 trailing_name: str = "data", exclusive: Sequence[tuple[str, ...]] = (),
                 trailing_convert: Converter | None = None):
        self.positional = tuple(positional)
        self.options = {option.name.encode(): option for option in options}
        # Options not given read their defaults from the class.
        self.args_class = type("Args", (Args,), {o.attr: o.default for o in options})
        self.trailing = trailing
        self.trailing_name = trailing_name
        self.trailing_convert = trailing_convert
        self.exclusive = tuple(tuple(name.upper() for name in group) for group in exclusive)
        self.required = tuple(option for option in options if option.required)

    def parse(self, args: Sequence[bytes]) -> "Args":
        """Parse ``args`` (the arguments after the command name)."""
        # This runs for every command: index loops and setattr on a class
        # holding the defaults are the cheapest way to build the result.
        parsed = self.args_class()
        i = 0
        for name, convert in self.positional:
            setattr(parsed, name, convert_value(name, convert, args[i]) if convert else args[i])
            i += 1
        if len(args) > i or self.trailing:
            self._parse_options(args, i, parsed)
        for option in self.required:
            if getattr(parsed, option.attr) is None:
                raise LLMError(f"option {option.name} is required")
        return parsed

    def _parse_options(self, args: Sequence[bytes], npos: int, parsed: "Args") -> None:
        end = len(args)
        trailing = None
        if self.trailing == "required":
            if end <= npos:
                raise LLMError(f"missing {self.trailing_name}")
            end -= 1
            trailing = args[end]
        seen = []
        i = npos
        while i < end:
            word = args[i]
            option = self.options.get(word.upper())
            if option is None:
                if self.trailing == "optional" and i == end - 1 and not word.startswith(b"--"):
                    trailing = word
                    break
                if self.trailing == "optional" and word == b"--":
                    # The end of the options: the one argument after it is
                    # the input, whatever it looks like.
                    if i != end - 2:
                        raise LLMError(f"'--' must be followed by exactly one argument, "
                                       f"the {self.trailing_name}")
                    trailing = args[end - 1]
                    break
                if word.startswith(b"--"):
                    raise LLMError(f"unknown option {shown(word)}")
                raise LLMError(f"syntax error at {shown(word)}")
            if option.name in seen and not option.repeat:
                raise LLMError(f"option {option.name} given more than once")
            seen.append(option.name)
            if option.convert is None:
                setattr(parsed, option.attr, True)
                i += 1
            else:
                if i + 1 >= end:
                    raise LLMError(f"option {option.name} needs a value")
                value = convert_value(option.name, option.convert, args[i + 1])
                if option.repeat:
                    value = [*(getattr(parsed, option.attr) or ()), value]
                setattr(parsed, option.attr, value)
                i += 2
        for group in self.exclusive:
            given = [name for name in group if name in seen]
            if len(given) > 1:
                raise LLMError(f"options {' and '.join(given)} cannot be combined")
        if self.trailing:
            if trailing is not None and self.trailing_convert is not None:
                trailing = convert_value(self.trailing_name, self.trailing_convert, trailing)
            setattr(parsed, self.trailing_name, trailing)


class Args:
    """Parsed arguments, read as attributes: ``args.key``, ``args.k``."""

    def __repr__(self) -> str:
        return f"Args({vars(self)!r})"


def convert_value(name: str, convert: Converter, arg: bytes) -> Any:
    try:
        return convert(arg)
    except LLMError:
        raise
    except ValueError as exc:
        raise LLMError(f"{name} {exc}") from None


# ---- converters: each raises ValueError("must be ...") ---------------------

def integer(low: int, high: int) -> Converter:
    """An integer from ``low`` to ``high``, written in decimal."""
    def convert(arg: bytes) -> int:
        if not _INTEGER.match(arg) or not low <= (value := int(arg)) <= high:
            raise ValueError(f"must be an integer from {low} to {high}, got {shown(arg)}")
        return value
    return convert


uint64 = integer(0, 2**64 - 1)

_DECIMAL = re.compile(rb"[0-9]+(\.[0-9]+)?\Z")


def decimal(low: float, high: float) -> Converter:
    """A non-negative decimal number from ``low`` to ``high``, e.g. ``0.25``."""
    def convert(arg: bytes) -> float:
        if not _DECIMAL.match(arg) or not low <= (value := float(arg)) <= high:
            raise ValueError(f"must be a number from {low:g} to {high:g}, got {shown(arg)}")
        return value
    return convert


def json_value(arg: bytes, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Any JSON document, nested at most ``max_depth`` levels deep and at most
    ``max_bytes`` long as compact JSON."""
    if len(arg) > _RAW_JSON_FACTOR * max_bytes:
        raise ValueError(f"must be at most {max_bytes} bytes of JSON, got {len(arg)} bytes")
    # The parser recurses once per level: a document with fewer brackets than
    # the limit cannot nest too deep, others are checked before the parser
    # runs out of stack.
    if arg.count(b"[") + arg.count(b"{") > max_depth and _raw_depth(arg) > max_depth:
        raise ValueError(f"nests deeper than {max_depth} levels")
    try:
        value = json.loads(arg)
        # Python reads NaN, Infinity, 1e999 and lone surrogates that other
        # JSON parsers refuse: what is stored must be written back as JSON.
        size = len(json.dumps(value, ensure_ascii=False, allow_nan=False,
                              separators=(",", ":")).encode())
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"must be valid JSON ({exc})") from None
    if size > max_bytes:
        raise ValueError(f"must be at most {max_bytes} bytes of JSON, got {size} bytes")
    if _depth(value, max_depth) > max_depth:
        raise ValueError(f"nests deeper than {max_depth} levels")
    return value


def json_object(arg: bytes) -> dict:
    """A JSON object (at most MAX_JSON_BYTES)."""
    value = json_value(arg)
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def vars_object(arg: bytes) -> dict:
    """LLM.RUN --VARS: a JSON object of at most MAX_VARS_BYTES."""
    value = json_value(arg, MAX_VARS_BYTES)
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def record_json(arg: bytes) -> bytes:
    """A whole record (LLM.RESULT-SET), checked to be JSON the handler can
    read: not nested beyond MAX_RECORD_DEPTH. Its size is not limited: a
    record is what a master wrote, and a replica must take it."""
    if arg.count(b"[") + arg.count(b"{") > MAX_RECORD_DEPTH and _raw_depth(arg) > MAX_RECORD_DEPTH:
        raise ValueError(f"nests deeper than {MAX_RECORD_DEPTH} levels")
    return arg


def max_bytes(limit: int) -> Converter:
    """Any bytes, at most ``limit`` of them."""
    def convert(arg: bytes) -> bytes:
        if len(arg) > limit:
            raise ValueError(f"must be at most {limit} bytes, got {len(arg)} bytes")
        return arg
    return convert


data_bytes = max_bytes(MAX_DATA_BYTES)    # an item's data
text_bytes = max_bytes(MAX_TEXT_BYTES)    # a run's input, a query, a question, an answer


def model_name(arg: bytes) -> str:
    """An embedding model's name (--EMBEDDING-MODEL): 1 to MAX_MODEL_NAME_BYTES
    bytes of UTF-8."""
    if not arg or len(arg) > MAX_MODEL_NAME_BYTES:
        raise ValueError(f"must be 1 to {MAX_MODEL_NAME_BYTES} bytes, got {len(arg)}")
    try:
        return arg.decode()
    except UnicodeDecodeError:
        raise ValueError("must be UTF-8 text") from None


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?')
_OPENERS = np.zeros(256, dtype=np.int8)
_OPENERS[[ord("["), ord("{")]] = 1
_OPENERS[[ord("]"), ord("}")]] = -1


def _raw_depth(arg: bytes) -> int:
    """How deep the brackets of raw JSON nest, strings left out: found
    without parsing it, so without recursion."""
    brackets = _OPENERS[np.frombuffer(_JSON_STRING.sub(b"", arg), dtype=np.uint8)]
    return int(np.cumsum(brackets, dtype=np.int64).max(initial=0))


def _depth(value: Any, limit: int) -> int:
    """How deep value nests (a scalar: 0), or limit + 1 if deeper than limit."""
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > limit + 1:
            return depth - 1
        nested = []
        for item in level:
            if isinstance(item, dict):
                nested.extend(item.values())
            elif isinstance(item, list):
                nested.extend(item)
        level = nested
    return depth - 1


def embedding_text(arg: bytes) -> np.ndarray:
    """Comma-separated numbers, e.g. ``1,2,3``."""
    _check_dim(arg.count(b",") + 1)
    try:
        if b"_" in arg:  # float() reads 1_0 as 10
            raise ValueError
        vector = np.array([float(x) for x in arg.split(b",")], dtype=np.float32)
    except ValueError:
        raise ValueError(f"must be comma-separated numbers, got {shown(arg)}") from None
    return checked_vector(vector)


def embedding_blob(arg: bytes) -> np.ndarray:
    """Little-endian float32 values, as numpy's ``astype('<f4').tobytes()`` writes them."""
    if not arg or len(arg) % 4:
        raise ValueError(f"must be a non-empty multiple of 4 bytes, got {len(arg)} bytes")
    _check_dim(len(arg) // 4)
    return checked_vector(np.frombuffer(arg, dtype="<f4"))


def _check_dim(numbers: int) -> None:
    if numbers > MAX_DIM:
        raise ValueError(f"must have at most {MAX_DIM} numbers, got {numbers}")


def checked_vector(vector: np.ndarray) -> np.ndarray:
    _check_dim(vector.size)
    if vector.size == 0:
        raise ValueError("must not be empty")
    if not np.isfinite(vector).all():
        raise ValueError("must hold finite float32 numbers (no NaN or infinity)")
    return vector


def choice(*names: str) -> Converter:
    """One of ``names``, case-insensitive; returns it in lower case."""
    def convert(arg: bytes) -> str:
        word = arg.decode("utf-8", "replace").lower()
        if word not in names:
            raise ValueError(f"must be one of {', '.join(names)}, got {shown(arg)}")
        return word
    return convert


def format_vector(vector: np.ndarray) -> bytes:
    """A float32 vector as comma-separated shortest round-trip decimals."""
    return ",".join(map(str, vector.astype(np.float32, copy=False))).encode()


def format_distance(distance: float) -> bytes:
    # Seven significant digits: what a float32 distance carries.
    return b"%.7g" % distance
