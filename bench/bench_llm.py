"""LLM benchmark: the local model inside redis-server, and Redis' latency under it.

One run, side by side:
- GET and LLM.SIZE latency (p50, p99, p99.9) from one client in a tight loop
  (GETs for --seconds, then LLM.SIZEs for --seconds), with the server idle
  (half before, half after the loaded phases), then while 8 clients run
  LLM.RUN in a loop on the local llama.cpp model (POOL_SIZE default); as a
  control, also while the same model runs standalone in another process
  (the server idle), which shows how much of the loaded figure is only the
  CPU being shared;
- tokens/s of the local model inside redis-server (LLM.RUN --VERBOSE,
  completion_tokens / wall time, one client, sequential) vs standalone
  llama-cpp-python in this process: the same model file, n_ctx, n_threads,
  messages and chat params, the two alternating prompt by prompt; then a
  standalone block and an in-server block run on their own.

Usage: .venv/bin/python bench/bench_llm.py [--runs 3] [--seconds 8] [--prompts 8]
       [--pace N] [--n-threads 0] [--no-control] [--markdown FILE]
Run it without PYTHONPATH: it measures the installed package.
Prints a table of medians over --runs and ratios; --markdown appends it to FILE.
"""

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

import redis_llm
from redis_llm.providers import LLMModel, default_model_path
from redis_llm.testing import RedisServer

from common import machine, publish

LOAD_CLIENTS = 8
CHAT = {"temperature": 0, "max_tokens": 64}
PROMPTS = [
    "What is Redis?",
    "Name three colours of the rainbow.",
    "Why is the sky blue?",
    "Give one tip for writing clear code.",
    "What does a cache do?",
    "Describe a cat in one sentence.",
    "What is the capital of France?",
    "How do plants make food?",
    "What is a prime number?",
    "Say hello in Spanish.",
    "What is water made of?",
    "Why do we sleep?",
]

# The standalone model as a separate process (the control load): loops over
# the prompts until killed; prints "ready" after its first completion.
_EXTERNAL_LOAD = """
import json, sys, llama_cpp
opts, chat, prompts = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
llama = llama_cpp.Llama(**opts)
i = 0
while True:
    llama.create_chat_completion(messages=[{"role": "user", "content": prompts[i % len(prompts)]}], **chat)
    if i == 0:
        print("ready", flush=True)
    i += 1
"""


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def verbose_dict(reply: list) -> dict:
    return {reply[i].decode(): reply[i + 1] for i in range(0, len(reply), 2)}


def _run_loop(port: int, stop, out) -> None:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=300)
    done = 0
    while not stop.is_set():
        client.execute_command("LLM.RUN", "app", PROMPTS[done % len(PROMPTS)])
        done += 1
    out.put(done)


def _timed(client: redis.Redis, command: tuple, seconds: float, pace: float) -> list[float]:
    """Latencies of ``command`` sent for ``seconds``: in a tight loop, or
    ``pace`` times a second when given."""
    lats, clock = [], time.perf_counter
    start = clock()
    deadline = start + seconds
    while clock() < deadline:
        if pace:
            wait = start + len(lats) / pace - clock()
            if wait > 0:
                time.sleep(wait)
        t = clock()
        client.execute_command(*command)
        lats.append(clock() - t)
    return lats


def latency_samples(client: redis.Redis, seconds: float, pace: float = 0) -> dict:
    """GET for ``seconds``, then LLM.SIZE for ``seconds`` (separate loops, so
    LLM.SIZE's wait for the GIL does not show in GET's figures)."""
    return {"get": _timed(client, ("GET", "k"), seconds, pace),
            "size": _timed(client, ("LLM.SIZE", "vs"), seconds, pace)}


def summary(samples: dict) -> dict:
    out = {}
    for name, lats in samples.items():
        out.update({f"{name}_p50": percentile(lats, 50), f"{name}_p99": percentile(lats, 99),
                    f"{name}_p999": percentile(lats, 99.9), f"{name}_ops": len(lats)})
    return out


def _busy_ticks() -> int:
    """CPU ticks the whole machine has spent busy (all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


def _ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


class OthersCPU:
    """How many cores processes other than this benchmark's (other sessions'
    tests on a shared machine) used during a phase."""

    def __init__(self, pids: list[int]):
        self.pids, self.t = pids, time.monotonic()
        self.busy, self.ours = _busy_ticks(), sum(_ticks(p) for p in pids)

    def cores(self) -> float:
        busy, ours = _busy_ticks() - self.busy, sum(_ticks(p) for p in self.pids) - self.ours
        return max(0.0, busy - ours) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - self.t)


def blocked_clients(client: redis.Redis) -> int:
    return int(client.info("clients")["blocked_clients"])


def standalone_run(llama, chat: dict, prompt: str) -> tuple[int, float, str]:
    t = time.perf_counter()
    out = llama.create_chat_completion(messages=[{"role": "user", "content": prompt}], **chat)
    wall = time.perf_counter() - t
    return int(out["usage"]["completion_tokens"]), wall, out["choices"][0]["message"]["content"]


def server_run(client: redis.Redis, prompt: str) -> tuple[int, float, str]:
    t = time.perf_counter()
    reply = verbose_dict(client.execute_command("LLM.RUN", "app", "--VERBOSE", prompt))
    wall = time.perf_counter() - t
    return int(reply["completion_tokens"]), wall, reply["answer"].decode()


def tokens_per_s(results: list[tuple[int, float, str]]) -> float:
    return sum(r[0] for r in results) / sum(r[1] for r in results)


def bench_once(run: int, args, llama, llama_opts: dict, chat: dict, params: dict) -> dict:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    m = {}
    with tempfile.TemporaryDirectory() as tmp:
        srv = RedisServer(Path(tmp), module_args=()).start()
        try:
            client = srv.client()  # socket_timeout 60 s
            client.execute_command("LLM.CREATE-LLM", "local", "--TYPE", "llamacpp",
                                   "--PARAMS", json.dumps(params))
            client.execute_command("LLM.CREATE-APP", "app", "--LLM", "local", "--PROMPT", "{{input}}")
            client.execute_command("LLM.CREATE-VECTOR-STORE", "vs")
            for i in range(10):
                client.execute_command("LLM.ADD", "vs", "--EMBEDDING", f"{i},1,2,3", f"doc-{i}")
            client.set("k", "v" * 16)
            assert client.execute_command("LLM.SIZE", "vs") == 10
            # Warm up: loads the model inside the server; checks the prompt is the input.
            warm = verbose_dict(client.execute_command("LLM.RUN", "app", "--VERBOSE", prompts[0]))
            assert warm["prompt"].decode() == prompts[0], warm["prompt"]

            # The idle figures pool a half-length phase here and one at the end
            # (after the load), so drift on the shared machine hits both sides.
            print(f"run {run}: idle latency, first half", flush=True)
            ours = [os.getpid(), srv.process.pid]
            others = OthersCPU(ours)
            idle = latency_samples(client, args.seconds / 2, args.pace)
            idle_others = [others.cores()]

            print(f"run {run}: tokens/s, interleaved ({len(prompts)} prompts each)", flush=True)
            inter_srv, inter_raw, same = [], [], 0
            for i, prompt in enumerate(prompts):
                # Alternate which goes first, so neither always follows the other.
                pair = [lambda: standalone_run(llama, chat, prompt), lambda: server_run(client, prompt)]
                if i % 2:
                    pair.reverse()
                a, b = pair[0](), pair[1]()
                raw, served = (a, b) if i % 2 == 0 else (b, a)
                inter_raw.append(raw)
                inter_srv.append(served)
                same += raw[2] == served[2]
            m["tps_server_inter"] = tokens_per_s(inter_srv)
            m["tps_raw_inter"] = tokens_per_s(inter_raw)
            m["tokens_per_completion"] = statistics.mean(r[0] for r in inter_srv)
            m["same_answers"] = same / len(prompts)

            print(f"run {run}: tokens/s, standalone block then in-server block", flush=True)
            m["tps_raw_block"] = tokens_per_s([standalone_run(llama, chat, p) for p in prompts])
            m["tps_server_block"] = tokens_per_s([server_run(client, p) for p in prompts])

            if not args.no_control:
                print(f"run {run}: latency while the model runs in another process", flush=True)
                ext = subprocess.Popen([sys.executable, "-c", _EXTERNAL_LOAD, json.dumps(llama_opts),
                                        json.dumps(chat), json.dumps(PROMPTS)],
                                       stdout=subprocess.PIPE, text=True)
                try:
                    assert ext.stdout.readline().strip() == "ready"
                    others = OthersCPU(ours + [ext.pid])
                    samples = latency_samples(client, args.seconds, args.pace)
                    m["ext_others"] = others.cores()
                    m.update({f"ext_{k}": v for k, v in summary(samples).items()})
                finally:
                    ext.kill()
                    ext.wait()

            print(f"run {run}: latency under {LOAD_CLIENTS} clients running LLM.RUN", flush=True)
            stop, out = multiprocessing.Event(), multiprocessing.Queue()
            workers = [multiprocessing.Process(target=_run_loop, args=(srv.port, stop, out))
                       for _ in range(LOAD_CLIENTS)]
            for w in workers:
                w.start()
            deadline = time.monotonic() + 30
            while blocked_clients(client) < LOAD_CLIENTS and time.monotonic() < deadline:
                time.sleep(0.05)
            assert blocked_clients(client) >= LOAD_CLIENTS, "the load did not start"
            before = client.info("commandstats").get("cmdstat_llm.run", {}).get("calls", 0)
            t = time.perf_counter()
            others = OthersCPU(ours + [w.pid for w in workers])
            samples = latency_samples(client, args.seconds, args.pace)
            m["load_others"] = others.cores()
            m.update({f"load_{k}": v for k, v in summary(samples).items()})
            runs_done = client.info("commandstats")["cmdstat_llm.run"]["calls"] - before
            m["load_run_rate"] = runs_done / (time.perf_counter() - t)
            m["load_blocked_after"] = blocked_clients(client)
            stop.set()
            # Each client finishes its current LLM.RUN; the server then stops.
            for _ in workers:
                out.get(timeout=300)
            for w in workers:
                w.join()
            print(f"run {run}: idle latency, second half", flush=True)
            others = OthersCPU(ours)
            for name, lats in latency_samples(client, args.seconds / 2, args.pace).items():
                idle[name] += lats
            m["idle_others"] = (idle_others[0] + others.cores()) / 2
            m.update({f"idle_{k}": v for k, v in summary(idle).items()})
            # The machine is shared: the 1-minute load average (this run's own
            # load included) shows how busy it was.
            m["loadavg"] = os.getloadavg()[0]
        finally:
            srv.stop()
    return m




def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 0.01 else f"{seconds * 1e3:.1f} ms"


def rows_of(m: dict, control: bool) -> list:
    def ratio_row(measure, idle, loaded, aim_ratio=None, aim_abs=None, note=""):
        ratio = loaded / idle
        if aim_ratio is not None:
            aim = ("met" if ratio <= aim_ratio else
                   f"missed: {ratio:.2f}x vs {aim_ratio}x")
        elif aim_abs is not None:
            aim = "met" if loaded < aim_abs else f"missed by {ms(loaded - aim_abs)}"
        else:
            aim = ""
        return (measure, ms(loaded), f"idle {ms(idle)}", f"{ratio:.2f}x", aim or note)

    rows = [
        ratio_row(f"GET p50, {LOAD_CLIENTS} clients in LLM.RUN", m["idle_get_p50"], m["load_get_p50"]),
        ratio_row(f"GET p99, {LOAD_CLIENTS} clients in LLM.RUN", m["idle_get_p99"], m["load_get_p99"],
                  aim_ratio=1.2),
        ratio_row(f"LLM.SIZE p50, {LOAD_CLIENTS} clients in LLM.RUN", m["idle_size_p50"],
                  m["load_size_p50"]),
        ratio_row(f"LLM.SIZE p99, {LOAD_CLIENTS} clients in LLM.RUN", m["idle_size_p99"],
                  m["load_size_p99"], aim_abs=5e-3),
    ]
    if control:
        rows += [
            ratio_row("GET p99, model running in another process (control)", m["idle_get_p99"],
                      m["ext_get_p99"]),
            ratio_row("LLM.SIZE p99, model running in another process (control)",
                      m["idle_size_p99"], m["ext_size_p99"]),
        ]
    rows += [
        ratio_row(f"GET p99.9, {LOAD_CLIENTS} clients in LLM.RUN", m["idle_get_p999"],
                  m["load_get_p999"]),
        ratio_row(f"LLM.SIZE p99.9, {LOAD_CLIENTS} clients in LLM.RUN", m["idle_size_p999"],
                  m["load_size_p999"]),
        ("GETs / LLM.SIZEs timed per phase, under load",
         f"{m['load_get_ops']:.0f} / {m['load_size_ops']:.0f}",
         f"idle {m['idle_get_ops']:.0f} / {m['idle_size_ops']:.0f}", "", ""),
        ("CPU used by other processes during the phase: loaded (control)",
         f"{m['load_others']:.2f} cores" + (f" ({m['ext_others']:.2f})" if control else ""),
         f"idle {m['idle_others']:.2f} cores", "", ""),
        ("LLM.RUN rate under the load", f"{m['load_run_rate']:.2f} runs/s", "", "", ""),
        ("tokens/s, interleaved with standalone", f"{m['tps_server_inter']:.1f} tok/s",
         f"standalone {m['tps_raw_inter']:.1f} tok/s", f"{m['tps_server_inter'] / m['tps_raw_inter']:.2f}x",
         "met" if m["tps_server_inter"] >= 0.9 * m["tps_raw_inter"] else
         f"missed: {m['tps_server_inter'] / m['tps_raw_inter']:.2f}x vs 0.9x"),
        ("tokens/s, separate blocks (server idle for standalone)", f"{m['tps_server_block']:.1f} tok/s",
         f"standalone {m['tps_raw_block']:.1f} tok/s", f"{m['tps_server_block'] / m['tps_raw_block']:.2f}x",
         "met" if m["tps_server_block"] >= 0.9 * m["tps_raw_block"] else
         f"missed: {m['tps_server_block'] / m['tps_raw_block']:.2f}x vs 0.9x"),
        ("completion tokens per answer (mean); same answers", f"{m['tokens_per_completion']:.1f}",
         "", f"{m['same_answers'] * 100:.0f}% identical", ""),
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are shown")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="per latency phase: seconds of GETs, then as many of LLM.SIZE")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per tokens/s measurement")
    parser.add_argument("--pace", type=float, default=0,
                        help="send GETs / LLM.SIZEs this many times a second (default: a tight loop)")
    parser.add_argument("--n-threads", type=int, default=0,
                        help="the model's n_threads (0: llama.cpp's default, as the module's)")
    parser.add_argument("--no-control", action="store_true",
                        help="skip the control phase (the model in another process)")
    parser.add_argument("--markdown", help="append the result table to this file")
    args = parser.parse_args()

    params = {"chat": dict(CHAT)}
    if args.n_threads:
        params["n_threads"] = args.n_threads
    # What the module makes of these params (defaults filled in): the
    # standalone side uses exactly the same options.
    model = LLMModel("llamacpp", params)
    path = model.params["model_path"] or default_model_path()
    llama_opts = {"model_path": path, "n_ctx": model.params["n_ctx"], "verbose": False}
    if model.params["n_threads"]:
        llama_opts["n_threads"] = model.params["n_threads"]
    chat = {k: v for k, v in model.params["chat"].items() if k != "model"}

    import llama_cpp
    llama = llama_cpp.Llama(**llama_opts)
    standalone_run(llama, chat, PROMPTS[0])  # warm-up
    print(f"redis_llm from {Path(redis_llm.__file__).parent}\nmodel {path}\n"
          f"llama options {llama_opts} (n_threads used: {llama.n_threads}, "
          f"n_threads_batch: {llama.n_threads_batch})\nchat {chat}", flush=True)

    runs = [bench_once(i + 1, args, llama, llama_opts, chat, params) for i in range(args.runs)]
    for i, run in enumerate(runs, 1):
        print(f"run {i}: " + ", ".join(f"{k}={v:.6g}" for k, v in run.items()))
    med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}

    header = "| measure | redis-llm | reference | ratio | aim |\n|---|---|---|---|---|\n"
    table = header + "".join("| " + " | ".join(row) + " |\n" for row in rows_of(med, not args.no_control))
    loads = ", ".join(f"{run['loadavg']:.1f}" for run in runs)
    threads = args.n_threads or f"default ({llama.n_threads}; batch {llama.n_threads_batch})"
    text = (f"\n### LLMs, {time.strftime('%Y-%m-%d')}, median of {args.runs} runs\n\n"
            f"Machine: {machine(f'llama-cpp-python {llama_cpp.__version__}')}\n\n"
            f"Model: {Path(path).name}, n_ctx {llama_opts['n_ctx']}, n_threads {threads}, "
            f"chat {json.dumps(chat)}; {args.seconds:g} s per latency phase "
            f"({f'{args.pace:g} requests/s' if args.pace else 'tight loop'}), "
            f"{args.prompts} prompts per tokens/s figure; 1-minute load average at the end "
            f"of each run: {loads}.\n\n{table}")
    publish(text, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
