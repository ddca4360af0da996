"""Whether a new question asks what a reviewed question asked: the guard of
review serving.

A reviewed answer is served to a later question without calling the model
when the two questions are the same question. Embedding distance alone cannot
decide that: a near-miss (the same entity, another attribute; another year;
a negation; another entity with the same question shape) is often *closer*
to the reviewed question than an honest paraphrase, because the shared names
dominate both embeddings. So a question within the distance threshold is
served only if it also passes ``mismatch``:

1. numbers agree (years, quantities; "three" is 3), ordinals agree ("the
   second telescope" is not "the main telescope"), and they do not name
   opposite ends of a scale ("highest" against "lowest") or different
   measures ("top speed" against "weight"), nor does only one ask about
   the present ("today"),
2. both or neither are negated,
3. no name is swapped for another: a question may add or leave out a
   qualifying name ("the Quillmere Hotel in Port Averick"), but when both
   name something the other does not ("the Corriwell Bridge" against "the
   Marrowgate Bridge"), they are about different things. Names are the
   capitalised words mid-sentence, codes such as "XR-7" and compounds such
   as "redis-llm",
4. they ask for the same kind of answer, when both say: a person ("who",
   "by whom"), a time ("when", "in which year"), a place, a quantity ("how
   many", "how long"), a colour, a reason, a manner,
5. what is asked agrees: with the shared names masked out, the two
   questions' embeddings are still similar (``min_similarity``). Masking
   removes the part both share, so what is left is the question's shape and
   attribute: "When was X built?" against "In what year was X
   constructed?" stays close; against "How long is X?" it does not.

Checks 1-4 are pure text; check 5 embeds the two masked questions with the
app's embedder (one call, a worker thread). BENCHMARKS.md, "Answer quality",
has the measured effect of each threshold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

Embed = Callable[[list[str]], Sequence[np.ndarray]]

# Words (letters and digits: "Z4", "XR-7", "don't"), numbers ("1,200",
# "2.5") and punctuation.
_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+(?:['\u2019\-][^\W_]+)*|[^\w\s]", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*\Z")
_SENTENCE_END = {".", "?", "!", ":", ";"}
_NEGATIONS = {"not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without",
              "cannot", "except", "excluding", "nowhere"}
_NUMBER_WORDS = {word: str(value) for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60",
                      "seventy": "70", "eighty": "80", "ninety": "90", "hundred": "100",
                      "thousand": "1000", "million": "1000000", "billion": "1000000000",
                      "dozen": "12", "once": "1", "twice": "2", "single": "1", "double": "2",
                      "triple": "3", "half": "0.5"})
# Ordinals must agree like numbers: "the second album" is not "the first".
_ORDINALS = {word: f"#{n}" for n, word in enumerate(
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth"
    .split())}
_ORDINALS.update({"debut": "#1", "maiden": "#1", "inaugural": "#1", "last": "#last", "latest": "#last", "final": "#last", "next": "#next",
                  "previous": "#previous", "penultimate": "#penultimate"})
_ORDINAL_SUFFIX = re.compile(r"(\d+)(?:st|nd|rd|th)\Z")
# Opposite ends of a scale: a question may leave its end implied ("How deep
# is the lake?" asks for the maximum depth), but two questions naming
# different ends ask different things.
_POLES = {**dict.fromkeys(("highest", "largest", "biggest", "greatest", "maximum", "max", "most",
                           "top", "tallest", "longest", "oldest", "heaviest", "fastest", "best",
                           "upper", "widest", "deepest", "earliest"), "high"),
          **dict.fromkeys(("lowest", "smallest", "least", "minimum", "min", "bottom", "shortest",
                           "youngest", "newest", "lightest", "slowest", "worst", "lower",
                           "narrowest", "shallowest", "latest"), "low")}
# What a quantity measures: two questions that both name one must name the
# same ("top speed" is not "weight"); either may leave it implied.
_MEASURES = {**dict.fromkeys(("weigh", "weighs", "weight", "heavy", "heavier", "mass"), "weight"),
             **dict.fromkeys(("speed", "fast", "faster", "quick", "velocity"), "speed"),
             **dict.fromkeys(("tall", "height", "high"), "height"),
             **dict.fromkeys(("deep", "depth"), "depth"),
             **dict.fromkeys(("wide", "width", "broad", "diameter"), "width"),
             **dict.fromkeys(("old", "age"), "age"),
             **dict.fromkeys(("cost", "costs", "price", "expensive"), "price")}
# Words that put a question in the present; two questions of which only one
# does ("Where is it kept today?", "Where was it made?") ask different things.
_NOW = {"today", "now", "currently", "nowadays", "presently"}
# Capitalised words that start a question without naming anything.
_OPENERS = set("""what when where which who whom whose why how is are was were do does did can
could would should will shall may might has have had tell give name list describe explain show
in on at of for from by to the a an and or but if since during after before about please i we you
it its this that these those there here roughly approximately exactly""".split())
MASK = "X"
# What kind of answer a question asks for, read off its first question word
# (and the noun after "what" or "which"). Questions of unknown kind agree
# with any kind.
_KIND_OF_WORD = {"who": "person", "whom": "person", "whose": "person", "when": "time",
                 "where": "place", "why": "reason"}
_KIND_AFTER_HOW = dict.fromkeys(("many", "much", "long", "old", "tall", "high", "far", "big",
                                 "large", "heavy", "wide", "deep", "often", "fast", "short"),
                                "quantity")
_KIND_AFTER_WHAT = {
    **dict.fromkeys(("year", "month", "day", "date", "decade", "century", "time", "season"), "time"),
    **dict.fromkeys(("town", "city", "country", "place", "village", "region", "port", "street",
                     "location", "island", "county", "province", "state", "harbour", "harbor"),
                    "place"),
    **dict.fromkeys(("colour", "color", "shade"), "colour"),
    **dict.fromkeys(("material", "materials", "substance", "metal", "wood", "fabric", "stone"),
                    "material"),
    **dict.fromkeys(("company", "firm", "person", "man", "woman", "engineer", "architect",
                     "scientist", "painter", "artist", "author", "writer", "runner", "explorer",
                     "inventor", "composer", "player", "captain", "king", "queen"), "person"),
    **dict.fromkeys(("number", "amount", "quantity", "percentage", "size", "length", "height",
                     "weight", "distance", "price", "cost", "age"), "quantity"),
}


@dataclass(frozen=True)
class Terms:
    """The key terms of a question."""

    words: frozenset[str]    # every word, case-folded
    numbers: frozenset[str]  # normalised: "1,200" and "1200" agree, "three" is "3"
    negated: bool
    names: tuple[str, ...]   # name-like words, case-folded, in order
    kind: str | None         # the kind of answer asked for: person, time, place...
    ordinals: frozenset[str]  # "#1" for "first" and "1st", "#last"...
    poles: frozenset[str]     # "high" and/or "low": the ends of a scale named
    measures: frozenset[str]  # what quantities it names: weight, speed...
    now: bool                 # whether it asks about the present ("today")


def normalize(text: str) -> str:
    """A question as exact matching compares it: case-folded words and
    numbers, without punctuation or extra spaces."""
    return " ".join(token.casefold() for token in _TOKEN.findall(text)
                    if token[0].isalnum()).replace("\u2019", "'")


def terms(text: str) -> Terms:
    """The key terms of ``text`` the guard compares (see Terms)."""
    tokens = _TOKEN.findall(text.replace("\u2019", "'"))
    words, numbers, names, ordinals, poles, measures = set(), set(), [], set(), set(), set()
    negated = False
    start = True
    kind = _answer_kind([t.casefold() for t in tokens if t[0].isalnum()])
    for token in tokens:
        if not token[0].isalnum():
            start = token in _SENTENCE_END
            continue
        word = token.casefold()
        if word.endswith("'s"):
            word = word[:-2]
        words.add(word)
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            words.add(word[:-1])  # "tubas" names the Tuba Company too
        ordinal = _ORDINAL_SUFFIX.match(word)
        if _NUMBER.match(word):
            numbers.add(word.replace(",", ""))
        elif word in _NUMBER_WORDS:
            numbers.add(_NUMBER_WORDS[word])
        elif word in _ORDINALS or ordinal:
            ordinals.add(_ORDINALS.get(word) or "#" + ordinal.group(1))
        if word in _POLES:
            poles.add(_POLES[word])
        if word in _MEASURES:
            measures.add(_MEASURES[word])
        if word in _NEGATIONS or word.endswith("n't"):
            negated = True
        counting = ordinal or word in _ORDINALS or word in _NUMBER_WORDS
        if not counting and _name_like(token, start):
            names.append(word)
        start = False
    return Terms(frozenset(words), frozenset(numbers), negated, tuple(names), kind,
                 frozenset(ordinals), frozenset(poles), frozenset(measures), bool(words & _NOW))


def _answer_kind(words: list[str]) -> str | None:
    for i, word in enumerate(words):
        after = words[i + 1] if i + 1 < len(words) else ""
        if word in _KIND_OF_WORD:
            return _KIND_OF_WORD[word]
        if word == "how":
            return _KIND_AFTER_HOW.get(after, "manner")
        if word in ("what", "which"):
            return _KIND_AFTER_WHAT.get(after)
    return None


def _name_like(token: str, sentence_start: bool) -> bool:
    if _NUMBER.match(token):
        return False
    if any(ch.isdigit() for ch in token) or (len(token) > 1 and token.isupper()):
        return True  # a code or an acronym: XR-7, NASA
    if "-" in token.strip("-"):
        return True  # a compound, often a product or project: redis-llm, redis-py
    if not token[0].isupper():
        return False
    return not sentence_start or token.casefold() not in _OPENERS


def mismatch(asked: str, reviewed: str, embed: Embed | None = None,
             min_similarity: float = 0.0) -> str | None:
    """None when ``asked`` may be served the answer reviewed for
    ``reviewed``; otherwise the reason it may not. Without ``embed`` only
    the text checks run."""
    if normalize(asked) == normalize(reviewed):
        return None
    a, b = terms(asked), terms(reviewed)
    if a.numbers != b.numbers:
        return (f"the numbers differ ({', '.join(sorted(a.numbers)) or 'none'} against "
                f"{', '.join(sorted(b.numbers)) or 'none'})")
    # "first" alone may be an adverb ("who first swam it"); any other
    # ordinal must be in both.
    if (a.ordinals or b.ordinals) - {"#1"} and a.ordinals != b.ordinals or \
            a.ordinals and b.ordinals and a.ordinals != b.ordinals:
        return "the ordinals differ (first, second, last...)"
    if a.poles and b.poles and a.poles != b.poles:
        return "they ask for opposite ends (highest against lowest...)"
    if a.negated != b.negated:
        return "one question is negated and the other is not"
    if a.now != b.now:
        return "one question asks about the present (today, now) and the other does not"
    if a.measures and b.measures and a.measures != b.measures:
        return (f"they measure different things ({', '.join(sorted(a.measures))} against "
                f"{', '.join(sorted(b.measures))})")
    if a.kind and b.kind and a.kind != b.kind:
        return f"they ask for different things (a {a.kind} against a {b.kind})"
    only_asked = [name for name in a.names if name not in b.words]
    only_reviewed = [name for name in b.names if name not in a.words]
    if only_asked and only_reviewed:
        return f"the names differ ({only_asked[0]!r} against {only_reviewed[0]!r})"
    if embed is None or min_similarity <= 0:
        return None
    shared = set(a.names) | set(b.names)
    masked = [mask(asked, shared), mask(reviewed, shared)]
    vectors = embed(masked)
    similarity = cosine(vectors[0], vectors[1])
    if similarity < min_similarity:
        return (f"the questions ask different things (similarity {similarity:.2f} without "
                f"their shared names, below {min_similarity:g})")
    return None


def mask(text: str, names: set[str]) -> str:
    """``text`` with each run of the given names replaced by one placeholder."""
    out: list[str] = []
    for token in _TOKEN.findall(text.replace("\u2019", "'")):
        word = token.casefold()
        word = word[:-2] if word.endswith("'s") else word
        if word in names:
            if not out or out[-1] != MASK:
                out.append(MASK)
        else:
            out.append(token)
    text = re.sub(r" (?=[^\w\s])", "", " ".join(out))
    # A qualifying name one question adds ("X in X") masks like the one name.
    return _QUALIFIED.sub(MASK, text)


_QUALIFIED = re.compile(rf"{MASK}(?:,? (?:in|of|at|on|from|near|by) (?:the )?{MASK})+")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; 0 for vectors of other shapes or zero length."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        return 0.0
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b)) / norm if norm else 0.0
