"""`edgegen export --dtype float16`: weights loaded and computed in float16 behind a float32 interface.

Each target's artifact is checked against the float16 eager model (the parity gate) and against
the float32 model (what float16 costs), and the file is checked to hold float16 weights where the
format shows them. Families whose float16 models mix in float32 parts (SDXL's time embedding,
T5's ``wo`` layers transformers keeps in float32) export too.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from edgegen.exporting.base import MIN_PSNR_DB_FLOAT16
from tests.dummy_pipelines import pixart, stable_diffusion, stable_diffusion_xl

# float16 rounding of weights and activations on these tiny random models, measured at 65-75 dB.
MIN_PSNR_DB_FLOAT16_VS_FLOAT32 = 50.0

TARGETS = [
    pytest.param(("--target", "onnx"), "denoiser-onnx-float16", id="onnx"),
    pytest.param(("--target", "executorch"), "denoiser-executorch-xnnpack-float16", id="executorch-xnnpack"),
    pytest.param(("--target", "executorch", "--backend", "coreml"), "denoiser-executorch-coreml-float16", id="executorch-coreml"),
    pytest.param(("--target", "tflite"), "denoiser-tflite-float16", id="tflite"),
    pytest.param(("--target", "coreml"), "denoiser-coreml-float16", id="coreml"),
]


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return stable_diffusion.build(tmp_path_factory.mktemp("sd") / "pipeline")


@pytest.fixture(scope="module")
def float32_denoiser(sd_dir):
    from edgegen.families import family_of
    from edgegen.families.loading import load_pipeline

    return family_of(sd_dir).build_component(load_pipeline(sd_dir), "denoiser")


def _export(*args: str):
    from edgegen.cli import app

    return CliRunner().invoke(app, ["export", *args])


@pytest.fixture(scope="module")
def float16_denoisers(sd_dir, tmp_path_factory):
    """The denoiser exported with --dtype float16 once per target: (target flags) -> its folder."""
    root = tmp_path_factory.mktemp("float16")
    exported = {}

    def get(target: tuple[str, ...], name: str):
        if target not in exported:
            result = _export(str(sd_dir), "-o", str(root), "--component", "denoiser", "--dtype", "float16", *target)
            assert result.exit_code == 0, result.output
            exported[target] = root / name
        return exported[target]

    return get


@pytest.mark.parametrize(("target", "name"), TARGETS)
def test_a_float16_export_computes_in_float16_behind_float32_io(float16_denoisers, float32_denoiser, target, name):
    from safetensors.numpy import load_file

    from edgegen.artifact import load_artifact
    from edgegen.measure.metrics import psnr_db

    folder = float16_denoisers(tuple(target), name)
    artifact = load_artifact(folder)
    manifest = artifact.manifest
    assert manifest.source.dtype == "float16"
    assert {spec.dtype for spec in manifest.inputs + manifest.outputs} == {"float32"}
    assert any("around a float16 model" in line for line in manifest.graph_rewrites)
    assert manifest.parity.min_psnr_db == MIN_PSNR_DB_FLOAT16
    if manifest.parity.measured:
        assert manifest.parity.psnr_db >= MIN_PSNR_DB_FLOAT16
    else:  # Core ML programs, and ExecuTorch's Core ML delegate, run on Apple hosts only
        assert sys.platform != "darwin" and "coreml" in name and "not measured on this host" in manifest.parity.reason
    # The float16 reference is the float32 model within float16 rounding, not another model.
    reference = load_file(str(folder / "reference.safetensors"))
    float32 = float32_denoiser.run_eager()
    for spec in float32_denoiser.outputs:
        assert reference[f"output.{spec.name}"].dtype == np.float32
        assert psnr_db(float32[spec.name].numpy(), reference[f"output.{spec.name}"]) >= MIN_PSNR_DB_FLOAT16_VS_FLOAT32


def test_the_onnx_file_holds_float16_weights(float16_denoisers):
    import onnx

    graph = onnx.load(str(float16_denoisers(("--target", "onnx"), "denoiser-onnx-float16") / "model.onnx")).graph
    elements = {onnx.TensorProto.FLOAT: 0, onnx.TensorProto.FLOAT16: 0}
    for tensor in graph.initializer:
        if tensor.data_type in elements:
            elements[tensor.data_type] += int(np.prod(tensor.dims))
    assert elements[onnx.TensorProto.FLOAT16] >= 0.9 * sum(elements.values()), elements


def test_the_tflite_file_holds_float16_weights(sd_dir, float16_denoisers):
    from ai_edge_litert.interpreter import Interpreter
    from safetensors import safe_open

    folder = float16_denoisers(("--target", "tflite"), "denoiser-tflite-float16")
    details = Interpreter(model_path=str(folder / "model.tflite")).get_tensor_details()
    float16 = sum(int(np.prod(d["shape"])) for d in details if d["dtype"] == np.float16)
    with safe_open(str(sd_dir / "unet" / "diffusion_pytorch_model.safetensors"), "np") as weights:
        parameters = sum(int(np.prod(weights.get_slice(key).get_shape())) for key in weights.keys())
    assert float16 >= 0.9 * parameters, (float16, parameters)


@pytest.mark.parametrize("target", ["onnx", "executorch"])
def test_mixed_float16_and_float32_parts_export(tmp_path_factory, target):
    """SDXL concatenates float16 text embeddings with float32 time embeddings; PixArt's T5 keeps
    its ``wo`` layers in float32. torch promotes implicitly; the export makes it explicit."""
    from edgegen.artifact import load_artifact

    cases = [(stable_diffusion_xl, "denoiser"), (pixart, "text_encoder")]
    for module, component in cases:
        folder = module.build(tmp_path_factory.mktemp(module.FAMILY) / "pipeline")
        out = tmp_path_factory.mktemp("out")
        result = _export(str(folder), "-o", str(out), "--component", component, "--dtype", "float16", "--target", target)
        assert result.exit_code == 0, f"{module.FAMILY}: {result.output}"
        [artifact_dir] = [p for p in out.iterdir() if p.is_dir()]
        manifest = load_artifact(artifact_dir).manifest
        assert manifest.parity.measured and manifest.parity.psnr_db >= MIN_PSNR_DB_FLOAT16
        assert any("type promotion made explicit" in line for line in manifest.graph_rewrites), manifest.graph_rewrites


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--dtype", "bfloat16"], "--dtype bfloat16: edgegen loads weights as float32 or float16"),
        (["--dtype", "float16", "--quantize", "int8"], "--quantize int8 starts from float32 weights; drop --dtype float16"),
    ],
)
def test_an_unsupported_dtype_is_refused_in_one_line(tmp_path, sd_dir, options, message):
    out = tmp_path / "out"
    result = _export(str(sd_dir), "-o", str(out), *options)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {message}" + result.output.strip().split(message, 1)[1]]
    assert not out.exists()


def test_a_version_2_manifest_reads_as_float32(tmp_path, sd_dir):
    from edgegen.artifact import load_artifact

    assert _export(str(sd_dir), "-o", str(tmp_path), "--component", "vae_decoder").exit_code == 0
    path = tmp_path / "vae_decoder-onnx" / "manifest.json"
    data = json.loads(path.read_text())
    data["schema_version"] = 2
    del data["source"]["dtype"]
    path.write_text(json.dumps(data))
    assert load_artifact(tmp_path / "vae_decoder-onnx").manifest.source.dtype == "float32"


def test_eager_runs_compute_in_float32_on_the_float16_weights_and_leave_them_float16():
    """CPUs without float16 arithmetic run torch's float16 kernels 50-300x slower: eager runs of a
    float16 component compute in float32 on its (exactly upcast) weights; exports trace float16."""
    import torch

    from edgegen.families.base import float32_io

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.GroupNorm(2, 8)).half()
    model[1].float()  # a part kept in float32, as transformers keeps T5's wo layers
    wrapped = float32_io(model, torch.float16)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        eager = wrapped(x)
        expected = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.GroupNorm(2, 8))
        expected.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        torch.testing.assert_close(eager, expected(x), rtol=0, atol=0)
    assert eager.dtype == torch.float32
    assert model[0].weight.dtype == torch.float16 and model[1].weight.dtype == torch.float32
    program = torch.export.export(wrapped, (x,), strict=False)
    convolution = next(n for n in program.graph.nodes if "conv" in str(n.target))
    assert convolution.meta["val"].dtype == torch.float16


def test_an_export_asked_for_a_dtype_the_pipeline_was_not_loaded_in_is_refused(tmp_path, sd_dir):
    from edgegen.errors import EdgegenError
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.families.loading import LoadOptions, load_pipeline

    with pytest.raises(EdgegenError, match="denoiser was loaded in float32 but the export was asked for --dtype float16"):
        export_component(load_pipeline(sd_dir), sd_dir, "denoiser", "onnx", tmp_path, ExportOptions(load=LoadOptions(dtype="float16")))
    assert list(tmp_path.iterdir()) == []
