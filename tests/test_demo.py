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
def test_demo_compares_teacher_and_students_and_writes_the_report(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle at the top left\na blue square at the bottom right\n")
    result = CliRunner().invoke(
        app, ["demo", "-o", str(tmp_path / "demo"), "--target", "onnx", "--precision", "float", "--runs", "2", "--prompts", str(prompts)]
    )
    assert result.exit_code == 0, result.output
    for component in ("text_encoder", "denoiser", "vae_decoder"):
        assert component in result.stdout
    components = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert sorted(r["kind"] for r in components) == ["compare"] * 3 + ["profile"] * 3
    assert all(r["quality"]["psnr_db"] > 60 for r in components if r["kind"] == "compare")
    lines = (tmp_path / "demo" / "results.jsonl").read_text().splitlines()
    cases = {json.loads(line)["case_id"]: json.loads(line) for line in lines}
    assert set(cases) == {"teacher/eager/20-steps", "student/eager/20-steps", "student/onnx/20-steps", "student-fewstep/eager/2-steps"}
    exported = cases["student/onnx/20-steps"]
    assert exported["export_fidelity"]["image_psnr_db"] > 40  # float ONNX vs the eager student, same latents
    assert exported["latency"]["steps"] == 20 and exported["memory"]["added_mb"] > 0
    assert all(0 <= c["distillation_gap"]["faithfulness"] <= 1 for c in cases.values())
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "student/onnx/20-steps" in report and report.count("<img") >= 4 * 2


def test_demo_unknown_target(tmp_path):
    result = CliRunner().invoke(app, ["demo", "-o", str(tmp_path), "--target", "nope"])
    assert result.exit_code == 2 and "unknown export target 'nope'" in result.stderr
