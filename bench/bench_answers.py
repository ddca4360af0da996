"""Answer-quality benchmark (issue 14): retrieval, answers and review serving on invented facts.

The facts (bench/data/answer_facts.json) are invented for this project, so no
model knows them from training: each has a document, a question, its reviewed
answer, a key the answer must contain, two paraphrases and two near-misses
(different questions that must not get this fact's answer). For each embedder
compared, against a real redis-server with the module:

- retrieval@1 and @3: the documents in a vector store (LLM.ADD text, embedded
  by the store's LLM), each question and paraphrase queried with LLM.KNN text;
- answer accuracy of the local chat model (SmolLM2, a search app on that
  store), before any review: answers that contain the key;
- review serving: half the facts reviewed (LLM.REVIEW of the run's record with
  the fact's answer, score 99), then exact repeats, paraphrases, the other
  half's questions and paraphrases, and all near-misses are asked; each is
  served right (this fact's review), served wrong (any other review) or
  answered by the model, read from LLM.RUN --VERBOSE (served_from,
  served_review). At the module's default review settings, then across
  distance thresholds with the guard on and off (--REVIEW per app). These
  apps' chat LLM is the scripted OpenAI-compatible server of the tests
  (tests/openai_server.py), since serving is decided before any model call
  and the local model would only slow the sweep down; the store's LLM does
  the embedding with the embedder under test;
- cosine similarity of each question to its own paraphrases, to the nearest
  other fact's question and to its near-misses (min / median / max);
- latency per embedding: LLM.KNN with a text query against llama-cpp-python
  embedding the same text in this process with the same file and options,
  alternating, then in blocks. llama.cpp's OpenMP threads spin-wait by
  default, which on a busy machine swamps these figures: run with
  OMP_WAIT_POLICY=passive to compare the two sides (BENCHMARKS.md).

Usage: .venv/bin/python bench/bench_answers.py [--facts N] [--embedders default,smollm2]
       [--skip-accuracy] [--distances 0.05,0.1,...] [--guard-similarities 0.3,0.6]
       [--n-threads N] [--latency-queries 100] [--markdown FILE]
An embedder is `default` (LLM.CREATE-LLM --TYPE llamacpp with no params),
`smollm2` (`{"embedding": {"use_chat_model": true}}`: the chat model's
mean-pooled hidden states, the default before issue 14) or `file:PATH` (any
GGUF embedding model). Run it without PYTHONPATH: it measures the installed
package (a symlink to the tree in the dev venv). Each embedder's tables are
printed when it is done, and all of them together at the end.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import redis

import redis_llm
from redis_llm.providers import LLMModel
from redis_llm.testing import RedisServer

from common import machine, publish

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from openai_server import OpenAIServer  # noqa: E402  (the tests' scripted server)

FACTS_FILE = HERE / "data" / "answer_facts.json"
CHAT = {"temperature": 0, "max_tokens": 64}
SCORE = 99
DISTANCES = [0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5]
CATEGORIES = ["exact repeats", "paraphrases", "unreviewed", "near-misses"]
KINDS = ["attribute", "negation", "entity", "number"]


# ---- embedders --------------------------------------------------------------

def embedder_params(name: str) -> dict:
    """The LLM.CREATE-LLM --PARAMS (without chat) of an embedder's name."""
    if name == "default":
        return {}
    if name == "smollm2":
        # The default before issue 14: the chat model's hidden states, mean
        # pooled (what stores made then keep using).
        return {"embedding": {"use_chat_model": True}}
    if name.startswith("file:"):
        return {"embedding": {"model_path": name[5:]}}
    raise SystemExit(f"unknown embedder {name!r}: default, smollm2 or file:PATH")


def standalone(params: dict):
    """llama-cpp-python in this process, loaded with the options the module
    uses for this LLM's embeddings (see providers._load)."""
    import llama_cpp

    model = LLMModel("llamacpp", params)
    provider = model.provider()
    pooling = model.params["embedding"]["pooling"]
    n_ctx = getattr(provider, "embedding_n_ctx", model.params["n_ctx"])
    options = {"n_ctx": n_ctx, "verbose": False, "embedding": True,
               "pooling_type": {"none": 0, "mean": 1, "cls": 2, "last": 3}[pooling]}
    if model.params["n_threads"]:
        options["n_threads"] = model.params["n_threads"]
    return llama_cpp.Llama(model_path=provider.embedding_path, **options), provider.embedding_path


# ---- helpers ----------------------------------------------------------------

def verbose_dict(reply: list) -> dict:
    return {reply[i].decode(): reply[i + 1] for i in range(0, len(reply), 2)}


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else "" if value is None else str(value)


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def share(n: int, total: int) -> str:
    return f"{n}/{total} ({100 * n / total:.0f}%)" if total else "-"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def table(header: list[str], rows: list[list]) -> str:
    out = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    return out + "".join("| " + " | ".join(str(c) for c in row) + " |\n" for row in rows)


# ---- the measurements ---------------------------------------------------------

def fill_store(r, store: str, llm: str, facts: list[dict]) -> None:
    r.execute_command("LLM.CREATE-VECTOR-STORE", store, "--LLM", llm,
                      "--PARAMS", json.dumps({"metric": "cosine"}))
    for i, fact in enumerate(facts, 1):
        r.execute_command("LLM.ADD", store, "--ID", i, "--META", json.dumps({"fact": fact["id"]}),
                          fact["document"])


def retrieval(r, store: str, facts: list[dict]) -> dict:
    """Hits at 1 and 3 for questions and paraphrases."""
    hits = {"question": [0, 0, 0], "paraphrase": [0, 0, 0]}  # @1, @3, asked
    for i, fact in enumerate(facts, 1):
        for kind, q in [("question", fact["question"])] + [("paraphrase", p) for p in fact["paraphrases"]]:
            ids = [int(item[0]) for item in r.execute_command("LLM.KNN", store, "--K", 3, "--", q)]
            hits[kind][0] += ids[:1] == [i]
            hits[kind][1] += i in ids
            hits[kind][2] += 1
    return hits


def vectors(r, llm: str, texts: list[str]) -> list[np.ndarray]:
    """The module's embeddings of ``texts`` (LLM.ADD text, then LLM.GET)."""
    store = f"vectors:{llm}"
    r.execute_command("LLM.CREATE-VECTOR-STORE", store, "--LLM", llm,
                      "--PARAMS", json.dumps({"metric": "cosine"}))
    out = []
    for i, t in enumerate(texts, 1):
        r.execute_command("LLM.ADD", store, "--ID", i, t)
        out.append(np.array(text(r.execute_command("LLM.GET", store, i)[1]).split(","), dtype=np.float32))
    r.delete(store)
    return out


def similarities(r, llm: str, facts: list[dict]) -> dict:
    texts = []
    for fact in facts:
        texts += [fact["question"], *fact["paraphrases"], *(m["question"] for m in fact["near_misses"])]
    vecs = vectors(r, llm, texts)
    per = 5  # question, 2 paraphrases, 2 near-misses
    out = {"own paraphrase": [], "best other fact's question": [],
           "best other fact's question or paraphrase": [], "near-miss (all)": []}
    out.update({f"near-miss: {kind}": [] for kind in KINDS})
    for i, fact in enumerate(facts):
        q = vecs[i * per]
        out["own paraphrase"] += [cosine(q, vecs[i * per + k]) for k in (1, 2)]
        others = [j for j in range(len(facts)) if j != i]
        if others:
            out["best other fact's question"].append(max(cosine(q, vecs[j * per]) for j in others))
            out["best other fact's question or paraphrase"].append(
                max(cosine(q, vecs[j * per + k]) for j in others for k in (0, 1, 2)))
        for k, miss in enumerate(fact["near_misses"]):
            s = cosine(q, vecs[i * per + 3 + k])
            out["near-miss (all)"].append(s)
            out[f"near-miss: {miss['kind']}"].append(s)
    return out


def latency(r, store: str, llama, questions: list[str], count: int) -> dict:
    """Median ms per embedding: LLM.KNN text (embedding + search + round
    trip) and llama-cpp-python in this process; first alternating query by
    query, then in separate blocks (the server idle while the standalone
    block runs), as bench_llm.py does."""
    texts = [questions[i % len(questions)] for i in range(count)]
    r.execute_command("LLM.KNN", store, "--K", 3, "--", texts[0])  # warm-up
    llama.embed(texts[0])

    def served(t):
        start = time.perf_counter()
        r.execute_command("LLM.KNN", store, "--K", 3, "--", t)
        return time.perf_counter() - start

    def raw(t):
        start = time.perf_counter()
        llama.embed(t)
        return time.perf_counter() - start

    inter = [(served(t), raw(t)) for t in texts]
    raw_block = [raw(t) for t in texts]
    served_block = [served(t) for t in texts]
    ms = lambda values: statistics.median(values) * 1e3  # noqa: E731
    return {"served_ms": ms([s for s, _ in inter]), "raw_ms": ms([w for _, w in inter]),
            "served_block_ms": ms(served_block), "raw_block_ms": ms(raw_block)}


def accuracy(r, app: str, facts: list[dict]) -> dict:
    """The local chat model's answers to the questions, before any review."""
    right = in_context = right_in_context = 0
    for i, fact in enumerate(facts, 1):
        reply = verbose_dict(r.execute_command("LLM.RUN", app, "--VERBOSE", "--", fact["question"]))
        ok = fact["key"].lower() in text(reply["answer"]).lower()
        found = any(int(item[0]) == i for item in reply["items"])
        right += ok
        in_context += found
        right_in_context += ok and found
        print(f"  {fact['id']} {'ok ' if ok else 'no '} {text(reply['answer'])[:100]!r}", flush=True)
    return {"right": right, "asked": len(facts), "in_context": in_context,
            "right_in_context": right_in_context}


class Serving:
    """Half the facts reviewed in a search app; every question asked after."""

    def __init__(self, facts: list[dict]):
        self.facts = facts
        self.reviewed = list(range(0, len(facts), 2))
        self.unreviewed = list(range(1, len(facts), 2))
        self.wrong_examples: list[tuple[str, str, str]] = []  # (category, asked, review's question)

    def questions(self) -> list[tuple[str, str, int]]:
        """(category, question, fact index) of everything asked after the reviews."""
        out = []
        for i in self.reviewed:
            out.append(("exact repeats", self.facts[i]["question"], i))
            out += [("paraphrases", p, i) for p in self.facts[i]["paraphrases"]]
        for i in self.unreviewed:
            out += [("unreviewed", q, i) for q in [self.facts[i]["question"], *self.facts[i]["paraphrases"]]]
        for i, fact in enumerate(self.facts):
            out += [(f"near-miss: {m['kind']}", m["question"], i) for m in fact["near_misses"]]
        return out

    def run(self, r, app: str) -> dict:
        """Counts of right / wrong / model per category (near-misses per kind too)."""
        # Every reviewed question runs first and only then are they reviewed,
        # so no seeding run is itself served from an earlier review.
        records = {}
        for i in self.reviewed:
            reply = verbose_dict(r.execute_command("LLM.RUN", app, "--VERBOSE", "--", self.facts[i]["question"]))
            records[i] = int(reply["record"])
        for i, rid in records.items():
            r.execute_command("LLM.REVIEW", app, rid, "--ANSWER", self.facts[i]["answer"], "--SCORE", SCORE)
        by_record = {rid: i for i, rid in records.items()}
        by_answer = {self.facts[i]["answer"]: i for i in records}
        counts: dict[str, Counter] = {}
        for category, q, i in self.questions():
            reply = verbose_dict(r.execute_command("LLM.RUN", app, "--VERBOSE", "--", q))
            if text(reply["served_from"]) != "review":
                outcome = "model"
            else:
                if "served_review" in reply:
                    served = by_record.get(int(reply["served_review"]))
                else:  # older replies name no review: the reviewed answers are unique
                    served = by_answer.get(text(reply["answer"]))
                ok = served == i and category in ("exact repeats", "paraphrases")
                outcome = "right" if ok else "wrong"
                if not ok:
                    self.wrong_examples.append((category, q, self.facts[served]["question"]
                                                if served is not None else "?"))
            for name in {category, "near-misses" if category.startswith("near-miss") else category}:
                counts.setdefault(name, Counter())[outcome] += 1
        return counts


def guard_variants(args) -> list[tuple[str, dict]]:
    """The guard settings of the sweep: off, on at the module's default
    guard_similarity, and on at each --guard-similarities value."""
    out = [("off", {"guard": False}), ("on", {"guard": True})]
    out += [(f"on, similarity {g:g}", {"guard": True, "guard_similarity": g})
            for g in args.guard_similarities]
    return out


def bench_embedder(r, name: str, facts: list[dict], args) -> dict:
    params = {**embedder_params(name), "chat": dict(CHAT)}
    if args.n_threads:
        params["n_threads"] = args.n_threads
    llm, store = f"llm:{name}", f"store:{name}"
    r.execute_command("LLM.CREATE-LLM", llm, "--TYPE", "llamacpp", "--PARAMS", json.dumps(params))
    m: dict = {"name": name}
    print(f"[{name}] filling the store", flush=True)
    t = time.perf_counter()
    fill_store(r, store, llm, facts)
    m["fill_s"] = time.perf_counter() - t

    print(f"[{name}] retrieval", flush=True)
    m["retrieval"] = retrieval(r, store, facts)
    print(f"[{name}] similarities", flush=True)
    m["similarity"] = similarities(r, llm, facts)

    print(f"[{name}] latency", flush=True)
    llama, path = standalone(params)
    m["model"] = Path(path).name
    m["dim"] = len(llama.embed("dimension"))
    m["threads"] = f"{llama.n_threads} (batch {llama.n_threads_batch})"
    m["latency"] = latency(r, store, llama, [f["question"] for f in facts], args.latency_queries)
    del llama

    if not args.skip_accuracy:
        print(f"[{name}] accuracy of the local chat model ({len(facts)} questions)", flush=True)
        r.execute_command("LLM.CREATE-SEARCH", f"acc:{name}", "--LLM", llm, "--VECTOR-STORE", store)
        m["accuracy"] = accuracy(r, f"acc:{name}", facts)

    serving = Serving(facts)
    print(f"[{name}] serving at the module's default review settings", flush=True)
    app = f"serve:{name}"
    r.execute_command("LLM.CREATE-SEARCH", app, "--LLM", "api", "--VECTOR-STORE", store)
    m["serving"] = serving.run(r, app)
    m["wrong_examples"] = serving.wrong_examples
    first = verbose_dict(r.execute_command("LLM.RESULT", app, 1))
    m["embed_model"] = text(first.get("embed_model"))

    m["sweep"], m["sweep_wrong"] = {}, {}
    for label, guard in guard_variants(args):
        for d in args.distances:
            app = f"sweep:{name}:{label}:{d}"
            try:
                r.execute_command("LLM.CREATE-SEARCH", app, "--LLM", "api", "--VECTOR-STORE", store,
                                  "--REVIEW", json.dumps({"distance": d, **guard}))
            except redis.ResponseError as exc:
                if "guard" not in str(exc):
                    raise
                # A module without the guard: distance only, these rows left empty.
                print(f"[{name}] no guard in this module: {exc}", flush=True)
                m["sweep"][(label, d)] = None
                continue
            print(f"[{name}] sweep: guard {label}, distance {d}", flush=True)
            serving = Serving(facts)
            m["sweep"][(label, d)] = serving.run(r, app)
            for example in serving.wrong_examples:  # the smallest distance each was served at
                m["sweep_wrong"].setdefault((label, *example), d)
            r.delete(app)
    return m


# ---- the report ---------------------------------------------------------------

def report(results: list[dict], facts: list[dict], args, llama_version: str) -> str:
    half = len(Serving(facts).reviewed)
    out = [f"\n### Answer quality, {time.strftime('%Y-%m-%d')}, {len(facts)} facts\n\n"
           f"Machine: {machine(f'llama-cpp-python {llama_version}')}\n\n"
           f"{len(facts)} invented facts ({FACTS_FILE.relative_to(HERE.parent)}), {half} reviewed at score "
           f"{SCORE}; stores with metric cosine; K 3; llama.cpp threads "
           f"{results[0]['threads'] if results else '?'}. Embedders: "
           + "; ".join(f"`{m['name']}` = {m['model']} ({m['dim']}-d, records name "
                       f"`{m['embed_model'] or '?'}`)" for m in results) + ".\n\n"]

    rows = []
    for m in results:
        h = m["retrieval"]
        asked = h["question"][2] + h["paraphrase"][2]
        rows.append([m["name"], f"{(h['question'][0] + h['paraphrase'][0]) / asked:.3f}",
                     f"{(h['question'][1] + h['paraphrase'][1]) / asked:.3f}",
                     f"{h['question'][1] / h['question'][2]:.3f} / {h['paraphrase'][1] / h['paraphrase'][2]:.3f}",
                     *(f"{lat['served' + part]:.1f} / {lat['raw' + part]:.1f} ms "
                       f"({lat['served' + part] / lat['raw' + part]:.2f}x)"
                       for lat in [m["latency"]] for part in ("_ms", "_block_ms"))])
    out.append("Retrieval (questions and paraphrases) and latency per embedding (median of "
               f"{args.latency_queries}: LLM.KNN text, K 3, / llama-cpp-python's `embed` in this "
               "process on the same file with the same options (ratio), alternating query by query, "
               "then in separate blocks):\n\n")
    out.append(table(["embedder", "retrieval@1", "retrieval@3", "@3 questions / paraphrases",
                      "LLM.KNN / standalone, alternating", "in blocks"], rows) + "\n")

    if not args.skip_accuracy:
        rows = [[m["name"], share(a["right"], a["asked"]), share(a["in_context"], a["asked"]),
                 share(a["right_in_context"], a["in_context"])]
                for m in results for a in [m["accuracy"]]]
        out.append(f"Answer accuracy of the local chat model before any review (a search app, "
                   f"chat {json.dumps(CHAT)}; right = the answer contains the fact's key):\n\n")
        out.append(table(["embedder", "answers right", "fact's document in the context",
                          "right when it was"], rows) + "\n")

    rows = []
    for m in results:
        for category in CATEGORIES + [f"near-miss: {k}" for k in KINDS]:
            c = m["serving"].get(category, Counter())
            total = sum(c.values())
            rows.append([m["name"], category, share(c["right"], total), share(c["wrong"], total),
                         share(c["model"], total)])
    out.append("Review serving at the module's default review settings (the app's LLM is the "
               "scripted OpenAI-compatible server; serving is decided before any model call):\n\n")
    out.append(table(["embedder", "asked", "served right", "served wrong", "answered by the model"], rows)
               + "\n")
    for m in results:
        if m["wrong_examples"]:
            out.append(f"Served wrong with `{m['name']}` (first 8 of {len(m['wrong_examples'])}): "
                       + "; ".join(f"{c}: \"{q}\" got the review of \"{rq}\""
                                   for c, q, rq in m["wrong_examples"][:8]) + "\n\n")

    rows = []
    for m in results:
        s = m["similarity"]
        rows += [[m["name"], label, spread(values)] for label, values in s.items()]
    out.append("Cosine similarity of each question to (min / median / max):\n\n")
    out.append(table(["embedder", "to", "similarity"], rows) + "\n")

    rows = []
    for m in results:
        for (label, d), c in m["sweep"].items():
            if c is None:
                rows.append([m["name"], label, f"{d:g}", "(no guard in this module)", "", "", "", ""])
                continue
            got = {k: c.get(k, Counter()) for k in CATEGORIES + [f"near-miss: {k}" for k in KINDS]}
            rows.append([m["name"], label, f"{d:g}",
                         share(got["paraphrases"]["right"], sum(got["paraphrases"].values())),
                         share(got["near-misses"]["wrong"], sum(got["near-misses"].values())),
                         " / ".join(str(got[f"near-miss: {k}"]["wrong"]) for k in KINDS),
                         share(got["unreviewed"]["wrong"], sum(got["unreviewed"].values())),
                         share(got["exact repeats"]["right"], sum(got["exact repeats"].values()))])
    out.append("Trade-off across distance thresholds and guards (`--REVIEW '{\"distance\": d, "
               "\"guard\": ...}'` per app): paraphrases of reviewed questions served their review, "
               "near-misses served any review, unreviewed questions served another's review:\n\n")
    out.append(table(["embedder", "guard", "distance", "paraphrases served right", "near-misses served",
                      "of which attribute / negation / entity / number", "unreviewed served wrong",
                      "exact repeats served"], rows))
    for m in results:
        guarded = sorted((d, c, q, rq) for (label, c, q, rq), d in m["sweep_wrong"].items() if label == "on")
        if guarded:
            out.append(f"\nServed wrong with `{m['name']}` and the guard on (at the module's default "
                       "guard_similarity), with the smallest distance each was served at:\n\n")
            out += [f"- {d:g}, {c}: \"{q}\" got the review of \"{rq}\"\n" for d, c, q, rq in guarded]
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=0, help="use the first N facts (default: all)")
    parser.add_argument("--embedders", default="default,smollm2",
                        help="comma-separated: default, smollm2, file:PATH")
    parser.add_argument("--skip-accuracy", action="store_true", help="skip the slow local chat model")
    parser.add_argument("--distances", default=",".join(f"{d:g}" for d in DISTANCES),
                        help="distance thresholds of the sweep ('' to skip it)")
    parser.add_argument("--guard-similarities", default="",
                        help="also sweep the guard on at these guard_similarity values (comma-separated)")
    parser.add_argument("--n-threads", type=int, default=0,
                        help="the LLMs' n_threads (0: llama.cpp's default, as the module's)")
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--markdown", help="append the result to this file")
    args = parser.parse_args()
    args.distances = [float(d) for d in args.distances.split(",") if d.strip()]
    args.guard_similarities = [float(g) for g in args.guard_similarities.split(",") if g.strip()]
    facts = json.loads(FACTS_FILE.read_text())
    if args.facts:
        facts = facts[:args.facts]

    import llama_cpp
    print(f"redis_llm from {Path(redis_llm.__file__).parent}; {len(facts)} facts", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp, OpenAIServer(dim=8) as api:
        srv = RedisServer(Path(tmp), module_args=()).start()
        try:
            r = srv.client()  # socket_timeout 60 s: every command here is short
            r.execute_command("LLM.CREATE-LLM", "api", "--TYPE", "openai", "--PARAMS",
                              json.dumps({"api_key": "sk-bench", "base_url": api.url}))
            for name in args.embedders.split(","):
                results.append(bench_embedder(r, name.strip(), facts, args))
                # Each embedder's figures as soon as they exist; all of them together below.
                print(report(results[-1:], facts, args, llama_cpp.__version__), flush=True)
        finally:
            alive = srv.alive()
            srv.stop()
            if not alive:
                print(srv.log[-3000:], file=sys.stderr)
    publish(report(results, facts, args, llama_cpp.__version__), args.markdown)


if __name__ == "__main__":
    sys.exit(main())
