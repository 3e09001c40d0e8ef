"""Artifact folders: strict manifests, corruption detected, atomic writes, validated inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgegen.artifact import atomic_folder, load_artifact
from edgegen.errors import EdgegenError
from edgegen.session import open_artifact


@pytest.fixture
def artifact_copy(exported, tmp_path):
    source = exported("text_encoder", "onnx")
    copy = tmp_path / "copy"
    shutil.copytree(source.folder, copy)
    return copy


def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_truncated_model_file_is_detected(artifact_copy):
    model = artifact_copy / "model.onnx"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(EdgegenError, match="corrupt: model.onnx"):
        load_artifact(artifact_copy)


def test_unknown_manifest_key_is_rejected(artifact_copy):
    _edit_manifest(artifact_copy, lambda d: d.update(surprise=1))
    with pytest.raises(EdgegenError, match="unknown key 'surprise'"):
        load_artifact(artifact_copy)


def test_newer_schema_version_is_rejected(artifact_copy):
    _edit_manifest(artifact_copy, lambda d: d.update(schema_version=99))
    with pytest.raises(EdgegenError, match="schema version 99, newer"):
        load_artifact(artifact_copy)


def test_manifest_that_is_not_json(artifact_copy):
    (artifact_copy / "manifest.json").write_text("{not json")
    with pytest.raises(EdgegenError, match="not valid JSON"):
        load_artifact(artifact_copy)


def test_missing_folder(tmp_path):
    with pytest.raises(EdgegenError, match="artifact folder not found"):
        load_artifact(tmp_path / "nothing")


def test_atomic_folder_leaves_nothing_when_interrupted(tmp_path):
    destination = tmp_path / "artifact"
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(destination) as staging:
            (staging / "half.bin").write_bytes(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_replaces_only_with_force(tmp_path):
    destination = tmp_path / "artifact"
    destination.mkdir()
    (destination / "old").write_text("old")
    with pytest.raises(EdgegenError, match="--force"):
        with atomic_folder(destination):
            pass
    with atomic_folder(destination, force=True) as staging:
        (staging / "new").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]
    assert [p.name for p in destination.iterdir()] == ["new"]


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"input_ids": np.zeros((1, 15), np.int64)}, "has shape \\(1, 15\\) but the artifact expects \\(1, 40\\)"),
        ({"input_ids": np.zeros((1, 40), np.float32)}, "has dtype float32 but the artifact expects int64"),
        ({}, "missing input\\(s\\) input_ids"),
        ({"input_ids": np.zeros((1, 40), np.int64), "extra": np.zeros(1)}, "unknown input\\(s\\) extra"),
    ],
)
def test_session_validates_inputs(exported, inputs, message):
    session = open_artifact(exported("text_encoder", "onnx"))
    with pytest.raises(EdgegenError, match=message):
        session.run(inputs)


def test_session_casts_integer_width(exported):
    session = open_artifact(exported("text_encoder", "onnx"))
    ids = np.full((1, 40), 5, np.int32)
    narrow = session.run({"input_ids": ids})
    wide = session.run({"input_ids": ids.astype(np.int64)})
    np.testing.assert_array_equal(narrow["text_embeddings"], wide["text_embeddings"])
