"""The memory check before an export: the estimate from the weights' headers, and the refusal
that names what would fit instead, before anything loads."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from edgegen.exporting import capacity
from tests.dummy_pipelines import stable_diffusion


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return stable_diffusion.build(tmp_path_factory.mktemp("sd") / "pipeline")


def _export(*args: str, env: dict[str, str] | None = None):
    from edgegen.cli import app

    return CliRunner().invoke(app, ["export", *args], env=env)


def test_weight_bytes_come_from_the_headers_in_the_load_dtype(sd_dir):
    from safetensors.numpy import load_file

    tensors = load_file(str(sd_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    elements = sum(int(np.prod(t.shape)) for t in tensors.values())
    assert capacity.loaded_bytes(sd_dir, "unet", None, "float32") == 4 * elements
    assert capacity.loaded_bytes(sd_dir, "unet", None, "float16") == 2 * elements


def test_the_estimate_grows_with_the_target_and_int8():
    sizes = {"text_encoder": 100 * 2**20, "denoiser": 2**30}
    onnx = capacity.estimated_peak(sizes, "onnx", "none")
    assert onnx == int(capacity.BASELINE_BYTES + sum(sizes.values()) + (capacity.PEAK_PER_WEIGHT_BYTE["onnx", "float32"] - 1) * 2**30)
    # float16 weights take half the bytes, but onnxruntime upcasts them for its CPU kernels.
    assert capacity.estimated_peak(sizes, "onnx", "none", "float16") > onnx
    assert capacity.estimated_peak(sizes, "executorch", "none") > onnx
    assert capacity.estimated_peak(sizes, "onnx", "int8") > onnx


def test_onnx_int8_of_sd15s_unet_is_refused_on_a_24_gib_host():
    """Measured: killed for memory with 22 GiB available (onnxruntime's quantizer after the export)."""
    unet = int(859.5e6 * 4)  # SD 1.5's UNet in float32
    assert capacity.estimated_peak({"denoiser": unet}, "onnx", "int8") > 22 * capacity.GIB
    assert capacity.estimated_peak({"denoiser": unet}, "onnx", "none") < 22 * capacity.GIB  # 9.2 GiB measured


def _limit_between(sd_dir, fits: str, refused: str) -> str:
    low = capacity.estimated_peak({"denoiser": capacity.loaded_bytes(sd_dir, "unet", None, "float32")}, fits, "none")
    high = capacity.estimated_peak({"denoiser": capacity.loaded_bytes(sd_dir, "unet", None, "float32")}, refused, "none")
    assert low < high
    return str((low + high) / 2 / capacity.GIB)


def test_an_export_that_would_not_fit_is_refused_naming_what_fits(tmp_path, sd_dir):
    limit = _limit_between(sd_dir, "onnx", "executorch")
    out = tmp_path / "out"
    result = _export(str(sd_dir), "-o", str(out), "--component", "denoiser", "--target", "executorch", env={capacity.MEMORY_LIMIT_ENV: limit})
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: exporting denoiser (0.0 GiB of float32 weights) to executorch needs about ")
    # ExecuTorch's float16 export needs more than its float32 one (measured on SD 1.5): not offered.
    assert "what fits: --target onnx (about " in line and "--dtype float16" not in line and "--no-memory-check" in line
    assert not out.exists()
    # The user may know better (swap, a lighter converter build): --no-memory-check tries anyway.
    result = _export(
        str(sd_dir), "-o", str(out), "--component", "denoiser", "--target", "executorch", "--no-memory-check",
        env={capacity.MEMORY_LIMIT_ENV: limit},
    )
    assert result.exit_code == 0, result.output
    assert (out / "denoiser-executorch-xnnpack" / "manifest.json").is_file()


def test_when_nothing_fits_it_says_so(tmp_path, sd_dir):
    result = _export(str(sd_dir), "-o", str(tmp_path / "out"), env={capacity.MEMORY_LIMIT_ENV: "0.5"})
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert "and 0.5 GiB is available; nothing fits on this machine" in line


def test_a_bad_memory_limit_is_one_line(tmp_path, sd_dir):
    result = _export(str(sd_dir), "-o", str(tmp_path / "out"), env={capacity.MEMORY_LIMIT_ENV: "lots"})
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {capacity.MEMORY_LIMIT_ENV}='lots' is not a number of GiB"]
