import pytest

from tests.server_process import ServerProcess


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def minilm_server(tmp_path_factory):
    """One real server (2 shards, MiniLM) shared by the read/write tests of the session."""
    server = ServerProcess(tmp_path_factory.mktemp("minilm") / "data", embedder="minilm").start()
    yield server
    server.stop()
