"""The README's main job: the demo command on the embedded default (one target, few runs)."""

import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from edgegen.cli import app
from edgegen.errors import EdgegenError

ROOT = Path(__file__).resolve().parents[1]


def readme_commands(prefix: str) -> list[str]:
    """Each command line in the README's code blocks that starts with ``prefix`` (continuations joined)."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line.startswith(prefix)]


def parse_cli(args: list[str]) -> tuple[str, typer.Context]:
    """Parse ``edgegen ARGS`` as the CLI would, without running it: unknown commands, options,
    missing or extra arguments raise typer's (vendored click's) usage errors."""
    command, names, args = typer.main.get_command(app), [], list(args)
    while isinstance(command, TyperGroup):
        assert args, f"edgegen {' '.join(names)} needs a subcommand"
        names.append(args.pop(0))
        command = command.get_command(typer.Context(command), names[-1])
        assert command is not None, f"no command 'edgegen {' '.join(names)}'"
    return " ".join(names), command.make_context(" ".join(names), args)


def check_values(name: str, params: dict) -> None:
    """What the parser takes as free text: targets, backends, quantizations, training settings."""
    from edgegen.registry import EXPORTERS, RECIPES

    if params.get("target"):
        exporter = EXPORTERS.get(params["target"])
        if params.get("quantize") == "auto":
            assert getattr(exporter, "mixed_precision", False) and params.get("min_psnr") is not None, params
        elif params.get("quantize"):
            assert params["quantize"] in exporter.quantizations, params
        if params.get("backend"):
            assert params["backend"] in exporter.backends, params
    if name == "train":
        files = [Path(item) for item in params["settings"] if "=" not in item]
        assert len(files) <= 1 and all((ROOT / path).is_file() for path in files), params
        RECIPES.get(params["recipe"]).resolve(ROOT / files[0] if files else None, [i for i in params["settings"] if "=" in i])


def test_readme_edgegen_commands_parse_with_the_cli():
    commands = readme_commands(".venv/bin/edgegen ")
    assert len(commands) >= 15  # the README's usage and training blocks
    for line in commands:
        name, context = parse_cli(shlex.split(line, comments=True)[1:])
        check_values(name, context.params)


def test_the_readme_checker_refuses_what_the_cli_refuses():
    for args in (["exprot", "t/"], ["export", "t/", "--bogus"], ["profile"], ["student"]):
        with pytest.raises((typer.TyperException, AssertionError)):
            parse_cli(args)
    for args in (["export", "t/", "-o", "a", "--target", "onnx", "--quantize", "palettize-6bit"], ["train", "lora", "rank=8", "no_such_key=1"]):
        name, context = parse_cli(args)
        with pytest.raises((AssertionError, EdgegenError)):
            check_values(name, context.params)


def make_dry_run(*args: str) -> list[str]:
    # Under `make test` the outer make's variables would make this one a sub-make (MAKELEVEL,
    # "make[1]: Entering directory" lines, inherited flags): run it as a user would.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    result = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_make_demo_and_make_test_run_what_the_readme_says(tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    # A fresh virtual environment: make first creates it and installs the pinned set.
    venv = tmp_path / "venv"
    lines = make_dry_run("demo", f"VENV={venv}")
    assert any(f"-m venv {venv}" in line for line in lines)
    assert any("pip install" in line and "-c constraints.txt" in line and '".[all,test]"' in line for line in lines)
    demo = shlex.split(lines[-1])
    assert demo[0] == f"{venv}/bin/edgegen"
    _, context = parse_cli(demo[1:])
    output = context.params["output"]
    assert f"{output}/report.html" in readme  # the README names where the report lands

    quick = shlex.split(make_dry_run("test", "PYTEST_ARGS=-m \"not slow\"")[-1])
    assert quick[quick.index("pytest") + 1 :] == ["-m", "not slow"]
    assert "make test PYTEST_ARGS='-m \"not slow\"'" in readme
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)


def test_every_pinned_target_is_exportable_and_all_but_core_ml_run_off_macos():
    # The demo's own rule; a pinned toolchain that fails to install shows up here.
    from edgegen.exporting.targets import exportable_targets, usable_targets
    from edgegen.registry import EXPORTERS

    assert exportable_targets() == EXPORTERS.names()
    runs_here = [name for name in EXPORTERS.names() if name != "coreml" or platform.system() == "Darwin"]
    assert usable_targets() == runs_here


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
    assert set(cases) == {
        "teacher/eager/20-steps", "student/eager/20-steps", "student/onnx/20-steps",
        *(f"{label}/{runtime}/{k}-steps" for label in ("student-fewstep", "student-fewstep-tinydecoder") for runtime in ("eager", "onnx") for k in (2, 1)),
        *(f"student-fewstep-tinydecoder/onnx-one-call/{k}-steps" for k in (2, 1)),
    }
    for k in (2, 1):  # the one-call program: the same images as the same student's components, in one call
        one_call = cases[f"student-fewstep-tinydecoder/onnx-one-call/{k}-steps"]
        assert [t["component"] for t in one_call["latency"]["per_component"]] == ["pipeline"]
        assert one_call["export_fidelity"]["image_psnr_db"] > 60 and one_call["latency"]["steps"] == k
    for label in ("student-fewstep", "student-fewstep-tinydecoder"):
        assert [cases[f"{label}/onnx/{k}-steps"]["latency"]["steps"] for k in (2, 1)] == [2, 1]
        for k in (2, 1):  # each exported few-step student against the same student eagerly, same latents
            assert cases[f"{label}/onnx/{k}-steps"]["export_fidelity"]["image_psnr_db"] > 40
    # The tiny decoder is smaller than the VAE's decoder in the same pipeline (its speed is
    # benchmarks/shipped_student.py's to measure: a test on a shared CPU times noise).
    sizes = {label: cases[f"{label}/onnx/2-steps"]["size_bytes"] for label in ("student-fewstep", "student-fewstep-tinydecoder")}
    assert sizes["student-fewstep-tinydecoder"] < sizes["student-fewstep"], sizes
    exported = cases["student/onnx/20-steps"]
    assert exported["export_fidelity"]["image_psnr_db"] > 40  # float ONNX vs the eager student, same latents
    assert exported["latency"]["steps"] == 20 and exported["memory"]["added_mb"] > 0
    assert all(0 <= c["distillation_gap"]["faithfulness"] <= 1 for c in cases.values())
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "student/onnx/20-steps" in report and report.count("<img") >= 4 * 2
    # The report and the terminal lead with the shipped configuration: an exported student.
    assert report.index("<h2>Shipped configuration</h2>") < report.index("<h2>Key results</h2>")
    shipped = re.search(r"Shipped configuration \([^)]*\):\s+(\S+)", result.stdout)
    assert shipped and shipped.group(1).split("/")[1] in ("onnx", "onnx-one-call"), result.stdout
    assert result.stdout.index("Shipped configuration") < result.stdout.index("text_encoder")


def test_demo_unknown_target(tmp_path):
    result = CliRunner().invoke(app, ["demo", "-o", str(tmp_path), "--target", "nope"])
    assert result.exit_code == 2 and "unknown export target 'nope'" in result.stderr


# What the toolchains' native code used to print on every command (ExecuTorch's runtime, LiteRT's
# converter and interpreter), written independently of edgegen.terminal's patterns.
NOISE = re.compile(r"cpuinfo_utils\.cpp|threadpool\.cpp|absl::InitializeLog|TensorFlow Lite XNNPACK delegate|^I\d{4} \d\d:", re.M)


def test_native_noise_is_dropped_and_a_crash_still_shows_its_error():
    code = """
import os, sys
from edgegen.terminal import filter_native_noise
filter_native_noise()
os.write(2, b"[threadpool.cpp:66] Resetting threadpool to 1 threads.\\n")
os.write(2, b"I0000 00:00:1796204115.788747   10141 port.cc:153] oneDNN custom operations are on.\\n")
os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
os.write(2, b"I0000 00:00:1796205205.684654   11288 status_scoped_diagnostic_handler.cc:61] x.py:1:0: warning: w\\n\\n")
print("error: a real one", file=sys.stderr, flush=True)
os.write(2, b"E0000 00:00:1796204115.788747   10141 interpreter.cc:1] a native error\\n")
os.abort()  # no atexit, no flush: the filter process still passes on what was written
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        "error: a real one",
        "E0000 00:00:1796204115.788747   10141 interpreter.cc:1] a native error",
    ], result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_commands_print_no_toolchain_noise(target, exported, pipeline_dir):
    # `compare` loads the runtime in the command's own process, where its native logs used to
    # land on the terminal (the same happens in every export's parity check and in `make demo`).
    from tests.helpers import require_runtime

    require_runtime(target)
    folder = exported("text_encoder", target).folder
    command = [sys.executable, "-m", "edgegen.cli", "compare", str(folder), "--teacher", str(pipeline_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "PSNR" in result.stdout
    assert not NOISE.search(result.stdout + result.stderr), result.stdout + result.stderr


@pytest.mark.slow
def test_demo_component_table_fits_120_columns_one_line_per_artifact(exported, pipeline, pipeline_dir):
    from rich.console import Console

    from edgegen.cli.demo import component_table
    from edgegen.embedded.demo import DemoRow
    from edgegen.measure.component_fidelity import compare_with_pipeline
    from edgegen.measure.profiling import profile_artifact

    ran = exported("text_encoder", "executorch")
    rows = [
        DemoRow(ran, profile_artifact(ran.folder, warmup=1, runs=2), compare_with_pipeline(ran, pipeline, pipeline_dir)),
        DemoRow(exported("denoiser", "onnx"), not_run_reason="Core ML prediction needs macOS (this host is Linux x86_64); the package was converted and hashed"),
        DemoRow(exported("vae_decoder", "onnx"), not_run_reason="Core ML prediction needs macOS (this host is Linux x86_64); the package was converted and hashed"),
    ]
    console = Console(width=120, record=True)
    console.print(component_table(rows))
    lines = console.export_text().splitlines()
    assert "…" not in "".join(lines) and all(len(line) <= 120 for line in lines)
    for component in ("text_encoder", "denoiser", "vae_decoder"):
        assert len([line for line in lines if component in line]) == 1, component  # never wrapped
    assert "executorch/xnnpack" in next(line for line in lines if "text_encoder" in line)
    assert sum("Core ML prediction needs macOS" in line for line in lines) == 1  # the reason once, in the caption
