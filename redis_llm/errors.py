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


def error_reply(exc: Exception, what: str) -> LLMError:
    """The one place where exceptions become error replies."""
    if isinstance(exc, LLMError):
        return exc
    # A bug: keep the server up and say where to look.
    import traceback

    from redis_llm import keys
    keys.log("warning", f"{what} failed:\n{traceback.format_exc()}")
    return LLMError(f"internal error ({type(exc).__name__}), see the server log")
