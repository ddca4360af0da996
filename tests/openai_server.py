"""A real, scripted OpenAI-compatible HTTP server for tests.

Tests start an :class:`OpenAIServer` on 127.0.0.1 (a free port, served from a
background thread) and point the module's ``openai`` / ``azure_openai`` LLM
configurations at :attr:`OpenAIServer.url`.  The server

* answers ``POST .../chat/completions`` with scripted answers (FIFO), or with
  ``"echo: " + <content of the last message>`` once the script is used up;
* answers ``POST .../embeddings`` with deterministic unit vectors
  (:meth:`OpenAIServer.embedding_for`), so tests can compute the expected
  vectors themselves;
* logs every request it receives (:attr:`OpenAIServer.requests`), faulted
  ones included;
* injects faults from a single FIFO of pending actions, one consumed per
  request in arrival order: :meth:`fail`, :meth:`delay`, :meth:`drop`,
  :meth:`malformed` and :meth:`reshape` can be mixed freely.

Any path ending in ``/chat/completions`` or ``/embeddings`` is accepted, so
both ``/v1/chat/completions`` and Azure's
``/openai/deployments/{id}/chat/completions?api-version=...`` work.

Only the standard library is used.  Usage::

    with OpenAIServer(dim=8, api_key="sk-test") as llm:
        llm.script("first answer", "second answer")
        llm.fail(429, retry_after=0.1)
        ...  # point the module at llm.url and exercise it
        assert len(llm.chat_requests()) == 3
"""

from __future__ import annotations

import hashlib
import json
import math
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

__all__ = ["OpenAIServer", "Request"]


@dataclass
class Request:
    """One HTTP request received by the server, as logged (faulted ones included)."""

    method: str
    #: The request path, without the query string.
    path: str
    #: Query parameters (the last value wins when a name repeats).
    query: dict[str, str]
    #: Request headers, names lower-cased (the last value wins when a name repeats).
    headers: dict[str, str]
    #: The body parsed as JSON, or None when it is empty or not JSON.
    body: object
    #: ``time.monotonic()`` when the request was logged (its body fully read).
    time: float
    #: The raw body bytes.
    raw: bytes = field(default=b"", repr=False)


# ---------------------------------------------------------------------------
# Pending actions (faults)


@dataclass
class _Fail:
    status: int
    message: str
    retry_after: float | None


@dataclass
class _Delay:
    seconds: float


@dataclass
class _Drop:
    pass


@dataclass
class _Malformed:
    body: bytes


@dataclass
class _Reshape:
    edit: object  # a callable: the normal JSON answer -> the answer sent


@dataclass
class _Response:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"


def _error_kind(status: int) -> tuple[str, str | None]:
    """The OpenAI error ``type`` and ``code`` usually sent with an HTTP status."""
    if status == 401:
        return "invalid_request_error", "invalid_api_key"
    if status == 403:
        return "permission_error", None
    if status == 404:
        return "invalid_request_error", None
    if status == 429:
        return "requests", "rate_limit_exceeded"
    if status >= 500:
        return "server_error", None
    return "invalid_request_error", None


def _error(status: int, message: str, type_: str | None = None, code: str | None = None,
           headers: list[tuple[str, str]] | None = None) -> _Response:
    default_type, default_code = _error_kind(status)
    body = {"error": {"message": message,
                      "type": type_ or default_type,
                      "code": code if code is not None else default_code}}
    return _Response(status, json.dumps(body).encode(), headers or [])


def _json(obj: object) -> _Response:
    return _Response(200, json.dumps(obj).encode())


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def _text_of(content: object) -> str:
    """The text of a chat message's ``content`` (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return str(content)


def _words(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------------------
# HTTP plumbing


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, owner: "OpenAIServer"):
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request, client_address):  # noqa: D401
        """Stay quiet: clients and stop() close sockets under running handlers."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "openai-test-server/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format, *args) -> None:  # noqa: A002
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline()
                if not size_line:
                    break
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, up to the empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after the chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        raw = self._read_body()
        owner = self.server.owner
        action, response = owner._receive(self, raw)
        if isinstance(action, _Drop):
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if isinstance(action, _Delay):
            if owner._stopping.wait(action.seconds):
                self.close_connection = True
                return
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle


# ---------------------------------------------------------------------------
# The server


class OpenAIServer:
    """An OpenAI-compatible HTTP server with scripted answers, a request log and faults.

    ``dim`` is the length of the embedding vectors it returns (unless a request
    asks for other ``dimensions``).  When ``api_key`` is set, every request must
    carry ``Authorization: Bearer <key>`` or (Azure) ``api-key: <key>``, else it
    gets a 401 with an OpenAI-style error body.
    """

    def __init__(self, dim: int = 8, api_key: str | None = None):
        """Configure the server; :meth:`start` binds and serves it."""
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.dim = dim
        self.api_key = api_key
        #: Every request received, in arrival order, faulted ones included.
        self.requests: list[Request] = []
        self.port: int = 0
        self.url: str = ""
        self._lock = threading.Lock()
        self._logged = threading.Condition(self._lock)
        self._answers: deque[str] = deque()
        self._actions: deque[object] = deque()
        self._chat_count = 0
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "OpenAIServer":
        """Bind 127.0.0.1 on a free port and serve from a daemon thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        self._httpd = _HTTPServer(self)
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"openai-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: wake delayed handlers, close open connections and the socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with httpd.connections_lock:
            connections = list(httpd.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "OpenAIServer":
        """Start the server."""
        return self.start()

    def __exit__(self, *exc) -> None:
        """Stop the server."""
        self.stop()

    # -- the log -----------------------------------------------------------

    def chat_requests(self) -> list[Request]:
        """The logged POST requests to a ``.../chat/completions`` path."""
        with self._lock:
            return [r for r in self.requests
                    if r.method == "POST" and r.path.endswith("/chat/completions")]

    def embedding_requests(self) -> list[Request]:
        """The logged POST requests to a ``.../embeddings`` path."""
        with self._lock:
            return [r for r in self.requests
                    if r.method == "POST" and r.path.endswith("/embeddings")]

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> None:
        """Block until at least ``n`` requests were logged; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._logged:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected at least {n} requests within {timeout}s, "
                        f"got {len(self.requests)}")
                self._logged.wait(left)

    # -- scripting and faults ----------------------------------------------

    def script(self, *answers: str) -> None:
        """Queue chat answers, consumed FIFO by successfully answered chat requests.

        When the queue is empty the answer is ``"echo: "`` followed by the
        content of the last message of the request.
        """
        with self._lock:
            self._answers.extend(str(a) for a in answers)

    def fail(self, status: int, times: int = 1, message: str = "injected failure",
             retry_after: float | None = None) -> None:
        """The next ``times`` requests (any endpoint) get ``status`` and an error body.

        The body is OpenAI-style, ``{"error": {"message", "type", "code"}}``;
        a ``Retry-After`` header (in seconds) is sent when ``retry_after`` is given.
        """
        self._push(times, _Fail(status, message, retry_after))

    def delay(self, seconds: float, times: int = 1) -> None:
        """The next ``times`` requests sleep ``seconds`` before being answered normally.

        The answer (a scripted one, say) is decided when the request arrives;
        :meth:`stop` cuts the sleep short and closes the connection.
        """
        self._push(times, _Delay(seconds))

    def drop(self, times: int = 1) -> None:
        """The next ``times`` requests: close the connection without any response."""
        self._push(times, _Drop())

    def malformed(self, times: int = 1, body: bytes = b'{"choices": []}') -> None:
        """The next ``times`` requests get a 200 with ``body`` (JSON or not) as it is."""
        if isinstance(body, str):
            body = body.encode()
        self._push(times, _Malformed(bytes(body)))

    def reshape(self, edit, times: int = 1) -> None:
        """The next ``times`` requests get their normal answer edited by ``edit``.

        ``edit`` takes the answer's JSON object (a dict it may change in place)
        and returns the object to send, so a test can play a server that answers
        outside the OpenAI schema while the vectors and texts still follow the
        request. Error answers (a 401, say) are sent unedited.
        """
        self._push(times, _Reshape(edit))

    def clear(self) -> None:
        """Forget the request log, the scripted answers and the pending faults."""
        with self._lock:
            self.requests.clear()
            self._answers.clear()
            self._actions.clear()

    def _push(self, times: int, action: object) -> None:
        if times < 0:
            raise ValueError("times must not be negative")
        with self._lock:
            self._actions.extend(action for _ in range(times))

    # -- embeddings ----------------------------------------------------------

    @staticmethod
    def embedding_for(text: str, dim: int) -> list[float]:
        """The deterministic unit-length vector the server returns for ``text``.

        Components come from the SHA-256 stream ``sha256(text || counter)``
        (4 bytes each, mapped to [-1, 1)), normalised to length 1 and rounded
        to float32 values, so they survive a float32 round trip exactly.
        """
        data = text.encode("utf-8")
        values: list[float] = []
        counter = 0
        while len(values) < dim:
            digest = hashlib.sha256(data + counter.to_bytes(4, "big")).digest()
            for (word,) in struct.iter_unpack(">I", digest):
                values.append(word / 2.0**31 - 1.0)
            counter += 1
        values = values[:dim]
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in values]

    # -- request handling (called from handler threads) -----------------------

    def _receive(self, handler: _Handler, raw: bytes) -> tuple[object | None, _Response | None]:
        """Log a request, take its pending action and decide its response, atomically."""
        split = urlsplit(handler.path)
        body: object = None
        if raw:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                body = None
        request = Request(
            method=handler.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
            time=time.monotonic(),
            raw=raw,
        )
        with self._logged:
            self.requests.append(request)
            self._logged.notify_all()
            action = self._actions.popleft() if self._actions else None
            if isinstance(action, _Drop):
                return action, None
            if isinstance(action, _Fail):
                headers = []
                if action.retry_after is not None:
                    headers.append(("Retry-After", _format_seconds(action.retry_after)))
                return action, _error(action.status, action.message, headers=headers)
            if isinstance(action, _Malformed):
                return action, _Response(200, action.body)
            response = self._answer(request)
            if isinstance(action, _Reshape) and response.status == 200:
                response = _json(action.edit(json.loads(response.body)))
            return action, response

    def _authorized(self, request: Request) -> bool:
        if self.api_key is None:
            return True
        if request.headers.get("authorization", "") == f"Bearer {self.api_key}":
            return True
        return request.headers.get("api-key") == self.api_key

    def _answer(self, request: Request) -> _Response:
        """The normal response to a request (the lock is held)."""
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided",
                          "invalid_request_error", "invalid_api_key")
        if request.method == "POST" and request.path.endswith("/chat/completions"):
            return self._chat(request)
        if request.method == "POST" and request.path.endswith("/embeddings"):
            return self._embeddings(request)
        return _error(404, f"Invalid URL ({request.method} {request.path})")

    def _chat(self, request: Request) -> _Response:
        body = request.body
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            return _error(400, "'messages' is a required property")
        texts = [_text_of(m.get("content")) if isinstance(m, dict) else "" for m in messages]
        if self._answers:
            answer = self._answers.popleft()
        else:
            answer = "echo: " + (texts[-1] if texts else "")
        self._chat_count += 1
        prompt_tokens = sum(_words(t) for t in texts)
        completion_tokens = _words(answer)
        return _json({
            "id": f"chatcmpl-{self._chat_count}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or "scripted",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        })

    def _embeddings(self, request: Request) -> _Response:
        body = request.body
        if not isinstance(body, dict) or "input" not in body:
            return _error(400, "'input' is a required property")
        inputs = body["input"]
        if isinstance(inputs, str):
            inputs = [inputs]
        if (not isinstance(inputs, list) or not inputs
                or not all(isinstance(t, str) for t in inputs)):
            return _error(400, "'input' must be a string or a non-empty list of strings")
        dim = body.get("dimensions")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            dim = self.dim
        tokens = sum(_words(t) for t in inputs)
        return _json({
            "object": "list",
            "data": [{"object": "embedding", "index": i,
                      "embedding": self.embedding_for(text, dim)}
                     for i, text in enumerate(inputs)],
            "model": body.get("model") or "scripted",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })
