"""The invented fact set of the answer-quality benchmark (issue 14):
bench/data/answer_facts.json, used in full by bench/bench_answers.py and in
slices by the serving tests.

Checks its shape and the invariants the benchmark's figures rely on: every
question is unique across the file (a paraphrase or near-miss that repeated
another fact's question would make "served wrong" ambiguous), keys occur in
both the reviewed answer and the document, near-misses are of the kind they
claim, and the kinds are mixed evenly.
"""

import difflib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

FACTS_FILE = Path(__file__).resolve().parent.parent / "bench" / "data" / "answer_facts.json"
FIELDS = {"id", "document", "question", "answer", "key", "paraphrases", "near_misses"}
KINDS = {"attribute", "negation", "entity", "number"}
NUMBER_WORDS = {"first", "second", "third", "fourth", "fifth", "one", "two", "three", "four",
                "five", "six", "seven", "eight", "nine", "ten"}
NEGATIONS = re.compile(r"\b(not|never|without|no)\b|n't\b", re.I)


def load() -> list[dict]:
    return json.loads(FACTS_FILE.read_text())


def words(text: str) -> set[str]:
    return {w.removesuffix("'s") for w in re.findall(r"[\w'.-]+", text.lower())}


def names(text: str, first: bool = False) -> set[str]:
    """Capitalised words (after the first one, unless ``first``): the proper names in ``text``."""
    tokens = re.findall(r"[A-Za-z][\w'-]*", text)[0 if first else 1:]
    return {t.removesuffix("'s") for t in tokens if t[0].isupper()} - {"I"}


def numbers(text: str) -> set[str]:
    return {w for w in words(text) if any(c.isdigit() for c in w) or w in NUMBER_WORDS}


@pytest.fixture(scope="module")
def facts():
    return load()


def test_size_ids_and_fields(facts):
    assert isinstance(facts, list) and len(facts) >= 48
    ids = [f["id"] for f in facts]
    assert len(set(ids)) == len(ids), Counter(ids).most_common(3)
    for fact in facts:
        assert set(fact) == FIELDS, fact["id"]
        assert re.fullmatch(r"f\d{2,}", fact["id"]), fact["id"]
        for field in ("document", "question", "answer", "key"):
            assert isinstance(fact[field], str) and fact[field].strip(), (fact["id"], field)
        assert fact["question"].endswith("?"), fact["id"]
        assert 2 <= fact["document"].count(". ") + 1 <= 3, fact["id"]


def test_key_in_answer_and_document(facts):
    for fact in facts:
        key = fact["key"].lower()
        assert key in fact["answer"].lower(), fact["id"]
        assert key in fact["document"].lower(), fact["id"]
        assert key not in fact["question"].lower(), fact["id"]


def test_paraphrases_are_rewordings_not_copies(facts):
    for fact in facts:
        paras = fact["paraphrases"]
        assert len(paras) == 2 and all(p.endswith("?") for p in paras), fact["id"]
        for p in paras:
            ratio = difflib.SequenceMatcher(None, p.lower(), fact["question"].lower()).ratio()
            assert ratio < 0.9, (fact["id"], p, ratio)
            assert words(p) != words(fact["question"]), (fact["id"], p)
            # a paraphrase asks about the same entity: it repeats one of the question's names
            named = {n.lower() for n in names(fact["question"])}
            assert named & words(p) or not named, (fact["id"], p)
        assert paras[0].lower() != paras[1].lower(), fact["id"]


def test_near_misses_are_of_their_kind(facts):
    documents = " ".join(f["document"] for f in facts)
    for fact in facts:
        misses = fact["near_misses"]
        assert len(misses) == 2, fact["id"]
        assert misses[0]["kind"] != misses[1]["kind"], fact["id"]
        for miss in misses:
            kind, q = miss["kind"], miss["question"]
            assert set(miss) == {"kind", "question"} and kind in KINDS, fact["id"]
            assert q.endswith("?"), (fact["id"], q)
            if kind == "negation":
                assert NEGATIONS.search(q), (fact["id"], q)
            elif kind == "number":
                assert numbers(q) - numbers(fact["question"]), (fact["id"], q)
            elif kind == "entity":
                # another entity, named by something no document of the set names:
                # no other fact's review may be the right answer to it
                new = {n for n in names(q) if n not in fact["document"]}
                assert new, (fact["id"], q)
                assert not any(n in documents for n in new), (fact["id"], q, new)
            else:
                assert names(q) & names(fact["document"], first=True), (fact["id"], q)


def test_kinds_are_mixed_evenly(facts):
    kinds = Counter(m["kind"] for f in facts for m in f["near_misses"])
    assert set(kinds) == KINDS
    assert min(kinds.values()) >= 20, kinds


def test_every_question_is_unique(facts):
    asked = Counter(q.lower().strip() for f in facts
                    for q in [f["question"], *f["paraphrases"], *(m["question"] for m in f["near_misses"])])
    assert asked.most_common(1)[0][1] == 1, asked.most_common(3)
    keys = Counter(f["key"].lower() for f in facts)
    assert keys.most_common(1)[0][1] == 1, keys.most_common(3)
