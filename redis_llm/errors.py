"""Coded errors. Every error reply starts with an upper-case code, the way
Redis' own errors do, so clients (redis-py among them) can map it to an
exception class."""


class LLMError(Exception):
    """An error the client sees as ``<CODE> <message>``; nothing was changed."""

    code = "ERR"

    def __init__(self, message: str, code: str | None = None):
        # A reply line cannot carry CR or LF.
        super().__init__(" ".join(str(message).split()))
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code} {self.args[0]}"


class WrongTypeError(LLMError):
    code = "WRONGTYPE"

    def __init__(self):
        super().__init__("Operation against a key holding the wrong kind of value")
