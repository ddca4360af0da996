"""Soak: issue 5's 100,000 mixed commands, outside pytest, with the figures.

The same workload and measurements as tests/test_soak.py (which it imports):
LLM.ADD (blob and text), LLM.KNN (blob and text), LLM.REM and LLM.RUN on a
simple and a search app against a real redis-server and two scripted
OpenAI-compatible servers (one instant, one that answers after 0.2 s, for
--TIMEOUT commands that expire and clients that hang up while blocked), plus
whole stores and apps created and deleted along the way. Prints RSS after the
warm-up and at the end, used_memory and RSS before the soak and after
deleting its keys, the duration and the command rate, and checks the issue's
three conditions.

Usage: .venv/bin/python bench/soak.py [--commands 100000] [--seed 5] [--markdown FILE]
Run it without PYTHONPATH to soak the installed package, with PYTHONPATH=.
(and the built shim linked into redis_llm/) to soak the source tree.
Exit status 1 when a condition fails.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import redis

import redis_llm
from redis_llm.testing import RedisServer

from common import machine, publish

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import test_soak  # noqa: E402  (tests/ is put on the path just above)
from openai_server import OpenAIServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=100_000, help="commands in the soak")
    parser.add_argument("--seed", type=int, default=5, help="seed of the mix")
    parser.add_argument("--markdown", help="append the result block to this file")
    args = parser.parse_args()

    print(f"redis_llm from {Path(redis_llm.__file__).parent}", flush=True)
    with tempfile.TemporaryDirectory(prefix="redis-llm-soak-") as workdir:
        srv = test_soak.start_soak_server(
            lambda name, **kwargs: RedisServer(Path(workdir) / name, **kwargs).start())
        try:
            with OpenAIServer(dim=test_soak.DIM) as api, \
                    test_soak.slow_model_server(args.commands + test_soak.PRIMING_COMMANDS) as slow:
                result = test_soak.soak(srv, api, slow, args.commands, seed=args.seed)
            alive = srv.alive()
        finally:
            srv.kill()

    t = result.tally
    conditions = {**result.conditions(), "all commands sent": t.commands == args.commands,
                  "server alive": alive}
    load = os.getloadavg()[0]
    text = (f"\n### Soak, {time.strftime('%Y-%m-%d')}, {args.commands} commands\n\n"
            f"Machine: {machine(f'redis-py {redis.__version__}')}\n\n"
            f"{test_soak.CLIENTS} client threads, pipelines of {test_soak.BATCH}, POOL_SIZE "
            f"{test_soak.POOL_SIZE}; {test_soak.STORES} stores of ids 0-{test_soak.IDS_PER_STORE - 1} "
            f"(dim {test_soak.DIM}), apps with --RECORD {test_soak.RECORD_LIMIT}; warm-up "
            f"{test_soak.WARMUP_SHARE:.0%}, after a priming round of {test_soak.PRIMING_COMMANDS} "
            f"commands; memory settled and after MEMORY PURGE; 1-minute load average at the end: "
            f"{load:.1f}.\n\n"
            "| measure | value |\n|---|---|\n" + "\n".join(result.lines()) + "\n" +
            "".join(f"| {name} | {'met' if ok else 'FAILED'} |\n" for name, ok in conditions.items()))
    publish(text, args.markdown)
    if t.errors:
        print("errors (first 10):", *t.errors[:10], sep="\n  ")
    return 0 if all(conditions.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
