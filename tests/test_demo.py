"""The README's main job: the demo command on the embedded default (one target, few runs)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgegen.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "\ndemo:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_demo_prints_the_table_and_writes_results(tmp_path):
    result = CliRunner().invoke(app, ["demo", "-o", str(tmp_path), "--target", "onnx", "--precision", "float", "--runs", "2"])
    assert result.exit_code == 0, result.output
    for component in ("text_encoder", "denoiser", "vae_decoder"):
        assert component in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["kind"] for r in results) == ["compare"] * 3 + ["profile"] * 3
    assert all(r["quality"]["psnr_db"] > 60 for r in results if r["kind"] == "compare")


def test_demo_unknown_target(tmp_path):
    result = CliRunner().invoke(app, ["demo", "-o", str(tmp_path), "--target", "nope"])
    assert result.exit_code == 2 and "unknown export target 'nope'" in result.stderr
