"""Helpers shared by the test files: error replies, commands run in threads, waiting."""

import re
import threading
import time

import pytest
import redis

# Every error reply starts with an upper-case code, then the message.
ERROR_CODE = re.compile(r"[A-Z][A-Z0-9_-]* \S")


def error_text(exc: redis.ResponseError) -> str:
    """The error reply as the server sent it: redis-py strips the codes it knows (ERR)."""
    code = getattr(exc, "status_code", None)
    return f"{code} {exc}" if code else str(exc)


def expect_error(r, *args, code: str = "ERR", match: str | None = None) -> str:
    """Run a command that must fail; check its code (and message, a regular
    expression); return the full error text."""
    with pytest.raises(redis.ResponseError) as info:
        r.execute_command(*args)
    text = error_text(info.value)
    assert ERROR_CODE.match(text), f"error reply without an upper-case code: {text!r}"
    assert text.split(" ", 1)[0] == code, text
    assert "Traceback" not in text and "internal error" not in text, text
    if match is not None:
        assert re.search(match, text), f"{text!r} does not match {match!r}"
    return text


def in_thread(fn):
    """Run fn in a thread; the returned dict gets 'value' or 'error', and 'seconds'."""
    out = {}

    def run():
        start = time.monotonic()
        try:
            out["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc
        out["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    out["thread"] = thread
    return out


def wait_for(predicate, timeout: float, what: str, interval: float = 0.01):
    """Call predicate until it returns something true, and return that; fail
    the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return value
