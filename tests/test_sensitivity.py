"""Per-layer int8 sensitivity and ``--quantize auto``: the cheapest int8/float mix that meets a budget."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgegen.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def denoiser(pipeline, pipeline_dir):
    from edgegen.families import family_of

    family = family_of(pipeline_dir)
    component = family.build_component(pipeline, "denoiser")
    component.calibration = family.calibration_inputs(pipeline, "denoiser")
    return component


def test_the_analysis_covers_every_weighted_layer_and_predicts_the_export(denoiser, exported):
    from edgegen.exporting.sensitivity import measure_sensitivity, weighted_layers

    report, _ = measure_sensitivity(denoiser)
    assert [layer.name for layer in report.layers] == list(weighted_layers(denoiser.module))
    assert {layer.kind for layer in report.layers} == {"linear", "conv"}
    for layer in report.layers:  # one layer in int8 costs less than all of them
        assert layer.alone_int8_psnr_db >= report.all_int8_psnr_db - 0.5, layer
    # Keeping one layer float helps on the whole (errors can cancel, so not every time), and the
    # best one helps clearly.
    gains = [layer.alone_float_psnr_db - report.all_int8_psnr_db for layer in report.layers]
    assert sum(gains) / len(gains) > 0 and max(gains) > 0.5
    # The simulation is what the int8 exports do: within a few dB of the real ExecuTorch program.
    real = exported("denoiser", "executorch", "int8").manifest.parity.psnr_db
    assert abs(report.all_int8_psnr_db - real) < 4, (report.all_int8_psnr_db, real)


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_auto_meets_a_budget_above_plain_int8_with_some_layers_float(target, exported, pipeline, pipeline_dir, tmp_path):
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.exporting.sensitivity import weighted_layers
    from edgegen.families import family_of

    plain = exported("denoiser", target, "int8")
    budget = plain.manifest.parity.psnr_db + 1
    artifact = export_component(pipeline, pipeline_dir, "denoiser", target, tmp_path, ExportOptions(quantize="auto", min_psnr_db=budget))
    manifest = artifact.manifest
    assert manifest.quantization.scheme == "int8" and manifest.parity.psnr_db >= budget
    mix = manifest.quantization.details["mixed_precision"]
    every = list(weighted_layers(family_of(pipeline_dir).build_component(pipeline, "denoiser").module))
    assert 0 < len(mix["float_layers"]) < len(every) and set(mix["float_layers"]) <= set(every)
    assert mix["min_psnr_db"] == budget and mix["sensitivity"]["layers"]
    # Bigger than all-int8 (some weights float), smaller than float.
    assert plain.model_bytes < artifact.model_bytes < exported("denoiser", target).model_bytes


def test_a_budget_no_mix_meets_is_one_line_and_writes_nothing(pipeline_dir, tmp_path):
    runner = CliRunner()
    args = ["export", str(pipeline_dir), "--component", "denoiser", "-o", str(tmp_path / "out")]
    result = runner.invoke(app, [*args, "--target", "executorch", "--quantize", "auto", "--min-psnr", "200"])
    assert result.exit_code == 2 and "no int8 mix of denoiser meets 200.0 dB: the best simulated is" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    result = runner.invoke(app, [*args, "--target", "executorch", "--quantize", "auto"])
    assert result.exit_code == 2 and "--quantize auto needs --min-psnr" in result.stderr
    result = runner.invoke(app, [*args, "--target", "onnx", "--quantize", "auto", "--min-psnr", "40"])
    assert result.exit_code == 2 and "available for executorch, tflite" in result.stderr


@pytest.mark.slow
def test_a_faithfulness_budget_runs_the_pipeline_with_the_artifact_and_records_it(pipeline_dir, tmp_path):
    from edgegen.artifact import load_artifact
    from edgegen.embedded.builders import PROBE_DIR

    args = ["export", str(pipeline_dir), "--component", "vae_decoder", "-o", str(tmp_path / "out"), "--target", "tflite", "--quantize", "auto", "--min-psnr", "30"]
    result = CliRunner().invoke(app, [*args, "--min-faithfulness", "0.9", "--probe", str(PROBE_DIR)])
    assert result.exit_code == 0, result.output
    artifact = load_artifact(next((tmp_path / "out").iterdir()))
    record = artifact.manifest.quantization.details["mixed_precision"]["faithfulness"]
    assert record["captions"] == 16 and record["min_share_of_float"] == 0.9
    assert record["float_pipeline"] > 0.8  # the embedded teacher draws what it is asked
    assert record["reached"] >= 0.9 * record["float_pipeline"]


def test_a_faithfulness_budget_is_checked_before_anything_loads(pipeline_dir, tmp_path):
    from edgegen.embedded.builders import PROBE_DIR

    runner = CliRunner()
    args = ["export", str(pipeline_dir), "--component", "vae_decoder", "-o", str(tmp_path / "out"), "--target", "tflite"]
    auto = ["--quantize", "auto", "--min-psnr", "30"]
    cases = [
        ([*auto, "--min-faithfulness", "0.9"], "takes both --min-faithfulness SHARE and --probe DIR"),
        (["--quantize", "int8", "--min-faithfulness", "0.9", "--probe", str(PROBE_DIR)], "--min-faithfulness is a budget for --quantize auto"),
        ([*auto, "--min-faithfulness", "1.5", "--probe", str(PROBE_DIR)], "is not a share of the float pipeline's faithfulness in (0, 1]"),
        ([*auto, "--min-faithfulness", "0.9", "--probe", str(tmp_path)], "is not a probe folder (no probe.json)"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == 2 and message in result.stderr, (extra, result.output)
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_faithfulness_budget_no_mix_keeps_is_one_line_and_writes_nothing(pipeline_dir, tmp_path):
    # The embedded few-step student's one-call program, int8 in one step, loses a caption of the
    # probe's 16 that the float program draws; asked to keep all of them, every widened mix (up to
    # MixedPrecision.ATTEMPTS exports) still loses it, and the export is refused.
    from edgegen.embedded.builders import PROBE_DIR, build_embedded_student
    student = build_embedded_student(pipeline_dir, tmp_path / "few-step", "few-step")
    args = ["export", str(student), "--component", "pipeline", "--steps", "1", "-o", str(tmp_path / "out"), "--target", "tflite"]
    result = CliRunner().invoke(app, [*args, "--quantize", "auto", "--min-psnr", "20", "--min-faithfulness", "1.0", "--probe", str(PROBE_DIR)])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: no int8 mix of pipeline keeps 100% of the float pipeline's caption faithfulness")
    assert "raise the share or export it float; nothing was written" in line
    # It gave up on a mix, not on plain int8: the last one tried keeps some layers float.
    float_layers, weighted = (int(n) for n in line.split(" with ")[-1].split(" weighted layers")[0].split(" of "))
    assert 0 < float_layers < weighted
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
