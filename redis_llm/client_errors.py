"""Error replies on the client side: their exact text, and their exception classes.

A server's error reply is one line, ``<CODE> <message>`` (``WRONGTYPE
Operation against a key holding the wrong kind of value``, ``ERR no app at
key 'ask'``). redis-py turns it into a ``redis.ResponseError``, but what it
keeps of the text depends on its version:

- every version strips the codes its parser knows (``ERR``, ``NOPERM``,
  ``OOM``...) from the message, and raises some of them as subclasses
  (``NoPermissionError``, ``OutOfMemoryError``);
- redis-py 7.2 and later 7.x give those stripped errors a
  ``status_code``;
- redis-py 8 gives every coded error a ``status_code``, and keeps the code in
  the message of the ones it does not strip (``WRONGTYPE``).

``error_text`` gives back the line the server sent under any redis-py from 5
on. ``response_error`` maps it to the classes of this module by its code, one
table (``ERROR_CLASSES``) as redis-py has; ``redis_llm.Client`` raises those.
Only redis-py is needed here, so the command-line tool and the review desk
use this module without numpy.
"""

from __future__ import annotations

import re

import redis
import redis.exceptions

__all__ = ["BusyError", "CommandError", "ERROR_CLASSES", "NoPermissionError", "OutOfMemoryError",
           "ServerError", "ServerTimeoutError", "WrongTypeError", "error_text", "response_error"]

# An error code: the upper-case first word of a reply (redis-py 8 uses the same pattern).
_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


class ServerError(redis.ResponseError):
    """An error reply, with its whole text: ``str(error)`` is the line the
    server sent, ``code`` its first word and ``message`` the rest."""

    def __init__(self, text: str):
        super().__init__(text)
        code, _, message = text.partition(" ")
        self.code = code if _CODE.fullmatch(code) else ""
        self.message = message if self.code else text
        # What redis-py 7 and 8 call the code; an old-style reader of it
        # finds the code at the start of the text, so adds nothing.
        self.status_code = self.code or None


class CommandError(ServerError):
    """``ERR``: the command was refused (bad arguments, a missing key,
    a failed model call); nothing was changed."""


class WrongTypeError(ServerError):
    """``WRONGTYPE``: the key holds another kind of value."""


class NoPermissionError(ServerError, redis.exceptions.NoPermissionError):
    """``NOPERM``: the user's ACL rules forbid the command or a key it
    touches. Also a ``redis.exceptions.NoPermissionError``."""


class BusyError(ServerError):
    """``BUSY``: the server is busy (a script or a function running too long)."""


class ServerTimeoutError(ServerError):
    """``TIMEOUT``: the server gave up waiting for the work. Not
    ``redis.TimeoutError``, which is the connection's socket timing out."""


class OutOfMemoryError(ServerError, redis.exceptions.OutOfMemoryError):
    """``OOM``: over ``maxmemory``, a write is refused. Also a
    ``redis.exceptions.OutOfMemoryError``."""


# The one table: an error code to the class raised for it. A code not here
# is a ServerError, unless redis-py raised a class of its own for it
# (ReadOnlyError, NoScriptError...), which is then kept.
ERROR_CLASSES: dict[str, type[ServerError]] = {
    "ERR": CommandError,
    "WRONGTYPE": WrongTypeError,
    "NOPERM": NoPermissionError,
    "BUSY": BusyError,
    "TIMEOUT": ServerTimeoutError,
    "OOM": OutOfMemoryError,
}

# Codes servers send that redis-py leaves in the message (it does not strip
# them). Only versions that record no status_code (5, 6, 7.0, 7.1) need it: there a
# message starting with an upper-case word is either such a code or what
# followed a stripped ERR ("ERR LLM key 'x' does not exist").
_KEPT_CODES = frozenset({
    "WRONGTYPE", "BUSY", "TIMEOUT", "BUSYKEY", "NOTBUSY", "UNKILLABLE", "MISCONF", "NOREPLICAS",
    "NOPROTO", "NOGROUP", "BUSYGROUP", "UNBLOCKED", "MOVED", "ASK", "TRYAGAIN", "CROSSSLOT",
    "CLUSTERDOWN", "MASTERDOWN", "LOADING", "READONLY", "NOSCRIPT", "EXECABORT", "NOAUTH",
    "WRONGPASS", "NOPERM", "OOM", *ERROR_CLASSES,
})


def _parser_table() -> dict:
    """redis-py's own table: the codes it strips, to the class it raises."""
    try:
        from redis._parsers.base import BaseParser
        return dict(BaseParser.EXCEPTION_CLASSES)
    except (ImportError, AttributeError):  # a redis-py that moved it: the codes of 5.0
        return dict.fromkeys(("ERR", "OOM", "WRONGPASS", "EXECABORT", "LOADING", "NOSCRIPT",
                              "READONLY", "NOAUTH", "NOPERM"))


_STRIPPED = frozenset(_parser_table())
# Later redis-py 7 releases and 8 record the code of each error they strip.
_HAS_STATUS_CODE = hasattr(redis.ResponseError("probe"), "status_code")


def _class_codes() -> dict[type, str]:
    """The code of each class redis-py raises for one code only
    (NoPermissionError: NOPERM, ModuleError: ERR)."""
    codes: dict[type, set[str]] = {}
    for code, entry in _parser_table().items():
        for cls in (entry.values() if isinstance(entry, dict) else [entry]):
            if isinstance(cls, type) and cls is not redis.ResponseError:
                codes.setdefault(cls, set()).add(code)
    return {cls: found.pop() for cls, found in codes.items() if len(found) == 1}


_CLASS_CODES = _class_codes()


def _join(code: str, message: str) -> str:
    return f"{code} {message}" if message else code


def _starts_with_code(message: str, code: str) -> bool:
    return message == code or message.startswith(code + " ")


def error_text(exc: Exception) -> str:
    """The error reply exactly as the server sent it (``WRONGTYPE Operation
    against...``, ``ERR no app at key ...``), whichever redis-py (5 to 8)
    made ``exc``.

    Under a redis-py that records no code (5, 6, 7.0, 7.1), an error whose code
    redis-py stripped is recognised by its class, and a plain
    ``ResponseError`` keeps a first word from the codes servers send, else
    was an ``ERR``; a code of another module unknown here then reads as
    ``ERR <its text>``.
    """
    if isinstance(exc, ServerError):
        return str(exc)
    message = str(exc.args[0]) if exc.args else ""
    code = getattr(exc, "status_code", None)
    if code:
        # redis-py 7/8 stripped it; or redis-py 8 kept it in the message.
        if code in _STRIPPED or not _starts_with_code(message, code):
            return _join(code, message)
        return message
    code = _CLASS_CODES.get(type(exc))
    if code:
        return _join(code, message)
    if _HAS_STATUS_CODE or not isinstance(exc, redis.ResponseError):
        # Such a redis-py strips only codes it records: a plain error kept its reply whole.
        return message
    first = message.split(" ", 1)[0]
    if first in _KEPT_CODES and first not in _STRIPPED:
        return message
    return _join("ERR", message)


def response_error(exc: redis.ResponseError) -> redis.ResponseError:
    """The error to raise for ``exc``: the class of its code in
    ``ERROR_CLASSES`` (a ``ServerError`` for another code), with the server's
    whole text. When redis-py raised a class of its own that the mapped one
    does not derive from (``ReadOnlyError``, ``ModuleError``), ``exc`` is
    returned as it is, so ``except`` clauses written for redis-py still catch it."""
    if isinstance(exc, ServerError):
        return exc
    text = error_text(exc)
    code = text.partition(" ")[0]
    cls = ERROR_CLASSES.get(code, ServerError)
    if not issubclass(cls, type(exc)):
        return exc
    return cls(text)
