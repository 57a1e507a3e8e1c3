"""Provenance.model_revision as documented: a Hugging Face snapshot's commit
(through a symlink too, as modal_deploy links its pinned download), a content
hash for another local folder, a hub id's cached commit or "hub:<id>"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ananke_server.engine_api import model_revision

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _model(folder: Path, config: str = '{"a": 1}') -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(config)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "README.md").write_text("ignored")
    return folder


def test_snapshot_folder_reports_its_commit(tmp_path: Path) -> None:
    snapshot = _model(tmp_path / "models--org--m" / "snapshots" / COMMIT)
    assert model_revision(str(snapshot)) == COMMIT
    link = tmp_path / "served" / "m"
    link.parent.mkdir()
    link.symlink_to(snapshot, target_is_directory=True)
    assert model_revision(str(link)) == COMMIT


def test_local_folder_is_a_content_hash(tmp_path: Path) -> None:
    first = model_revision(str(_model(tmp_path / "a")))
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", first)
    assert model_revision(str(_model(tmp_path / "b"))) == first  # same files, same revision
    assert model_revision(str(_model(tmp_path / "c", '{"a": 2}'))) != first
    (tmp_path / "a" / "README.md").write_text("changed")  # not a model file
    assert model_revision(str(tmp_path / "a")) == first


def test_hub_id_reports_the_cached_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert model_revision("org/m") == "hub:org/m"  # not downloaded yet
    repo = tmp_path / "models--org--m"
    _model(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    assert model_revision("org/m") == COMMIT
