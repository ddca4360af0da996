"""Recorded results and expert reviews: the review loop of an app.

Every LLM.RUN of an app (and every LLM.RECORD of an agent) leaves a record;
experts review records with a 0-100 confidence score, and reviewed answers
improve later answers: a review in the serve band answers the same question
again without calling the LLM; one in the context band goes first into a
search app's context. Records live in the app's value, so they are saved,
replicated and restored with it.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass

import numpy as np

from redis_llm.errors import LLMError
from redis_llm.parsing import MAX_DIM
from redis_llm.review_match import normalize

FIELDS = ("id", "app", "state", "question", "vars", "answer", "error", "model", "embed_model",
          "latency_ms", "prompt_tokens", "completion_tokens", "matches", "match_source",
          "match_page", "session", "tags", "meta", "created_at", "updated_at", "reviewed_answer",
          "reviewed_score", "reviewed_notes", "reviewer", "served_from", "served_review", "also",
          "never")
STATES = ("pending", "running", "done", "failed")
# The seed's confidence bands, lowest first: (name, lowest score).
BANDS = (("not confident", 0), ("somewhat confident", 65), ("confident", 80),
         ("a known fact", 95))
DEFAULT_LIMIT = 10000
# distance: the cosine distance within which a reviewed question may match a
# new one; guard: whether such a match must also pass review_match.mismatch,
# whose embedding check needs guard_similarity. BENCHMARKS.md, "Answer
# quality", has the measurements these defaults come from.
DEFAULT_REVIEW = {"serve_score": 95, "context_score": 80, "distance": 0.1, "guard": True,
                  "guard_similarity": 0.6}
_REVIEW_RANGES = {"serve_score": 100, "context_score": 100, "distance": 2.0, "guard_similarity": 1.0}
MAX_GUARD_QUESTIONS = 32  # --ALSO and --NEVER questions of one review, together
_JSON_FIELDS = {"vars", "matches", "meta", "also", "never"}
_FIELD_TYPES = {"id": int, "latency_ms": int, "prompt_tokens": int, "completion_tokens": int,
                "created_at": int, "updated_at": int, "match_page": object, "vars": object,
                "matches": object, "meta": object, "tags": list, "reviewed_score": float,
                "served_review": int, "also": list, "never": list}


def now_ms() -> int:
    return int(time.time() * 1000)


def band(score: float) -> str:
    return [name for name, low in BANDS if score >= low][-1]


def review_settings(given: dict | None) -> dict:
    """The bands and distance threshold of an app (``--REVIEW`` at creation)."""
    settings = dict(DEFAULT_REVIEW)
    for name, value in (given or {}).items():
        if name not in settings:
            raise LLMError(f"unknown --REVIEW field {name!r}; known: {', '.join(DEFAULT_REVIEW)}")
        if name == "guard":
            if not isinstance(value, bool):
                raise LLMError("--REVIEW field 'guard' must be true or false")
            settings[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LLMError(f"--REVIEW field {name!r} must be a number")
        high = _REVIEW_RANGES[name]
        if not 0 <= value <= high:
            raise LLMError(f"--REVIEW field {name!r} must be from 0 to {high:g}")
        settings[name] = value
    if settings["context_score"] > settings["serve_score"]:
        raise LLMError("--REVIEW context_score must not be above serve_score")
    return settings


class Records:
    """The newest ``limit`` records of an app, by id, plus the embeddings of
    their questions where known (for matching later questions)."""

    def __init__(self, limit: int = DEFAULT_LIMIT, review: dict | None = None):
        self.limit = limit
        self.review = review_settings(review)
        self.next_id = 1
        self.items: dict[int, dict] = {}
        self.vectors: dict[int, np.ndarray] = {}
        # The embeddings of a review's --ALSO and --NEVER questions, by record
        # id and question text.
        self.question_vectors: dict[int, dict[str, np.ndarray]] = {}
        # The reviewed records, by id: what runs match questions against,
        # without scanning every record under Redis' lock.
        self._reviewed: dict[int, dict] = {}
        # Their questions as exact matching compares them (own, --ALSO,
        # --NEVER), worked out once per review rather than once per run.
        self._normalized: dict[int, tuple[list[str], set[str]]] = {}
        # Pending or running records, and those of them whose run is a job
        # of this process (never saved: after a restart, a failover or a
        # reload, no run is).
        self._unfinished: set[int] = set()
        self.running: set[int] = set()

    def __len__(self) -> int:
        return len(self.items)

    def new(self, app_key: bytes, **fields) -> dict:
        """A new record (not stored yet: see put)."""
        stamp = now_ms()
        record = {"id": self.next_id, "app": app_key.decode("latin-1"), "created_at": stamp,
                  "updated_at": stamp, "state": "pending", **fields}
        self.next_id += 1
        return record

    def put(self, record: dict, vector: np.ndarray | None = None,
            question_vectors: dict | None = None) -> None:
        """Store (or replace) a record; the oldest go beyond the limit.
        ``question_vectors`` embeds the review's --ALSO and --NEVER questions
        (by text); without it, those already known for the record are kept."""
        if vector is not None:
            vector = _checked_vector(vector)
        rid = record["id"]
        texts = {*(record.get("also") or ()), *(record.get("never") or ())}
        known = self.question_vectors.get(rid, {}) if question_vectors is None else \
            {text: _checked_vector(v) for text, v in question_vectors.items()}
        known = {text: v for text, v in known.items() if text in texts}
        if known:
            self.question_vectors[rid] = known
        else:
            self.question_vectors.pop(rid, None)
        self.items[rid] = record
        if record.get("reviewed_score") is not None:
            self._reviewed[rid] = record
            self._normalized[rid] = (
                [normalize(q) for q in [record.get("question") or "", *(record.get("also") or ())]],
                {normalize(q) for q in record.get("never") or ()})
        else:
            self._reviewed.pop(rid, None)
            self._normalized.pop(rid, None)
        if record["state"] in ("pending", "running"):
            self._unfinished.add(rid)
        else:
            self._unfinished.discard(rid)
            self.running.discard(rid)
        self.next_id = max(self.next_id, rid + 1)
        if vector is not None:
            self.vectors[rid] = vector
        while len(self.items) > self.limit:
            oldest = next(iter(self.items))
            del self.items[oldest]
            self.vectors.pop(oldest, None)
            self.question_vectors.pop(oldest, None)
            self._reviewed.pop(oldest, None)
            self._normalized.pop(oldest, None)
            self._unfinished.discard(oldest)

    def orphans(self) -> list[dict]:
        """Pending or running records whose run no job of this process does:
        it was lost with a restart, a failover or a reload."""
        return [self.items[rid] for rid in sorted(self._unfinished - self.running)]

    def get(self, rid: int) -> dict | None:
        return self.items.get(rid)

    def query(self, state=None, reviewed=None, model=None, tag=None, session=None,
              min_score=None, max_score=None, since=None, until=None, text=None, count=10,
              offset=0) -> list[dict]:
        """Records matching every filter given, newest first. ``text`` matches
        question, answer or reviewed answer, ignoring case."""
        out = []
        skipped = 0
        needle = None if text is None else text.casefold()
        for record in reversed(self.items.values()):
            score = record.get("reviewed_score")
            if (state is not None and record.get("state") != state) or \
                    (reviewed is not None and (score is not None) != reviewed) or \
                    (model is not None and record.get("model") != model) or \
                    (tag is not None and tag not in record.get("tags", [])) or \
                    (session is not None and record.get("session") != session) or \
                    (min_score is not None and (score is None or score < min_score)) or \
                    (max_score is not None and (score is None or score > max_score)) or \
                    (since is not None and record["created_at"] < since) or \
                    (until is not None and record["created_at"] >= until) or \
                    (needle is not None and not _mentions(record, needle)):
                continue
            if skipped < offset:
                skipped += 1
                continue
            out.append(record)
            if len(out) >= count:
                break
        return out

    def reviewed(self, low: float, high: float = 101) -> list[dict]:
        return [r for r in self._reviewed.values() if low <= r["reviewed_score"] < high]

    def candidates(self, question: str, vector, embed_model: str | None, low: float,
                   high: float = 101) -> list[Candidate]:
        """Reviews in the score range [low, high) that may answer this
        question, nearest first: those whose question or one of whose --ALSO
        questions is this one (exact, ignoring case and punctuation), and,
        given its embedding, those whose questions lie within the distance
        threshold. A review is left out when the question is one of its
        --NEVER questions, or is at least as close to one of them as to its
        own questions. Embeddings are compared only when they come from the
        same model (``embed_model``; records of earlier versions name none).
        Non-exact candidates must still pass the guard (see review_match)."""
        asked = normalize(question)
        found = []
        for record in self.reviewed(low, high):
            rid = record["id"]
            never = record.get("never") or ()
            own_normalized, never_normalized = self._normalized[rid]
            if asked in never_normalized:
                continue
            own = [record.get("question") or "", *(record.get("also") or ())]
            if asked in own_normalized:
                found.append(Candidate(record, own[own_normalized.index(asked)], 0.0, True))
                continue
            if vector is None or not _same_model(record.get("embed_model"), embed_model):
                continue
            extra = self.question_vectors.get(rid, {})
            vectors = [(own[0], self.vectors.get(rid))] + [(text, extra.get(text)) for text in own[1:]]
            near = [(_cosine_distance(vector, v), text) for text, v in vectors if v is not None]
            if not near:
                continue
            distance, text = min(near)
            if distance > self.review["distance"]:
                continue
            if any(_cosine_distance(vector, extra[text]) <= distance for text in never if text in extra):
                continue
            found.append(Candidate(record, text, distance, False))
        return sorted(found, key=lambda c: (c.distance, -c.record["id"]))

    def has_reviews(self, low: float) -> bool:
        """Whether any review scores ``low`` or more."""
        return any(r["reviewed_score"] >= low for r in self._reviewed.values())

    def stats(self, interval: int | None = None) -> list:
        """LLM.STATS: counts by state and band, the mean score, per-model
        figures and, with ``interval`` (ms), results and reviewed results per
        interval of ``created_at``."""
        by_state = {state: 0 for state in STATES}
        by_band = {name: 0 for name, _ in BANDS}
        scores = []
        # model: [done, latency, prompt tokens, completion tokens, reviewed, score sum]
        models: dict[str, list] = {}
        buckets: dict[int, list] = {}
        for record in self.items.values():
            by_state[record["state"]] = by_state.get(record["state"], 0) + 1
            score = record.get("reviewed_score")
            if score is not None:
                scores.append(score)
                by_band[band(score)] += 1
            if record["state"] == "done":
                m = models.setdefault(record.get("model") or "", [0, 0, 0, 0, 0, 0])
                m[0] += 1
                m[1] += record.get("latency_ms") or 0
                m[2] += record.get("prompt_tokens") or 0
                m[3] += record.get("completion_tokens") or 0
                if score is not None:
                    m[4] += 1
                    m[5] += score
            if interval:
                bucket = buckets.setdefault(record["created_at"] // interval * interval, [0, 0])
                bucket[0] += 1
                bucket[1] += score is not None
        flat = lambda d: [x for k, v in d.items() for x in (k.encode(), v)]  # noqa: E731
        reply = [b"records", len(self.items), b"by_state", flat(by_state), b"by_band", flat(by_band),
                 b"reviewed", len(scores),
                 b"mean_score", _number(sum(scores) / len(scores)) if scores else b"",
                 b"models", [[name.encode(), count, _number(latency / count), prompt, completion,
                              reviewed, _number(total / reviewed) if reviewed else b""]
                             for name, (count, latency, prompt, completion, reviewed, total)
                             in sorted(models.items())]]
        if interval:
            reply += [b"over_time", [[start, results, reviewed]
                                     for start, (results, reviewed) in sorted(buckets.items())]]
        return reply

    # ---- persistence: part of the app's JSON state ----
    def state(self) -> dict:
        return {"limit": self.limit, "review": self.review, "next_id": self.next_id,
                "items": list(self.items.values()),
                "vectors": {str(rid): encode_vector(v) for rid, v in self.vectors.items()},
                "question_vectors": {str(rid): encode_vectors(texts)
                                     for rid, texts in self.question_vectors.items()}}

    @classmethod
    def from_state(cls, state: dict) -> Records:
        records = cls(state["limit"], state["review"])
        if not _count(records.limit):
            raise ValueError("bad record limit")
        for record in state["items"]:
            records.put(check_record(record))
        for rid, text in state["vectors"].items():
            records.vectors[int(rid)] = decode_vector(text)
        # Earlier versions kept no --ALSO/--NEVER questions.
        for rid, texts in state.get("question_vectors", {}).items():
            record = records.items.get(int(rid))
            if record is not None:
                records.put(record, None, decode_vectors(texts))
        if not _count(state["next_id"]) or state["next_id"] < records.next_id:
            raise ValueError("bad record counter")
        records.next_id = state["next_id"]
        return records


def source_text(source) -> str | None:
    """A best match's ``source`` as a record keeps it: text. An item's meta
    may hold any JSON value there; a number or an object is kept as its JSON."""
    if source is None or isinstance(source, str):
        return source
    return json.dumps(source, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def check_record(record) -> dict:
    """A record read back from RDB, RESTORE or LLM.RESULT-SET: right fields,
    right types. A non-text ``match_source`` or a negative token count,
    which earlier versions stored as they came, become text and 0, so their
    RDB files load."""
    if isinstance(record, dict) and "match_source" in record:
        record["match_source"] = source_text(record["match_source"])
    for name in ("prompt_tokens", "completion_tokens"):
        # Earlier versions kept a server's negative token count as it was.
        value = record.get(name) if isinstance(record, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            record[name] = 0
    if not isinstance(record, dict) or not set(record) <= set(FIELDS) or \
            not _count(record.get("id")) or record["id"] < 1 or \
            record.get("state") not in STATES or not _count(record.get("created_at")):
        raise LLMError("not a valid record")
    for name, value in record.items():
        if value is None:
            continue
        kind = _FIELD_TYPES.get(name, str)
        if kind is int and (not _count(value)):
            raise LLMError(f"not a valid record: {name}")
        if kind is str and not isinstance(value, str):
            raise LLMError(f"not a valid record: {name}")
        if kind is list and (not isinstance(value, list) or
                             not all(isinstance(t, str) for t in value)):
            raise LLMError(f"not a valid record: {name}")
    if len(record.get("also") or ()) + len(record.get("never") or ()) > MAX_GUARD_QUESTIONS:
        raise LLMError(f"a review takes at most {MAX_GUARD_QUESTIONS} --ALSO and --NEVER questions")
    score = record.get("reviewed_score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))
                              or not 0 <= score <= 100):
        raise LLMError("not a valid record: reviewed_score")
    return record


def reply(record: dict) -> list[bytes]:
    """A record as a flat field/value array, as HGETALL replies."""
    out = []
    for name in FIELDS:
        value = record.get(name)
        if value is None:
            text = b""
        elif name == "tags":
            text = ",".join(value).encode()
        elif name in _JSON_FIELDS or isinstance(value, (dict, list, bool)):
            # match_page may be any JSON value of the item's meta. Sorted
            # keys: the same bytes before and after a reload.
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                              sort_keys=True).encode()
        elif isinstance(value, float):
            text = _number(value)
        else:
            text = str(value).encode()
        out += [name.encode(), text]
    return out


@dataclass(frozen=True)
class Candidate:
    """A review that may answer a question: its record, which of its
    questions matched (the question or an --ALSO one), how far, and whether
    exactly."""

    record: dict
    question: str
    distance: float
    exact: bool


def guard_questions(values: list[bytes] | None, what: str) -> list[str] | None:
    """The --ALSO or --NEVER questions of LLM.REVIEW, as text; one empty
    value clears the list."""
    if values is None:
        return None
    texts = [value.decode("utf-8", "replace") for value in values]
    if texts == [""]:
        return []
    if not all(text.strip() for text in texts):
        raise LLMError(f"{what} questions must not be empty (a single {what} '' clears the list)")
    return list(dict.fromkeys(texts))


def encode_vectors(vectors: dict[str, np.ndarray]) -> dict[str, str]:
    return {text: encode_vector(v) for text, v in vectors.items()}


def decode_vectors(encoded) -> dict[str, np.ndarray]:
    if not isinstance(encoded, dict) or not all(isinstance(t, str) for t in encoded):
        raise ValueError("bad question vectors")
    return {text: decode_vector(v) for text, v in encoded.items()}


def _checked_vector(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    if vector.ndim != 1 or not 0 < vector.size <= MAX_DIM:
        raise LLMError(f"a record's question embedding must have 1 to {MAX_DIM} numbers")
    return vector


def _same_model(recorded: str | None, current: str | None) -> bool:
    # Records of earlier versions, and agents' LLM.RECORD, name no model.
    return not recorded or not current or recorded == current


def encode_vector(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def decode_vector(text: str) -> np.ndarray:
    if not isinstance(text, str) or len(text) > 4 * MAX_DIM * 4 // 3 + 4:
        raise ValueError("bad vector")
    raw = base64.b64decode(text, validate=True)
    if not raw or len(raw) % 4:
        raise ValueError("bad vector")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def _mentions(record: dict, needle: str) -> bool:
    return any(needle in (record.get(name) or "").casefold()
               for name in ("question", "answer", "reviewed_answer"))


def _number(value: float) -> bytes:
    return (b"%.6g" % value) if value != int(value) else b"%d" % int(value)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 2.0
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 1.0 - float(np.dot(a, b)) / norm if norm else 2.0
