"""The store layout file: created once, checked on every start, version 1 migrated in place."""

from __future__ import annotations

import json

import pytest

from memoray.errors import MemorayError
from memoray.layout import LAYOUT_VERSION, open_layout, read_layout


def test_created_once_with_an_identity(tmp_path):
    a = open_layout(tmp_path, shards=2, dim=384, embedder="hash")
    b = open_layout(tmp_path, shards=2, dim=384, embedder="hash")
    assert a == b and len(a.store_id) == 8 and a.version == LAYOUT_VERSION


def test_two_stores_get_different_identities(tmp_path):
    a = open_layout(tmp_path / "a", shards=2, dim=384, embedder="hash")
    b = open_layout(tmp_path / "b", shards=2, dim=384, embedder="hash")
    assert a.store_id != b.store_id


def test_version1_file_is_migrated_in_place(tmp_path):
    # Exactly what the first release's check_layout wrote (serve/launcher.py before issue 9).
    (tmp_path / "memoray.json").write_text(json.dumps({"shards": 2, "dim": 384,
                                                       "embedder": "minilm"}))
    layout = open_layout(tmp_path, shards=2, dim=384, embedder="minilm")
    on_disk = json.loads((tmp_path / "memoray.json").read_text())
    assert on_disk["version"] == LAYOUT_VERSION and on_disk["store_id"] == layout.store_id
    assert read_layout(tmp_path) == layout
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("kw,msg", [({"shards": 3}, "created with 2 shards"),
                                    ({"embedder": "minilm"}, "holds hash embeddings")])
def test_mismatch_refused_and_nothing_changed(tmp_path, kw, msg):
    open_layout(tmp_path, shards=2, dim=384, embedder="hash")
    before = (tmp_path / "memoray.json").read_bytes()
    args = {"shards": 2, "dim": 384, "embedder": "hash", **kw}
    with pytest.raises(MemorayError, match=msg):
        open_layout(tmp_path, **args)
    assert (tmp_path / "memoray.json").read_bytes() == before


def test_newer_version_refused(tmp_path):
    (tmp_path / "memoray.json").write_text(json.dumps(
        {"version": LAYOUT_VERSION + 1, "store_id": "x", "shards": 2, "dim": 384,
         "embedder": "hash"}))
    with pytest.raises(MemorayError, match="upgrade memoray"):
        open_layout(tmp_path, shards=2, dim=384, embedder="hash")
