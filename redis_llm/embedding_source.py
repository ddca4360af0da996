"""Which model made a vector, and the check that a vector store's vectors all
share one: distances between embeddings of two models mean nothing.

A vector comes from an ``Embedder`` (an LLM's provider, embedding text for
the store) or is ``Declared`` by the client that computed it
(``--EMBEDDING-MODEL``); an undeclared given embedding names no model and
is not checked. ``check_model`` refuses a source whose model is not the one
the store recorded (``VectorStore.other_model``).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis_llm.errors import LLMError
from redis_llm.parsing import MAX_MODEL_NAME_BYTES, shown
from redis_llm.store import VectorStore, valid_model_name


class Embedder:
    """An LLM's provider embedding text for a vector store, and the name of its
    embedding model (``model``, None when the LLM names none), which the
    store's vectors must share."""

    def __init__(self, provider, llm: bytes):
        self.provider = provider
        self.llm = llm
        name = provider.embedding_model
        if name and not valid_model_name(name):
            raise LLMError(f"the LLM at key {shown(llm)} names an embedding model of more than "
                           f"{MAX_MODEL_NAME_BYTES} bytes")
        self.model = name or None

    @property
    def embedding_model(self) -> str:
        return self.provider.embedding_model

    def embed(self, texts: list[str]) -> list:
        return self.provider.embed(texts)

    def describe(self) -> str:
        return f"the LLM at key {shown(self.llm)} embeds with {self.model!r}"


@dataclass(frozen=True)
class Declared:
    """The model a client says its --EMBEDDING or --EMBEDDING-BLOB came from."""

    model: str

    def describe(self) -> str:
        return f"the embedding given is of model {self.model!r}"


def check_model(store: VectorStore, key: bytes, source: Embedder | Declared | None) -> None:
    """Refuse a vector that ``source`` made with another model than the one
    whose embeddings the store at ``key`` holds."""
    recorded = store.other_model(source.model if source is not None else None)
    if recorded is not None:
        raise LLMError(f"the vector store at key {shown(key)} holds embeddings of model "
                       f"{recorded!r}; {source.describe()}")
