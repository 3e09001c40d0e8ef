"""The CLI end to end with typer's runner: JSON output, one-line errors, exit code 2."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from edgegen.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, text):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_targets_json_lists_every_registered_target():
    from edgegen.registry import EXPORTERS

    result = invoke("targets", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [row["target"] for row in rows] == EXPORTERS.names()
    assert all(isinstance(row["export"], bool) for row in rows)


def test_export_unknown_target(pipeline_dir, tmp_path):
    assert_one_line_error(invoke("export", pipeline_dir, "-o", tmp_path, "--target", "tensorrt"), "unknown export target 'tensorrt'")


def test_export_missing_folder(tmp_path):
    assert_one_line_error(invoke("export", tmp_path / "nope", "-o", tmp_path / "out"), "pipeline folder not found")


def test_export_not_a_pipeline(tmp_path):
    assert_one_line_error(invoke("export", tmp_path, "-o", tmp_path / "out"), "not a diffusers pipeline folder")


@pytest.mark.slow
def test_export_then_profile_compare_inspect(pipeline_dir, tmp_path):
    out = tmp_path / "out"
    result = invoke("export", pipeline_dir, "-o", out, "--target", "onnx", "--component", "vae_decoder")
    assert result.exit_code == 0, result.output
    artifact = out / "vae_decoder-onnx"
    assert (artifact / "manifest.json").is_file()

    again = invoke("export", pipeline_dir, "-o", out, "--target", "onnx", "--component", "vae_decoder")
    assert_one_line_error(again, "already exists; pass --force")

    profile = json.loads(invoke("profile", artifact, "--runs", "3", "--warmup", "1", "--json").stdout)
    assert profile["kind"] == "profile" and profile["latency"]["timed_runs"] == 3
    assert profile["latency"]["p90_ms"] >= profile["latency"]["p50_ms"] > 0
    assert profile["memory"]["peak_rss_mb"] >= profile["memory"]["baseline_rss_mb"]

    compare = json.loads(invoke("compare", artifact, "--teacher", pipeline_dir, "--json").stdout)
    assert compare["kind"] == "compare" and compare["quality"]["same_checkpoint"] is True
    assert compare["quality"]["psnr_db"] > 60

    inspected = invoke("inspect", artifact)
    assert inspected.exit_code == 0 and "vae_decoder" in inspected.stdout

    corrupt = tmp_path / "corrupt"
    shutil.copytree(artifact, corrupt)
    (corrupt / "model.onnx").write_bytes(b"\0" * 10)
    for command in (("profile", corrupt), ("compare", corrupt, "--teacher", pipeline_dir), ("inspect", corrupt)):
        assert_one_line_error(invoke(*command), "corrupt")


def test_profile_missing_artifact(tmp_path):
    assert_one_line_error(invoke("profile", tmp_path / "none"), "artifact folder not found")


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, edgegen.cli, edgegen.registry; heavy = [m for m in ('torch', 'executorch', 'onnx', 'coremltools') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_core_never_imports_plugins():
    from pathlib import Path

    import edgegen

    core = Path(edgegen.__file__).parent
    for path in core.rglob("*.py"):
        text = path.read_text()
        for plugin in ("edgegen.exporters", "edgegen.runtimes", "edgegen.trainers"):
            for line in text.splitlines():
                stripped = line.strip()
                if stripped.startswith(("import ", "from ")):
                    assert plugin not in stripped, f"{path} imports {plugin}"
