"""RedisModule_SetCommandInfo's structures, built with ctypes.

The C shim hands the address of a ``RedisModuleCommandInfo`` straight to
Redis, which copies it: key-specs (cluster routing, ACL key patterns),
arity, and the summary, ``since`` and arguments of COMMAND DOCS. The layout
follows the Redis 7.0 module API reference (version 1 of the structure).
"""

import ctypes
from ctypes import POINTER, c_char_p, c_int, c_size_t, c_uint64

# Key-spec begin-search and find-keys types.
BS_INDEX, BS_KEYWORD, FK_RANGE = 2, 3, 2


class _Index(ctypes.Structure):
    _fields_ = [("pos", c_int)]


class _Keyword(ctypes.Structure):
    _fields_ = [("keyword", c_char_p), ("startfrom", c_int)]


class _BeginSearch(ctypes.Union):
    _fields_ = [("index", _Index), ("keyword", _Keyword)]


class _Range(ctypes.Structure):
    _fields_ = [("lastkey", c_int), ("keystep", c_int), ("limit", c_int)]


class _FindKeys(ctypes.Union):
    # The other member (keynum) has the same size: three ints.
    _fields_ = [("range", _Range)]


class KeySpec(ctypes.Structure):
    _fields_ = [("notes", c_char_p), ("flags", c_uint64), ("begin_search_type", c_int),
                ("bs", _BeginSearch), ("find_keys_type", c_int), ("fk", _FindKeys)]


class Arg(ctypes.Structure):
    pass


Arg._fields_ = [("name", c_char_p), ("type", c_int), ("key_spec_index", c_int),
                ("token", c_char_p), ("summary", c_char_p), ("since", c_char_p),
                ("flags", c_int), ("deprecated_since", c_char_p), ("subargs", POINTER(Arg)),
                ("display_text", c_char_p)]


class _HistoryEntry(ctypes.Structure):
    _fields_ = [("since", c_char_p), ("changes", c_char_p)]


class _Version(ctypes.Structure):
    _fields_ = [("version", c_int), ("sizeof_historyentry", c_size_t),
                ("sizeof_keyspec", c_size_t), ("sizeof_arg", c_size_t)]


class CommandInfo(ctypes.Structure):
    _fields_ = [("version", POINTER(_Version)), ("summary", c_char_p), ("complexity", c_char_p),
                ("since", c_char_p), ("history", POINTER(_HistoryEntry)), ("tips", c_char_p),
                ("arity", c_int), ("key_specs", POINTER(KeySpec)), ("args", POINTER(Arg))]


_VERSION = _Version(1, ctypes.sizeof(_HistoryEntry), ctypes.sizeof(KeySpec), ctypes.sizeof(Arg))


def _text(value: str | None) -> bytes | None:
    return None if value is None else value.encode()


def _args(docs: tuple, keep: list) -> ctypes.Array:
    """(name, type, key-spec index, token, summary, flags, sub-arguments)
    tuples, into a zero-terminated array (kept in ``keep`` with its sub-arrays)."""
    array = (Arg * (len(docs) + 1))()
    keep.append(array)
    for arg, (name, kind, spec, token, summary, flags, subargs) in zip(array, docs):
        arg.name, arg.type, arg.key_spec_index = name.encode(), kind, spec
        arg.token, arg.summary, arg.flags = _text(token), _text(summary), flags
        if subargs:
            arg.subargs = ctypes.cast(_args(subargs, keep), POINTER(Arg))
    return array


class Built:
    """A CommandInfo and every ctypes object it points to, kept alive together."""

    def __init__(self, summary: str, complexity: str, since: str, arity: int,
                 key_specs: tuple, arg_docs: tuple):
        specs = (KeySpec * (len(key_specs) + 1))()
        for spec, (flags, index, keyword, startfrom, lastkey, keystep, limit) in zip(specs, key_specs):
            spec.flags, spec.find_keys_type = flags, FK_RANGE
            if keyword is None:
                spec.begin_search_type, spec.bs.index.pos = BS_INDEX, index
            else:
                spec.begin_search_type = BS_KEYWORD
                spec.bs.keyword.keyword, spec.bs.keyword.startfrom = keyword.encode(), startfrom
            spec.fk.range.lastkey, spec.fk.range.keystep, spec.fk.range.limit = lastkey, keystep, limit
        self._keep: list = [specs]
        args = _args(arg_docs, self._keep)
        self.info = CommandInfo(ctypes.pointer(_VERSION), summary.encode(), complexity.encode(),
                                since.encode(), None, None, arity,
                                ctypes.cast(specs, POINTER(KeySpec)), ctypes.cast(args, POINTER(Arg)))

    @property
    def address(self) -> int:
        return ctypes.addressof(self.info)
