"""Fixtures: real redis-server processes with the module loaded, on free ports."""

import pytest

from redis_llm.testing import RedisServer, free_port  # noqa: F401  (re-exported for tests)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A server shared by the tests that only need a clean database."""
    srv = RedisServer(tmp_path_factory.mktemp("shared")).start()
    yield srv
    srv.stop()


@pytest.fixture
def r(server):
    """A client of the shared server, its data flushed first."""
    client = server.client()
    client.flushall()
    yield client
    assert server.alive(), f"redis-server died:\n{server.log}"
    client.close()


@pytest.fixture
def make_server(tmp_path):
    """Start servers of one's own: make_server(config={...}, module_args=(...))."""
    servers = []

    def make(name: str = "srv", start: bool = True, **kwargs) -> RedisServer:
        srv = RedisServer(tmp_path / f"{name}{len(servers)}", **kwargs)
        servers.append(srv)
        return srv.start() if start else srv

    yield make
    for srv in servers:
        srv.kill()


@pytest.fixture
def api():
    """A scripted OpenAI-compatible HTTP server (see tests/openai_server.py)."""
    from openai_server import OpenAIServer
    with OpenAIServer() as server:
        yield server
