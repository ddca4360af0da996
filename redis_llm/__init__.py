"""redis-llm: LLM configs, vector stores and LLM apps as Redis keys.

The package holds the command logic that runs inside redis-server (loaded by
the C shim ``libredis-llm.so`` installed next to this file) and the
``redis-llm`` command-line tool.
"""

from pathlib import Path

__version__ = "0.1.0"

MODULE_FILENAME = "libredis-llm.so"


def module_path() -> str:
    """Absolute path of the Redis module to pass to ``loadmodule``."""
    path = Path(__file__).resolve().parent / MODULE_FILENAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: install the package with pip to build it")
    return str(path)


def __getattr__(name: str):
    # The client (redis-py, numpy) is imported on first use: redis-server
    # imports this package too, and has no use for it.
    if name == "Client":
        from redis_llm.client import Client
        return Client
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
