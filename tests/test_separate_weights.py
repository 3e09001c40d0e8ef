"""Weights in a file beside the model: ExecuTorch's .ptd and ONNX external data, loaded by the runtimes."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.dummy_pipelines import stable_diffusion


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return stable_diffusion.build(tmp_path_factory.mktemp("sd") / "pipeline")


@pytest.fixture(scope="module")
def weight_bytes(sd_dir) -> int:
    from safetensors.numpy import load_file

    return sum(t.nbytes for t in load_file(str(sd_dir / "unet" / "diffusion_pytorch_model.safetensors")).values())


def _export(*args: str):
    from edgegen.cli import app

    return CliRunner().invoke(app, ["export", *args])


@pytest.mark.parametrize(
    ("target", "name", "weights"),
    [("executorch", "denoiser-executorch-xnnpack", "weights.ptd"), ("onnx", "denoiser-onnx", "model.onnx.data")],
)
def test_separate_weights_are_written_listed_and_loaded(tmp_path, sd_dir, weight_bytes, target, name, weights):
    from edgegen.artifact import load_artifact
    from edgegen.session import open_artifact

    separate, embedded = tmp_path / "separate", tmp_path / "embedded"
    assert _export(str(sd_dir), "-o", str(separate), "--component", "denoiser", "--target", target, "--separate-weights").exit_code == 0
    assert _export(str(sd_dir), "-o", str(embedded), "--component", "denoiser", "--target", target).exit_code == 0
    artifact, whole = load_artifact(separate / name), load_artifact(embedded / name)
    assert artifact.manifest.weight_files == [weights] and whole.manifest.weight_files == []
    weights_file, model_file = artifact.folder / weights, artifact.model_path
    assert weights_file.stat().st_size >= weight_bytes
    # The weights left the program: it shrank by at least their size.
    assert whole.model_path.stat().st_size - model_file.stat().st_size >= 0.9 * weight_bytes
    assert artifact.model_bytes == model_file.stat().st_size + weights_file.stat().st_size
    # The runtime loads the weights beside the program: parity was measured through it, and a
    # session opened now gives the reference outputs.
    assert artifact.manifest.parity.measured and artifact.manifest.parity.psnr_db >= 60.0
    inputs, expected = artifact.reference_tensors()
    produced = open_artifact(artifact).run(inputs)
    for key, value in expected.items():
        np.testing.assert_allclose(produced[key], value, rtol=1e-3, atol=1e-4)


def test_an_int8_onnx_export_keeps_its_weights_beside_the_model(tmp_path, sd_dir):
    """The int8 path writes the float model and onnxruntime's intermediates with external data
    too: past 2 GiB (SD 1.5's float UNet) a protobuf cannot hold them; none of them is left behind."""
    from edgegen.artifact import load_artifact

    result = _export(str(sd_dir), "-o", str(tmp_path), "--component", "denoiser", "--target", "onnx", "--quantize", "int8", "--separate-weights")
    assert result.exit_code == 0, result.output
    artifact = load_artifact(tmp_path / "denoiser-onnx-int8")
    assert artifact.manifest.weight_files == ["model.onnx.data"]
    assert sorted(entry.path for entry in artifact.manifest.files) == ["model.onnx", "model.onnx.data", "reference.safetensors"]
    assert artifact.manifest.parity.measured and artifact.manifest.parity.psnr_db >= artifact.manifest.parity.min_psnr_db


def test_a_missing_weight_file_is_one_line(tmp_path, sd_dir):
    from edgegen.cli import app

    assert _export(str(sd_dir), "-o", str(tmp_path), "--component", "denoiser", "--target", "executorch", "--separate-weights").exit_code == 0
    (tmp_path / "denoiser-executorch-xnnpack" / "weights.ptd").unlink()
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "denoiser-executorch-xnnpack")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: artifact {tmp_path / 'denoiser-executorch-xnnpack'} is missing weights.ptd"]


def test_a_target_that_keeps_weights_inside_refuses_the_option(tmp_path, sd_dir):
    out = tmp_path / "out"
    result = _export(str(sd_dir), "-o", str(out), "--target", "tflite", "--separate-weights")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: target 'tflite' keeps the weights inside its model; --separate-weights applies to onnx, executorch"
    ]
    assert not out.exists()
