import pytest

from tests.server_process import ServerProcess


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    # The session's MiniLM server lives from its first user to the end of the session; its
    # modules run last, so it does not sit idle beside every module after the first of them
    # (an idle hash-embedder server used 26-29% of one core in bench_startup; MiniLM's unmeasured).
    minilm = {item.module for item in items if "minilm_server" in item.fixturenames}
    items.sort(key=lambda item: getattr(item, "module", None) in minilm)  # stable sort


@pytest.fixture(scope="session")
def minilm_server(tmp_path_factory):
    """One real server (2 shards, MiniLM) shared by the read/write tests of the session."""
    server = ServerProcess(tmp_path_factory.mktemp("minilm") / "data", embedder="minilm").start()
    yield server
    server.stop()
