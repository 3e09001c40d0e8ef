"""Graph passes shared by the PT2E int8 paths: exact, and they remove what they say."""

from __future__ import annotations

import torch


class Scores(torch.nn.Module):
    """diffusers' plain attention scores: baddbmm over an uninitialised input with beta=0."""

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        empty = torch.empty(query.shape[0], query.shape[1], key.shape[1], dtype=query.dtype)
        return torch.baddbmm(empty, query, key.transpose(-1, -2), beta=0, alpha=0.125).softmax(dim=-1)


def exported():
    query, key = torch.randn(2, 16, 8), torch.randn(2, 16, 8)
    return torch.export.export(Scores(), (query, key), strict=False).module(), (query, key)


def targets(graph_module) -> set[str]:
    return {str(node.target) for node in graph_module.graph.nodes if node.op == "call_function"}


def test_uninitialised_inputs_become_zeros_and_results_stay():
    from edgegen.exporting.quantize import zero_uninitialised

    module, args = exported()
    expected = module(*args)
    rewritten = zero_uninitialised(module)
    assert not any("empty" in name for name in targets(rewritten))
    assert "aten.zeros.default" in targets(rewritten)
    torch.testing.assert_close(rewritten(*args), expected, rtol=0, atol=0)


def test_zero_beta_baddbmm_becomes_a_scaled_bmm_without_its_input():
    from edgegen.exporting.quantize import drop_zero_baddbmm_inputs

    module, args = exported()
    expected = module(*args)
    rewritten = drop_zero_baddbmm_inputs(module)
    names = targets(rewritten)
    assert "aten.baddbmm.default" not in names and "aten.bmm.default" in names
    assert not any("empty" in name for name in names)  # the dead input went with it
    torch.testing.assert_close(rewritten(*args), expected, rtol=1e-6, atol=1e-7)


def test_a_corrupt_qat_state_is_named_in_one_line(pipeline, tmp_path):
    import pytest

    from edgegen.errors import EdgegenError
    from edgegen.exporting.quantize import XNNPACK_QAT, LearnedScales, fake_quant_module
    from edgegen.families.stable_diffusion import build_component

    state = tmp_path / "unet" / "qat.safetensors"
    state.parent.mkdir()
    state.write_bytes(b"\x00" * 16)  # cut short, not a safetensors file
    component = build_component(pipeline, "vae_decoder")
    component.quantization_source = LearnedScales(scheme=XNNPACK_QAT, state_path=state)
    with pytest.raises(EdgegenError, match=r"cannot read the QAT state .*unet/qat.safetensors") as caught:
        fake_quant_module(component)
    assert "\n" not in str(caught.value)


def test_integer_arithmetic_stays_integer_through_int8_calibration():
    """The XNNPACK quantizer turns a scalar operand into a float32 constant and annotates by op
    type; integer position ids (``arange + offset``, Gemma-2's) must come out integer."""
    from edgegen.exporting.quantize import quantize_static, xnnpack_quantizer

    class PositionsAndFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 8)
            self.table = torch.nn.Embedding(16, 8)

        def forward(self, x):
            positions = (torch.arange(4) + 3) * 2  # integer add/mul with scalars
            return self.linear(x) + self.table(positions)

    torch.manual_seed(0)
    module = PositionsAndFeatures().eval()
    x = torch.randn(1, 4, 8)
    program = torch.export.export(module, (x,), strict=False)
    batches = [{"x": torch.randn(1, 4, 8)} for _ in range(4)]
    quantized = quantize_static(program.module(), xnnpack_quantizer(), batches, ["x"])
    integer_nodes = [n for n in quantized.graph.nodes if n.op == "call_function" and "val" in n.meta
                     and isinstance(n.meta["val"], torch.Tensor) and not n.meta["val"].dtype.is_floating_point]
    assert {str(n.target) for n in integer_nodes} >= {"aten.add.Scalar", "aten.mul.Scalar"}
    with torch.no_grad():
        expected, got = module(x), quantized(x)
    # int8 error only: the positions (and so the embedding rows) are exact.
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()


def test_calibrated_onnx_int8_holds_no_attention_score_sized_constant(tmp_path):
    """onnxruntime's quantization preprocessing folded the attention's beta=0 baddbmm input into a
    tokens x tokens float constant (4 MB in diffusers' test VAE, ten times its weights)."""
    import numpy as np
    import onnx

    from edgegen.exporting.orchestration import ExportOptions, export_pipeline
    from tests.dummy_pipelines import stable_diffusion

    folder = stable_diffusion.build(tmp_path / "pipeline")
    [artifact] = export_pipeline(folder, "onnx", tmp_path / "out", ["vae_decoder"], ExportOptions(quantize="int8"))
    assert artifact.manifest.parity.psnr_db >= 20.0
    graph = onnx.load(str(artifact.model_path)).graph
    largest = max(int(np.prod(t.dims)) if t.dims else 1 for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    tokens = 32 * 32  # the test VAE decodes 32x32 latents; its mid-block attends over them
    assert largest < tokens * tokens / 16, largest


class HeadsAndResidual(torch.nn.Module):
    """A projection split into heads (Flux's ``unflatten``, a rotary ``unsqueeze``), another
    projection, and a residual add: the shape ops XNNPACK runs quantized only when their int8
    parameters equal their input's, and an add that stays float."""

    def __init__(self):
        super().__init__()
        self.to_q = torch.nn.Linear(8, 8)
        self.to_out = torch.nn.Linear(8, 8)

    def forward(self, x):
        heads = self.to_q(x).unflatten(-1, (2, 4)).unsqueeze(1)
        return self.to_out(heads.flatten(-2).squeeze(1)) + x


def _calibrated_heads_and_residual():
    from edgegen.exporting.quantize import quantize_static, xnnpack_quantizer

    torch.manual_seed(0)
    module = HeadsAndResidual().eval()
    x = torch.randn(1, 4, 8)
    program = torch.export.export(module, (x,), strict=False)
    batches = [{"x": torch.randn(1, 4, 8) * (i + 1)} for i in range(4)]
    return module, x, quantize_static(program.module(), xnnpack_quantizer(), batches, ["x"])


def _quant_params(node):
    return tuple(node.args[1:3])


def test_shape_ops_share_their_inputs_int8_parameters():
    _, _, quantized = _calibrated_heads_and_residual()
    shape_ops = {"aten.unflatten.int", "aten.unsqueeze.default", "aten.flatten.using_ints", "aten.squeeze.dims", "aten.squeeze.dim"}
    checked = 0
    for node in quantized.graph.nodes:
        if str(node.target) not in shape_ops:
            continue
        [source] = node.all_input_nodes
        assert "dequantize_per_tensor" in str(source.target), node
        requantized = [user for user in node.users if str(user.target).endswith("quantize_per_tensor.default") and "dequantize" not in str(user.target)]
        assert requantized, node
        assert all(_quant_params(user) == _quant_params(source) for user in requantized), node
        checked += 1
    assert checked >= 3


def test_calibrated_int8_quantizes_the_weighted_layers_and_leaves_the_add_float():
    module, x, quantized = _calibrated_heads_and_residual()
    [add] = [n for n in quantized.graph.nodes if str(n.target) == "aten.add.Tensor"]
    assert not any("quantize_per_tensor" in str(user.target) for user in add.users)  # its output stays float
    linears = [n for n in quantized.graph.nodes if str(n.target) == "aten.linear.default"]
    assert len(linears) == 2
    assert all("dequantize" in str(n.args[0].target) and "dequantize" in str(n.args[1].target) for n in linears)
    with torch.no_grad():
        expected, got = module(x), quantized(x)
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()


def test_calibrated_int8_quantizes_convolutions_too():
    """The conv annotator asks the quantizer's filter about its weight and bias nodes as well."""
    from edgegen.exporting.quantize import quantize_static, xnnpack_quantizer

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 4, 8, 8)
    program = torch.export.export(module, (x,), strict=False)
    quantized = quantize_static(program.module(), xnnpack_quantizer(), [{"x": torch.randn(1, 4, 8, 8)} for _ in range(4)], ["x"])
    convolutions = [n for n in quantized.graph.nodes if str(n.target) == "aten.conv2d.default"]
    assert len(convolutions) == 2
    assert all("dequantize_per_channel" in str(n.args[1].target) for n in convolutions)
    assert all("dequantize_per_tensor" in str(n.args[0].target) for n in convolutions)


def test_the_decoder_calibrated_on_sampled_latents_decodes_sampled_latents_faithfully(pipeline_dir, pipeline):
    """Calibrated on Gaussian latents alone, the embedded default's int8 decoder was 17.7 dB against
    float on the latents the sampler ends on (10 dB on some prompts); with sampled latents, 40 dB."""
    import math

    from edgegen.exporting.quantize import quantize_static, xnnpack_quantizer
    from edgegen.families import family_of
    from edgegen.families.prompts import CALIBRATION_PROMPTS
    from edgegen.sampling.loop import sampled_decoder_inputs

    family = family_of(pipeline_dir)
    decoder = family.build_component(pipeline, "vae_decoder")
    gaussian = family.calibration_inputs(pipeline, "vae_decoder")
    sampled = sampled_decoder_inputs(pipeline_dir, pipeline, CALIBRATION_PROMPTS)
    held_out = sampled_decoder_inputs(pipeline_dir, pipeline, ["a yellow square at the top left", "a red triangle at the bottom right"])
    assert len(sampled) == len(CALIBRATION_PROMPTS)
    assert sampled[0]["latents"].shape == gaussian[0]["latents"].shape

    def psnr_on_held_out(calibration) -> float:
        program = torch.export.export(decoder.module, decoder.example_args(), strict=False)
        quantized = quantize_static(program.module(), xnnpack_quantizer(), calibration, ["latents"])
        scores = []
        with torch.no_grad():
            for inputs in held_out:
                expected, got = decoder.module(inputs["latents"]), quantized(inputs["latents"])
                scores.append(10 * math.log10(float(expected.abs().max()) ** 2 / float(((expected - got) ** 2).mean())))
        return min(scores)

    with_sampled, gaussian_only = psnr_on_held_out(gaussian + sampled), psnr_on_held_out(gaussian)
    assert with_sampled >= 30.0, with_sampled
    assert with_sampled > gaussian_only + 6.0, (with_sampled, gaussian_only)
