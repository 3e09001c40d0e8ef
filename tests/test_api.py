"""The public Python API: the README's script runs as written, and each verb answers like the CLI."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import edgegen

ROOT = Path(__file__).resolve().parents[1]


def readme_python_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_api_names_the_cli_verbs():
    for name in ("export", "profile", "compare", "load_artifact", "open_session", "family_of", "targets", "EdgegenError"):
        assert name in edgegen.__all__ and hasattr(edgegen, name), name
    assert edgegen.families.family_of is not None  # the family package, imported on first use
    with pytest.raises(AttributeError):
        edgegen.no_such_verb  # noqa: B018


def test_bad_input_raises_one_line_errors(tmp_path):
    with pytest.raises(edgegen.EdgegenError, match="pipeline folder not found"):
        edgegen.export(tmp_path / "absent", "onnx", tmp_path / "out")
    with pytest.raises(edgegen.EdgegenError, match="unknown export target 'nope'"):
        edgegen.export(tmp_path, "nope", tmp_path / "out")
    with pytest.raises(edgegen.EdgegenError, match="artifact folder not found"):
        edgegen.load_artifact(tmp_path / "absent")


@pytest.mark.slow
def test_readme_script_runs_as_written(tmp_path, pipeline_dir, monkeypatch, capsys):
    shutil.copytree(pipeline_dir, tmp_path / "teacher")
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_python_block(), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "stable-diffusion"
    assert printed[1] == "['text_encoder', 'denoiser', 'vae_decoder']"
    assert float(printed[2]) > 0  # p50 latency in ms
    assert float(printed[3]) > 60  # float32 ONNX vs the eager teacher, dB
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == ["denoiser-onnx", "text_encoder-onnx", "vae_decoder-onnx"]
