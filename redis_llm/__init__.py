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
