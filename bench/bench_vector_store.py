"""Vector store benchmark: redis-llm inside redis-server vs the references.

One run, same data, side by side:
- LLM.KNN through redis-py (1 client; 8 client processes) vs raw hnswlib
  knn_query in-process with the same M, ef_construction and ef; recall@10 of
  both against exact search;
- LLM.ADD throughput vs raw add_items (one item per call, and batched);
- DEBUG RELOAD time vs raw save_index + load_index;
- MEMORY USAGE (and the server's RSS growth) vs the raw index;
- LLM.SIZE vs SCARD (a native O(1) read of the same shape) with
  redis-benchmark, 50 clients, pipeline 16.

Usage: .venv/bin/python bench/bench_vector_store.py [--quick] [--markdown FILE]
Prints a table of figures and ratios; --markdown appends it to FILE.
"""

import argparse
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import hnswlib
import numpy as np
import redis

from redis_llm.testing import RedisServer

from common import machine, publish

M, EF_CONSTRUCTION, K = 16, 200, 10


def clustered(n: int, queries: int, dim: int, clusters: int, seed: int):
    """``n`` points and ``queries`` further points drawn around the same centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (clusters, dim)).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        labels = rng.integers(0, clusters, count)
        return (centres[labels] + rng.normal(0, 0.35, (count, dim))).astype(np.float32)

    return draw(n), draw(queries)


def exact_knn(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    norms = (data * data).sum(1)
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 100):
        q = queries[start:start + 100]
        d = norms[None, :] - 2 * q @ data.T
        part = np.argpartition(d, k, axis=1)[:, :k]
        order = np.take_along_axis(d, part, 1).argsort(1)
        out[start:start + 100] = np.take_along_axis(part, order, 1)
    return out


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    hits = sum(len(set(f) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))


def raw_index_memory(index: hnswlib.Index, n: int) -> int:
    """RSS growth of a fresh process loading this index: its size in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.bin")
        index.save_index(path)
        script = ("import hnswlib, re, sys\n"
                  "def rss(): return int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
                  f"before = rss(); i = hnswlib.Index('l2', {index.dim}); i.load_index(sys.argv[1], max_elements={n})\n"
                  "print((rss() - before) * 1024)\n")
        out = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, check=True)
        return int(out.stdout)


def _knn_worker(port: int, queries: np.ndarray, ef: int, seconds: float, out) -> None:
    client = redis.Redis(port=port)
    blobs = [q.astype("<f4").tobytes() for q in queries]
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        client.execute_command("LLM.KNN", "vs", "--K", K, "--EF", ef,
                               "--EMBEDDING-BLOB", blobs[done % len(blobs)])
        done += 1
    out.put(done)


def knn_qps(port: int, queries: np.ndarray, ef: int, clients: int, seconds: float) -> float:
    out = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_knn_worker, args=(port, queries, ef, seconds, out))
               for _ in range(clients)]
    for w in workers:
        w.start()
    total = sum(out.get() for _ in workers)
    for w in workers:
        w.join()
    return total / seconds


def redis_benchmark_rps(port: int, *command: str) -> float:
    result = subprocess.run(["redis-benchmark", "-p", str(port), "-c", "50", "-P", "16",
                             "-n", "2000000", "-q", *command],
                            capture_output=True, text=True, check=True)
    return float(re.search(r"([\d.]+) requests per second", result.stdout).group(1))


def bench_dataset(name: str, data: np.ndarray, queries: np.ndarray, ef: int, quick: bool) -> list:
    n, dim = data.shape
    print(f"\n== {name}: {n} x {dim}, M={M} ef_construction={EF_CONSTRUCTION} ef={ef}", flush=True)
    truth = exact_knn(data, queries, K)

    # -- raw hnswlib, in-process, one item per call (what LLM.ADD does)
    raw = hnswlib.Index("l2", dim)
    raw.init_index(max_elements=n, M=M, ef_construction=EF_CONSTRUCTION)
    raw.set_num_threads(1)
    t = time.perf_counter()
    for i in range(n):
        raw.add_items(data[i:i + 1], [i + 1])
    raw_add = n / (time.perf_counter() - t)
    raw.set_ef(ef)
    raw_rss = raw_index_memory(raw, n)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.bin")
        t = time.perf_counter()
        raw.save_index(path)
        loaded = hnswlib.Index("l2", dim)
        loaded.load_index(path, max_elements=n)
        raw_reload = time.perf_counter() - t
        raw_bytes = os.path.getsize(path)
        # Redis fsyncs every RDB it writes: the same durability for the raw index.
        t = time.perf_counter()
        raw.save_index(path)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        loaded = hnswlib.Index("l2", dim)
        loaded.load_index(path, max_elements=n)
        raw_reload_fsync = time.perf_counter() - t
    del loaded

    # -- redis-llm inside redis-server
    with tempfile.TemporaryDirectory() as tmp:
        srv = RedisServer(Path(tmp), module_args=()).start()
        try:
            client = srv.client()
            rss_before = rss_kb(srv.process.pid)
            client.execute_command("LLM.CREATE-VECTOR-STORE", "vs", "--PARAMS",
                                   f'{{"max_elements": {n}, "m": {M}, '
                                   f'"ef_construction": {EF_CONSTRUCTION}, "ef": {ef}}}')
            pipe = client.pipeline(transaction=False)
            t = time.perf_counter()
            for i in range(n):
                pipe.execute_command("LLM.ADD", "vs", "--ID", i + 1, "--EMBEDDING-BLOB",
                                     data[i].astype("<f4").tobytes(), f"doc-{i}")
                if i % 500 == 499:
                    pipe.execute()
            pipe.execute()
            llm_add = n / (time.perf_counter() - t)
            rss_growth = (rss_kb(srv.process.pid) - rss_before) * 1024
            memory_usage = client.memory_usage("vs")

            ping = []
            for _ in range(1000):
                t = time.perf_counter()
                client.ping()
                ping.append(time.perf_counter() - t)
            ping_lat = statistics.median(ping)
            # Raw and served queries alternate, so both see the same (shared,
            # noisy) machine.
            lat, found, raw_lats, raw_found = [], [], [], []
            blobs = [q.astype("<f4").tobytes() for q in queries]
            client.config_resetstat()
            for q, blob in zip(queries, blobs):
                t = time.perf_counter()
                labels, _ = raw.knn_query(q, k=K)
                raw_lats.append(time.perf_counter() - t)
                raw_found.append([int(x) - 1 for x in labels[0]])
                t = time.perf_counter()
                reply = client.execute_command("LLM.KNN", "vs", "--K", K, "--EMBEDDING-BLOB", blob)
                lat.append(time.perf_counter() - t)
                found.append([int(item[0]) - 1 for item in reply])
            llm_lat = statistics.median(lat)
            raw_lat = statistics.median(raw_lats)
            server_us = client.info("commandstats")["cmdstat_llm.knn"]["usec_per_call"]
            llm_recall = recall(found, truth)
            raw_recall = recall(raw_found, truth)
            qps1 = len(queries) / sum(lat)
            qps8 = knn_qps(srv.port, queries, ef, 8, 3 if quick else 8)

            reloads = {}
            for compression in ("yes", "no"):
                client.config_set("rdbcompression", compression)
                t = time.perf_counter()
                client.execute_command("DEBUG", "RELOAD")
                reloads[compression] = time.perf_counter() - t
            client.config_set("rdbcompression", "yes")
            llm_reload = reloads["yes"]
            assert client.execute_command("LLM.SIZE", "vs") == n

            client.sadd("set", *range(n if n < 1000 else 1000))
            size_rps = redis_benchmark_rps(srv.port, "LLM.SIZE", "vs")
            native_rps = redis_benchmark_rps(srv.port, "SCARD", "set")
        finally:
            srv.stop()

    return dict(llm_lat=llm_lat, raw_lat=raw_lat, ping_lat=ping_lat, server_us=server_us,
                qps1=qps1, qps8=qps8, llm_recall=llm_recall, raw_recall=raw_recall,
                llm_add=llm_add, raw_add=raw_add, llm_reload=llm_reload, reload_no=reloads["no"],
                raw_reload=raw_reload, raw_reload_fsync=raw_reload_fsync,
                memory_usage=memory_usage, raw_rss=raw_rss, rss_growth=rss_growth,
                raw_bytes=raw_bytes, size_rps=size_rps, native_rps=native_rps)


def median_metrics(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def rows_of(name: str, m: dict) -> list:
    """The table rows of one data set, from (median) metrics."""
    m = SimpleNamespace(**m)
    us = 1e6
    aim_lat = m.raw_lat + m.ping_lat + 20e-6
    return [
        (name, "KNN latency, 1 client (median)", f"{m.llm_lat * us:.0f} µs",
         f"raw {m.raw_lat * us:.0f} µs + PING {m.ping_lat * us:.0f} µs",
         f"{(m.llm_lat - m.raw_lat - m.ping_lat) * us:+.0f} µs over raw+PING",
         "met" if m.llm_lat <= aim_lat else f"missed by {(m.llm_lat - aim_lat) * us:.0f} µs"),
        (name, "KNN time inside the server (mean) vs raw (median)", f"{m.server_us:.0f} µs",
         f"raw knn_query {m.raw_lat * us:.0f} µs", f"{m.server_us / (m.raw_lat * us):.2f}x", ""),
        (name, "KNN throughput, 1 / 8 clients", f"{m.qps1:.0f} / {m.qps8:.0f} q/s",
         f"raw {1 / m.raw_lat:.0f} q/s (1 thread)", f"{m.qps8 * m.raw_lat:.2f}x", ""),
        (name, "recall@10 vs exact", f"{m.llm_recall:.4f}", f"raw {m.raw_recall:.4f}",
         f"{m.llm_recall - m.raw_recall:+.4f}",
         "met" if abs(m.llm_recall - m.raw_recall) <= 0.01 else "missed"),
        (name, "ADD throughput", f"{m.llm_add:.0f} items/s", f"raw {m.raw_add:.0f} items/s",
         f"{m.llm_add / m.raw_add:.2f}x", ""),
        (name, "DEBUG RELOAD vs save+load", f"{m.llm_reload:.2f} s", f"raw {m.raw_reload:.2f} s",
         f"{m.llm_reload / m.raw_reload:.2f}x",
         "met" if m.llm_reload <= 1.5 * m.raw_reload else "missed"),
        (name, "DEBUG RELOAD, rdbcompression no", f"{m.reload_no:.2f} s",
         f"raw {m.raw_reload:.2f} s", f"{m.reload_no / m.raw_reload:.2f}x",
         "met" if m.reload_no <= 1.5 * m.raw_reload else "missed"),
        (name, "DEBUG RELOAD, rdbcompression no, vs raw with fsync", f"{m.reload_no:.2f} s",
         f"raw save+fsync+load {m.raw_reload_fsync:.2f} s",
         f"{m.reload_no / m.raw_reload_fsync:.2f}x", ""),
        (name, "MEMORY USAGE vs raw index in memory", f"{m.memory_usage / 2**20:.1f} MiB",
         f"raw RSS growth {m.raw_rss / 2**20:.1f} MiB", f"{m.memory_usage / m.raw_rss:.2f}x",
         "met" if m.memory_usage <= 1.3 * m.raw_rss else "missed"),
        (name, "server RSS growth vs raw index in memory", f"{m.rss_growth / 2**20:.1f} MiB",
         f"raw RSS growth {m.raw_rss / 2**20:.1f} MiB", f"{m.rss_growth / m.raw_rss:.2f}x", ""),
        (name, "MEMORY USAGE vs raw index file", f"{m.memory_usage / 2**20:.1f} MiB",
         f"save_index file {m.raw_bytes / 2**20:.1f} MiB", f"{m.memory_usage / m.raw_bytes:.2f}x", ""),
        (name, "LLM.SIZE vs SCARD (50 clients, -P 16)", f"{m.size_rps:.0f} rps",
         f"SCARD {m.native_rps:.0f} rps", f"{m.size_rps / m.native_rps:.2f}x",
         "met" if m.size_rps >= 0.5 * m.native_rps else "missed"),
    ]




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data, for a smoke run")
    parser.add_argument("--ef", type=int, default=None, help="query ef (default: the store's)")
    parser.add_argument("--runs", type=int, default=3, help="runs per data set; medians are shown")
    parser.add_argument("--markdown", help="append the result table to this file")
    args = parser.parse_args()
    from redis_llm.store import DEFAULT_EF
    ef = args.ef or DEFAULT_EF
    scale = 10 if args.quick else 1
    sets = [("100k x 128 clustered", *clustered(100_000 // scale, 1000, 128, 100, 1)),
            ("20k x 1536 clustered", *clustered(20_000 // scale, 500, 1536, 50, 2))]
    rows = []
    for name, data, queries in sets:
        runs = [bench_dataset(name, data, queries, ef, args.quick) for _ in range(args.runs)]
        rows += rows_of(name, median_metrics(runs))
    header = "| data | measure | redis-llm | reference | ratio | aim |\n|---|---|---|---|---|---|\n"
    table = header + "".join("| " + " | ".join(row) + " |\n" for row in rows)
    text = (f"\n### Vector store, {time.strftime('%Y-%m-%d')}{' (quick)' if args.quick else ''}, "
            f"median of {args.runs} runs\n\n"
            f"Machine: {machine('hnswlib ' + getattr(hnswlib, '__version__', '0.8'))}\n\n{table}")
    publish(text, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
