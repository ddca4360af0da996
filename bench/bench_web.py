"""Review desk benchmark: each page of `redis-llm web` vs the LLM.* commands it sends.

One run, same data: an app holding 10,000 records (the default retention),
half of them reviewed. For every page, requests over HTTP to a real
`redis-llm web` process (signed in, keep-alive) alternate with the same
commands sent straight to redis-server through redis-py, the reference. The
ratio is what the desk adds on top of Redis: rendering, the session, HTTP.

Usage: .venv/bin/python bench/bench_web.py [--runs 3] [--requests 100] [--markdown FILE]
"""

import argparse
import datetime as dt
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import requests

from redis_llm.testing import RedisServer, free_port

from common import machine, publish

RECORDS = 10_000
HOUR = 3_600_000


def fill(r: redis.Redis) -> None:
    r.execute_command("LLM.CREATE-LLM", "llm", "--PARAMS", '{"base_url": "http://127.0.0.1:9"}')
    r.execute_command("LLM.CREATE-APP", "desk", "--LLM", "llm")
    pipe = r.pipeline(transaction=False)
    for n in range(1, RECORDS + 1):
        pipe.execute_command(
            "LLM.RECORD", "desk", "--QUESTION", f"Question {n}: how do I reset pump model {n % 37}?",
            "--ANSWER", f"Answer {n}: hold the reset button for {n % 9 + 2} seconds. " * 4,
            "--MODEL", f"model-{n % 3}", "--LATENCY", str(100 + n % 400),
            "--TAGS", "pump,manual" if n % 2 else "faq")
        if n % 2 == 0:
            # Below the serve band (95): a serve-band review of a simple app
            # embeds its question, and this LLM has no server behind it.
            pipe.execute_command("LLM.REVIEW", "desk", n, "--ANSWER", "Reviewed.",
                                 "--SCORE", str(n % 95))
        if n % 1000 == 0:
            pipe.execute()
    pipe.execute()


def operations(r: redis.Redis) -> list[tuple[str, str, callable]]:
    """(name, page path, the commands that page sends)."""
    unreviewed = r.execute_command("LLM.RESULTS", "desk", "--UNREVIEWED", "--STATE", "done",
                                   "--COUNT", 1)[0][1]
    return [
        ("results page (25 rows)", "/results?app=desk",
         lambda: r.execute_command("LLM.RESULTS", "desk", "--COUNT", 26, "--OFFSET", 0)),
        ("results, text search", "/results?app=desk&q=model+36",
         lambda: r.execute_command("LLM.RESULTS", "desk", "--TEXT", "model 36", "--COUNT", 26,
                                   "--OFFSET", 0)),
        ("results, 4 filters", "/results?app=desk&reviewed=yes&model=model-1&min=50&max=90",
         lambda: r.execute_command("LLM.RESULTS", "desk", "--REVIEWED", "--MODEL", "model-1",
                                   "--MIN-SCORE", 50, "--MAX-SCORE", 90, "--COUNT", 26,
                                   "--OFFSET", 0)),
        ("review queue", "/review?app=desk",
         lambda: (r.execute_command("LLM.RESULTS", "desk", "--UNREVIEWED", "--STATE", "done",
                                    "--COUNT", 1, "--OFFSET", 0),
                  r.execute_command("LLM.RESULT", "desk", unreviewed))),
        ("record page", "/record?app=desk&id=5000",
         lambda: r.execute_command("LLM.RESULT", "desk", 5000)),
        ("dashboard (per hour)", "/dashboard?app=desk&interval=hour",
         lambda: r.execute_command("LLM.STATS", "desk", "--INTERVAL", HOUR)),
    ]


def export_reference(r: redis.Redis) -> None:
    offset = 0
    while True:
        page = r.execute_command("LLM.RESULTS", "desk", "--COUNT", 1000, "--OFFSET", offset)
        if len(page) < 1000:
            return
        offset += len(page)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def run_once(base: str, http: requests.Session, r: redis.Redis, count: int) -> dict:
    out = {}
    for name, path, reference in operations(r) + [
            ("export, CSV (10,000 records)", "/export?app=desk&format=csv",
             lambda: export_reference(r))]:
        n = count if "export" not in name else max(5, count // 20)
        page_ms, command_ms = [], []
        for _ in range(n):
            page_ms.append(timed(lambda: http.get(base + path).raise_for_status()))
            command_ms.append(timed(reference))
        out[name] = (statistics.median(page_ms), statistics.median(command_ms))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--markdown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as server:
        r = server.client()
        started = time.perf_counter()
        fill(r)
        print(f"filled {RECORDS} records in {time.perf_counter() - started:.1f} s", flush=True)
        port = free_port()
        web = subprocess.Popen([sys.executable, "-m", "redis_llm.cli", "web", "--url",
                                f"redis://127.0.0.1:{server.port}", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            web.stdout.readline()
            base = f"http://127.0.0.1:{port}"
            http = requests.Session()
            http.post(base + "/login", data={"user": "default", "password": "x"}).raise_for_status()
            assert re.search(r'data-app="desk"', http.get(base + "/").text)
            runs = [run_once(base, http, r, args.requests) for _ in range(args.runs)]
        finally:
            web.terminate()
            web.wait(10)
    lines = [f"\n### Review desk, {dt.date.today()}, median of {args.runs} runs\n\n",
             f"Machine: {machine('Flask ' + __import__('importlib.metadata').metadata.version('flask'))}\n\n",
             f"An app with {RECORDS} records, half reviewed; {args.requests} requests per page "
             "per run, alternating with the reference.\n\n",
             "| page | page ms (median) | its LLM.* commands ms | page / commands | added ms |\n",
             "|---|---:|---:|---:|---:|\n"]
    for name in runs[0]:
        page = statistics.median(run[name][0] for run in runs)
        command = statistics.median(run[name][1] for run in runs)
        lines.append(f"| {name} | {page:.2f} | {command:.2f} | {page / command:.2f}x | "
                     f"{page - command:.2f} |\n")
    publish("".join(lines), args.markdown)


if __name__ == "__main__":
    main()
