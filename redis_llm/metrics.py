"""Counters behind the ``llm`` section of INFO.

Workers and Redis' main thread both count, so every change takes a lock: it
costs far less than the model call it counts. Counters live in the server
process and start at zero when it starts, like Redis' own INFO stats.
"""

import threading
from collections import defaultdict

PROVIDER_FIELDS = ("requests", "errors", "retries", "prompt_tokens", "completion_tokens")


class Counters:
    """Named integer counters, safe to bump from any thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._values: dict[str, int] = defaultdict(int)

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._values[name] += amount

    def get(self, name: str) -> int:
        return self._values.get(name, 0)


# Per provider type ("openai", "azure_openai", "llamacpp"): a request is one
# chat or embedding call, whatever its retries; an error is a call that
# failed in the end; retries are the attempts after the first.
providers: dict[str, Counters] = {}

# Records and reviews: created, reviewed, and answers served from a review.
records = Counters()


def provider_call(kind: str):
    """Count one call of a provider of type ``kind``: use as ``with provider_call(kind) as call``."""
    # setdefault, not a defaultdict: two workers making the first call of a
    # type at once must not each get counters of their own.
    return _Call(providers.get(kind) or providers.setdefault(kind, Counters()))


class _Call:
    def __init__(self, counters: Counters):
        self.counters = counters

    def __enter__(self) -> "_Call":
        self.counters.add(requests=1)
        return self

    def retried(self) -> None:
        self.counters.add(retries=1)

    def tokens(self, prompt: int, completion: int) -> None:
        self.counters.add(prompt_tokens=prompt, completion_tokens=completion)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.counters.add(errors=1)


def provider_fields(kinds) -> list[tuple[str, int]]:
    """``<type>_<counter>`` fields for each provider type in ``kinds``."""
    return [(f"{kind}_{name}", providers[kind].get(name) if kind in providers else 0)
            for kind in kinds for name in PROVIDER_FIELDS]


def record_fields() -> list[tuple[str, int]]:
    return [(f"records_{name}", records.get(name)) for name in ("created", "reviewed", "served")]
