"""TFLite/LiteRT specifics: converter-narrowed I/O, signature names, the op report, the choices."""

from __future__ import annotations

import numpy as np
import pytest

from edgegen.families.stable_diffusion import COMPONENT_NAMES
from edgegen.errors import EdgegenError
from edgegen.exporting.orchestration import ExportOptions, export_component
from edgegen.session import open_artifact
from tests.helpers import require_runtime

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _tflite_runs_here():
    require_runtime("tflite")  # pinned in pyproject's [tflite] extra: missing fails, never skips


def test_int64_token_ids_are_recorded_as_int32_and_still_accepted(exported):
    artifact = exported("text_encoder", "tflite")
    manifest = artifact.manifest
    assert [(s.name, s.dtype) for s in manifest.eager_inputs] == [("input_ids", "int64")]
    # The converter narrowed the ids; the manifest says what it made, not what eager took.
    assert [(s.name, s.dtype) for s in manifest.inputs] == [("input_ids", "int32")]

    inputs, expected = artifact.reference_tensors()
    assert inputs["input_ids"].dtype == np.int64
    session = open_artifact(artifact)
    from_int64 = session.run(inputs)["text_embeddings"]
    from_int32 = session.run({"input_ids": inputs["input_ids"].astype(np.int32)})["text_embeddings"]
    np.testing.assert_array_equal(from_int64, from_int32)
    np.testing.assert_allclose(from_int64, expected["text_embeddings"], atol=1e-4, rtol=0)


def test_denoiser_io_follows_declared_order_not_signature_order(exported):
    # LiteRT lists signature tensors alphabetically (encoder_hidden_states, sample, timestep).
    manifest = exported("denoiser", "tflite").manifest
    assert [s.name for s in manifest.inputs] == ["sample", "timestep", "encoder_hidden_states"]
    assert [s.shape for s in manifest.inputs] == [s.shape for s in manifest.eager_inputs]
    assert [s.dtype for s in manifest.inputs] == ["float32", "float32", "float32"]


@pytest.mark.parametrize("component", COMPONENT_NAMES)
def test_op_counts_are_builtin_ops_only(exported, component):
    from ai_edge_litert import schema_py_generated as schema

    from edgegen.exporters.tflite import tflite_op_counts

    artifact = exported(component, "tflite")
    ops = tflite_op_counts(artifact.model_path)
    builtin = {name for name in vars(schema.BuiltinOperator) if not name.startswith("_")} - {"CUSTOM"}
    assert ops and set(ops) <= builtin, f"non-builtin ops: {set(ops) - builtin}"
    assert not any("flex" in name.lower() or "custom" in name.lower() for name in ops)

    delegation = artifact.manifest.delegation
    assert delegation is not None and delegation.backend == "litert-builtin"
    assert delegation.total_nodes == delegation.delegated_nodes == sum(ops.values())
    assert delegation.fallback_ops == {}


def test_unsupported_quantization_lists_the_supported_ones(pipeline, pipeline_dir, tmp_path):
    from edgegen.registry import EXPORTERS

    supported = EXPORTERS.get("tflite").quantizations
    assert {"none", "int8", "int8-dynamic", "int8-weights"} <= set(supported)
    with pytest.raises(EdgegenError, match="supports: " + ", ".join(supported)):
        export_component(pipeline, pipeline_dir, "text_encoder", "tflite", tmp_path, ExportOptions(quantize="int4"))
    assert list(tmp_path.iterdir()) == []


def test_tflite_runtime_fallback_is_refused_for_quantized_artifacts(exported, monkeypatch):
    import edgegen.runtimes.tflite as runtime_module

    manifest = exported("text_encoder", "tflite").manifest
    quantized = manifest.model_copy(update={"quantization": manifest.quantization.model_copy(update={"scheme": "int8"})})
    only_tflite_runtime = {"ai_edge_litert.interpreter": False, "tflite_runtime.interpreter": True}
    monkeypatch.setattr(runtime_module, "_has", lambda module: only_tflite_runtime[module])
    assert runtime_module.RUNTIME.unavailable_reason(manifest) is None
    assert "quantized" in runtime_module.RUNTIME.unavailable_reason(quantized)


@pytest.mark.slow
def test_scman_student_int8_keeps_float_inputs(pipeline_dir, tmp_path):
    # SCMAN's summaries read the transposed context: quantizing there used to make the
    # converter turn the model's encoder_hidden_states input into int8.
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.models.student import make_student
    from edgegen.families.loading import load_pipeline

    student_dir = make_student(pipeline_dir, "tiny", tmp_path / "student")
    artifact = export_component(load_pipeline(student_dir), student_dir, "denoiser", "tflite", tmp_path / "a", ExportOptions(quantize="int8"))
    assert [spec.dtype for spec in artifact.manifest.inputs] == ["float32", "float32", "float32"]
    assert artifact.manifest.parity.psnr_db >= 20


@pytest.mark.parametrize("family", ["stable_diffusion", "stable_diffusion_xl"])
def test_static_int8_of_diffusers_test_unets(tmp_path, family):
    """diffusers' own test UNets: a stride-2 padded convolution made LiteRT refuse the int8 graph
    ("'tfl.pad' op quantization parameters violate the same scale constraint"), and SDXL's
    text_embeds, concatenated before a quantized linear, came out an int8 model input."""
    import importlib

    from edgegen.artifact import load_artifact
    from edgegen.exporting.base import MIN_PSNR_DB_INT8
    from edgegen.families.loading import load_pipeline

    folder = importlib.import_module(f"tests.dummy_pipelines.{family}").build(tmp_path / "pipeline")
    artifact = export_component(load_pipeline(folder), folder, "denoiser", "tflite", tmp_path / "out", ExportOptions(quantize="int8"))
    manifest = load_artifact(artifact.folder).manifest
    assert any("explicit pad, then the convolution without padding" in line for line in manifest.graph_rewrites)
    assert {spec.dtype for spec in manifest.inputs} == {"float32"}
    assert manifest.parity.measured and manifest.parity.psnr_db >= MIN_PSNR_DB_INT8


def test_explicit_padding_is_exact():
    import copy

    import torch

    from edgegen.exporting.rewrites import explicit_padding_for_strided_convs

    torch.manual_seed(0)
    original = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1))
    changed = copy.deepcopy(original)
    assert explicit_padding_for_strided_convs(changed) == ["Conv2d x1 -> explicit pad, then the convolution without padding"]
    x = torch.randn(1, 3, 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(changed(x), original(x), rtol=0, atol=0)
    assert original[0].padding == (1, 1)  # the original is left as it was


def test_static_int8_concatenation_of_a_quantized_and_a_wider_float_input(tmp_path):
    """A UNet's skip connection. Without one scale over all its inputs, the converter either makes
    the concatenation int8 at the quantized input's scale and clips the float input into it (the
    embedded student's int8 denoiser: 27 dB, 45 dB with one scale), or, as here, refuses the
    graph ("Attempting to convert non-NHWC compatible node to NHWC: dequantize_per_tensor")."""
    import math
    import types

    import litert_torch
    import torch
    from ai_edge_litert.interpreter import Interpreter

    from edgegen.exporters.tflite import _named_io, _static_int8

    class SkipConnection(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv_in, self.conv_out = torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Conv2d(16, 4, 3, padding=1)

        def forward(self, sample):
            skip = self.conv_in(sample)  # quantized output
            wide = skip * 6.0 + 2.0  # float, six times the skip's range
            return self.conv_out(torch.cat([wide, skip], dim=1))

    spec = types.SimpleNamespace(name="sample")
    batches = [{"sample": torch.randn(1, 4, 8, 8)} for _ in range(8)]
    component = types.SimpleNamespace(module=SkipConnection().eval(), inputs=[spec], outputs=[types.SimpleNamespace(name="out")], calibration=batches)
    module = _named_io(component)
    sample = {"sample": torch.randn(1, 4, 8, 8)}
    quantized, quant_config = _static_int8(module, sample, component)
    path = tmp_path / "model.tflite"
    with torch.no_grad():
        litert_torch.convert(quantized, (), sample_kwargs=sample, quant_config=quant_config).export(str(path))
        expected = module(**sample)["out"].numpy()
    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    produced = runner(sample=sample["sample"].numpy())["out"]
    psnr = 10 * math.log10(float(np.abs(expected).max()) ** 2 / float(((expected - produced) ** 2).mean()))
    assert psnr >= 30, f"int8 concatenation parity {psnr:.1f} dB"


def test_static_int8_quantizes_every_convolution_reading_a_shared_weight():
    """A one-call program's denoiser runs once per step on one set of weights; litert-torch's
    convolution annotator skips matches that overlap in the weight, which left the second step
    float with a float32 copy of every weight."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgegen.exporters.tflite import STATIC_OPS, _float_boundary_quantizer

    class TwoSteps(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(torch.relu(self.conv(x)) * 0.5).sum()

    from edgegen.exporting.quantize import xnnpack_quantizer

    example = (torch.randn(1, 4, 8, 8),)
    # LiteRT's quantizer, and XNNPACK's (ExecuTorch), calibrated and QAT: each had the same gap.
    for quantizer in (_float_boundary_quantizer(STATIC_OPS), xnnpack_quantizer(), xnnpack_quantizer(qat=True)):
        prepared = prepare_pt2e(torch.export.export(TwoSteps(), example, strict=False).module(), quantizer)
        prepared(*example)
        converted = convert_pt2e(prepared, fold_quantize=False)
        convolutions = [node for node in converted.graph.nodes if node.op == "call_function" and node.target == torch.ops.aten.conv2d.default]
        assert len(convolutions) == 2
        assert all("dequantize" in str(node.args[1].target) for node in convolutions), (quantizer, [str(node.args[1].target) for node in convolutions])
