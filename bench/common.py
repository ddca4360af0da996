"""What the benchmarks share: the machine they ran on, and where results go."""

import os
import platform
import re
import subprocess
from pathlib import Path


def machine(libraries: str) -> str:
    """CPU, cores, memory, kernel, Python, ``libraries`` and redis-server's version."""
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    mem = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return (f"{cpu.group(1) if cpu else platform.processor()}, {os.cpu_count()} cores, "
            f"{int(mem.group(1)) // 2**20} GiB, Linux {platform.release()}, "
            f"Python {platform.python_version()}, {libraries}, "
            f"redis-server {server.split()[2].removeprefix('v=') if server else '?'}")


def publish(text: str, markdown: str | None) -> None:
    """Print a result, and append it to ``markdown`` when given."""
    print(text)
    if markdown:
        with open(markdown, "a") as f:
            f.write(text)
