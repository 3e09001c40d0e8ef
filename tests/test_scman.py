"""SCMAN: dense parity with diffusers, sparse patterns against explicit masks, validation, export."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from edgegen.errors import EdgegenError
from edgegen.models.scman import (
    SCMANAttention,
    SCMANConfig,
    SCMANCore,
    SCMANProcessor,
    install_scman,
    scman_flops,
    unet_token_grids,
)

ATOL = 1e-5
EXPORT_ATOL = 1e-4
FORBIDDEN_OPS = re.compile(r"gather|scatter|index|topk|nonzero|where|masked")
FORBIDDEN_MIL_OPS = re.compile(r"gather|scatter|topk|non_zero|select|masked")
CONTEXT_LENGTH = 40  # the embedded default's text length
SPARSE = dict(mode="sparse", window=4, global_tokens=2, summary_tokens=4, context_length=CONTEXT_LENGTH)


@pytest.fixture(scope="module")
def teacher_unet(pipeline_dir):
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    torch.set_num_threads(1)
    unet = UNet2DConditionModel.from_pretrained(pipeline_dir / "unet").eval()
    unet.set_attn_processor(AttnProcessor())
    return unet


@pytest.fixture(scope="module")
def unet_inputs():
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, 4, 8, 8, generator=generator),
        torch.tensor([10.0, 500.0]),
        torch.randn(2, CONTEXT_LENGTH, 32, generator=generator),
    )


def _run(unet, inputs):
    with torch.no_grad():
        return unet(*inputs, return_dict=False)[0]


def _layer(unet, name):
    return unet.get_submodule(name)


# -- dense mode and installation ----------------------------------------------------------------


@pytest.mark.parametrize("layout", ["bhld", "bc1l"])
def test_dense_mode_reproduces_attn_processor_on_the_default_unet(teacher_unet, unet_inputs, layout):
    expected = _run(teacher_unet, unet_inputs)
    unet = copy.deepcopy(teacher_unet)
    replaced = install_scman(unet, SCMANConfig(mode="dense", self_attention=True, layout=layout))
    assert len(replaced) == 8 and all(isinstance(p, SCMANProcessor) for p in unet.attn_processors.values())
    torch.testing.assert_close(_run(unet, unet_inputs), expected, atol=ATOL, rtol=0)


def test_install_replaces_cross_attention_only_unless_asked(teacher_unet):
    unet = copy.deepcopy(teacher_unet)
    replaced = install_scman(unet, SCMANConfig(**SPARSE))
    assert len(replaced) == 4 and all(".attn2:" in line and "cross-attention" in line for line in replaced)
    kinds = {name: type(p).__name__ for name, p in unet.attn_processors.items()}
    assert {kinds[n] for n in kinds if ".attn2." in n} == {"SCMANProcessor"}
    assert {kinds[n] for n in kinds if ".attn1." in n} == {"AttnProcessor"}


def test_token_grids_follow_the_unet_resolutions(teacher_unet):
    grids = unet_token_grids(teacher_unet)
    for name, grid in grids.items():
        expected = (4, 4) if name.startswith("mid_block") else (8, 8)
        assert grid == expected, name


def test_learned_summary_is_a_registered_parameter(teacher_unet):
    unet = copy.deepcopy(teacher_unet)
    install_scman(unet, SCMANConfig(**{**SPARSE, "summary": "learned"}))
    names = [n for n, _ in unet.named_parameters() if n.endswith("processor.core.summary_weight")]
    assert len(names) == 4


# -- sparse patterns against explicit masks -------------------------------------------------------


def _window_global_mask(height, width, window, global_tokens):
    """Additive mask over [image tokens ; global tokens], built from coordinates."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    window_id = ((ys // window) * (width // window) + xs // window).reshape(-1)
    same = window_id[:, None] == window_id[None, :]
    allowed = torch.cat([same, torch.ones(height * width, global_tokens, dtype=torch.bool)], dim=1)
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))


def _pooled(x, groups):
    batch, length, channels = x.shape
    return x.reshape(batch, groups, length // groups, channels).mean(dim=2)


def _dense_reference(q, k, v, heads, mask=None):
    def split(x):
        return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(q.shape)


def _to_bc1l(x):
    return x.transpose(1, 2).unsqueeze(2)


def _from_bc1l(x):
    return x.squeeze(2).transpose(1, 2)


@pytest.mark.parametrize("layout", ["bhld", "bc1l"])
@pytest.mark.parametrize(
    ("grid", "window", "global_tokens", "heads"),
    [((8, 8), 4, 2, 2), ((8, 8), 2, 0, 4), ((4, 8), 2, 4, 1), ((6, 6), 3, 3, 2), ((4, 4), 4, 16, 2)],
)
def test_window_and_global_tokens_equal_masked_dense_attention(layout, grid, window, global_tokens, heads):
    config = SCMANConfig(mode="sparse", window=window, global_tokens=global_tokens, layout=layout)
    core = SCMANCore(config, heads=heads, is_cross=False, grid=grid)
    generator = torch.Generator().manual_seed(1)
    tokens, channels = grid[0] * grid[1], 8 * heads
    q, k, v = (torch.randn(2, tokens, channels, generator=generator) for _ in range(3))
    scale = (channels // heads) ** -0.5
    if layout == "bc1l":
        out = _from_bc1l(core.attend(_to_bc1l(q), _to_bc1l(k), _to_bc1l(v), scale))
    else:
        out = core.attend(q, k, v, scale)
    keys = torch.cat([k, _pooled(k, global_tokens)], dim=1) if global_tokens else k
    values = torch.cat([v, _pooled(v, global_tokens)], dim=1) if global_tokens else v
    mask = _window_global_mask(*grid, window, global_tokens)
    torch.testing.assert_close(out, _dense_reference(q, keys, values, heads, mask), atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["bhld", "bc1l"])
def test_windowed_self_attention_in_the_unet_equals_attn_processor_with_a_mask(teacher_unet, layout):
    # diffusers' own AttnProcessor, given [image tokens ; pooled tokens] as keys and the explicit
    # -inf mask, is the reference for the installed SCMAN self-attention layer.
    from diffusers.models.attention_processor import AttnProcessor

    unet = copy.deepcopy(teacher_unet)
    install_scman(unet, SCMANConfig(**SPARSE, self_attention=True, layout=layout))
    attn = _layer(unet, "down_blocks.0.attentions.0.transformer_blocks.0.attn1")
    hidden = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = attn(hidden)
        attn.set_processor(AttnProcessor())
        mask = _window_global_mask(8, 8, 4, 2).expand(2, 64, 66)
        expected = attn(hidden, encoder_hidden_states=torch.cat([hidden, _pooled(hidden, 2)], 1), attention_mask=mask)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["bhld", "bc1l"])
@pytest.mark.parametrize("summary", ["pooled", "learned"])
def test_token_reduction_equals_dense_attention_over_reduced_keys(teacher_unet, layout, summary):
    from diffusers.models.attention_processor import AttnProcessor

    unet = copy.deepcopy(teacher_unet)
    install_scman(unet, SCMANConfig(**{**SPARSE, "summary": summary, "layout": layout}))
    attn = _layer(unet, "up_blocks.1.attentions.1.transformer_blocks.0.attn2")
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 64, 32, generator=generator)
    context = torch.randn(2, CONTEXT_LENGTH, 32, generator=generator)
    with torch.no_grad():
        if summary == "learned":
            attn.processor.core.summary_weight.copy_(torch.randn(4, CONTEXT_LENGTH, generator=generator))
            reduced = attn.processor.core.summary_weight @ context
        else:
            reduced = _pooled(context, 4)
        out = attn(hidden, encoder_hidden_states=context)
        attn.set_processor(AttnProcessor())
        expected = attn(hidden, encoder_hidden_states=reduced)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["bhld", "bc1l"])
def test_plain_module_cross_attention_matches_a_dense_reference(layout):
    torch.manual_seed(4)
    config = SCMANConfig(mode="sparse", summary_tokens=3, summary="pooled", context_length=12, layout=layout)
    module = SCMANAttention(query_dim=16, heads=2, context_dim=24, grid=(4, 4), config=config).eval()
    hidden, context = torch.randn(1, 16, 16), torch.randn(1, 12, 24)

    def linear(projection, x):
        weight = projection.weight.reshape(projection.weight.shape[0], -1)
        return torch.nn.functional.linear(x, weight, projection.bias)

    reduced = _pooled(context, 3)
    q, k, v = linear(module.to_q, hidden), linear(module.to_k, reduced), linear(module.to_v, reduced)
    expected = linear(module.to_out, _dense_reference(q, k, v, heads=2))
    with torch.no_grad():
        if layout == "bc1l":
            out = _from_bc1l(module(_to_bc1l(hidden), _to_bc1l(context)))
        else:
            out = module(hidden, context)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


# -- validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"mode": "blocky"}, "mode 'blocky' is not one of"),
        ({"summary": "topk"}, "summary 'topk' is not one of"),
        ({"layout": "nchw"}, "layout 'nchw' is not one of"),
        ({"window": 0}, "window must be an integer >= 1"),
        ({"global_tokens": -1}, "global_tokens must be an integer >= 0"),
        ({"summary_tokens": 5, "context_length": 16}, "summary_tokens \\(5\\) to divide the context length \\(16\\)"),
        ({"summary_tokens": 32, "context_length": 16}, "exceed the context length 16"),
    ],
)
def test_invalid_configs_are_rejected_with_the_reason(fields, reason):
    with pytest.raises(EdgegenError, match=reason):
        SCMANConfig(**fields)


def test_learned_summary_accepts_a_budget_that_does_not_divide():
    core = SCMANCore(SCMANConfig(summary="learned", summary_tokens=5, context_length=16), 2, is_cross=True)
    assert core.summary_weight.shape == (5, 16)
    torch.testing.assert_close(core.summary_weight.sum(dim=1), torch.ones(5))


@pytest.mark.parametrize(
    ("fields", "grid", "reason"),
    [
        ({"window": 3}, (8, 8), "window 3 does not divide the 8x8 token grid"),
        ({"window": 4}, (8, 6), "window 4 does not divide the 8x6 token grid"),
        ({"global_tokens": 65}, (8, 8), "65 global tokens exceed the 64 image tokens"),
        ({"global_tokens": 3}, (8, 8), "global_tokens 3 must divide the 64 image tokens"),
        ({}, None, "needs the token grid"),
    ],
)
def test_invalid_layer_patterns_are_rejected_at_construction(fields, grid, reason):
    config = SCMANConfig(**{"mode": "sparse", "window": 4, **fields})
    with pytest.raises(EdgegenError, match=reason):
        SCMANAttention(query_dim=16, heads=2, grid=grid, config=config)


def test_install_rejects_a_window_that_does_not_fit_a_layer_and_changes_nothing(teacher_unet):
    unet = copy.deepcopy(teacher_unet)
    with pytest.raises(EdgegenError, match="mid_block.*window 8 does not divide the 4x4 token grid"):
        install_scman(unet, SCMANConfig(**{**SPARSE, "window": 8, "self_attention": True}))
    assert {type(p).__name__ for p in unet.attn_processors.values()} == {"AttnProcessor"}


def test_sparse_cross_attention_needs_the_context_length(teacher_unet):
    with pytest.raises(EdgegenError, match="needs SCMANConfig.context_length"):
        install_scman(copy.deepcopy(teacher_unet), SCMANConfig(mode="sparse"))


def test_run_time_shapes_that_contradict_the_static_plan_fail_loudly(teacher_unet):
    unet = copy.deepcopy(teacher_unet)
    install_scman(unet, SCMANConfig(**SPARSE, self_attention=True))
    self_attn = _layer(unet, "down_blocks.0.attentions.0.transformer_blocks.0.attn1")
    cross_attn = _layer(unet, "down_blocks.0.attentions.0.transformer_blocks.0.attn2")
    with pytest.raises(EdgegenError, match="got 256 image tokens but its grid 8x8 has 64"):
        self_attn(torch.randn(1, 256, 32))
    with pytest.raises(EdgegenError, match="got 77 context tokens but SCMANConfig.context_length is 40"):
        cross_attn(torch.randn(1, 64, 32), encoder_hidden_states=torch.randn(1, 77, 32))
    with pytest.raises(EdgegenError, match="takes no attention mask"):
        cross_attn(torch.randn(1, 64, 32), encoder_hidden_states=torch.randn(1, 16, 32),
                   attention_mask=torch.zeros(1, 16))


def test_flops_shrink_with_the_budget_not_the_sequence():
    config = SCMANConfig(mode="sparse", window=8, global_tokens=4, summary_tokens=16, context_length=1024)
    cross = scman_flops(config, (64, 64), 1024, channels=64, heads=2)
    assert cross["sparse_keys_per_query"] == 16 and cross["flop_ratio"] > 20
    assert cross["dense_attention_elements"] == 2 * 4096 * 1024
    self_ = scman_flops(config, (64, 64), None, channels=64, heads=2)
    assert self_["sparse_keys_per_query"] == 68 and self_["flop_ratio"] > 10
    dense = scman_flops(SCMANConfig(mode="dense"), (64, 64), 1024, channels=64, heads=2)
    assert dense["flop_ratio"] == 1.0


# -- export ----------------------------------------------------------------------------------------


def _op_names(exported_program):
    return {
        str(node.target) for node in exported_program.graph.nodes if node.op == "call_function"
    }


@pytest.mark.slow
def test_scman_denoiser_exports_without_data_dependent_ops(teacher_unet, unet_inputs):
    class Denoiser(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    unet = copy.deepcopy(teacher_unet)
    install_scman(unet, SCMANConfig(**SPARSE, self_attention=True))
    denoiser = Denoiser(unet).eval()
    with torch.no_grad():
        program = torch.export.export(denoiser, unet_inputs, strict=False)
        decomposed = program.run_decompositions()
    assert "aten.matmul.default" in _op_names(program) or "aten.bmm.default" in _op_names(decomposed)
    for graph in (program, decomposed):
        offending = sorted(name for name in _op_names(graph) if FORBIDDEN_OPS.search(name))
        assert not offending, offending
    torch.testing.assert_close(program.module()(*unet_inputs), _run(unet, unet_inputs), atol=ATOL, rtol=0)


def _standalone(kind: str, layout: str):
    torch.manual_seed(5)
    if kind == "dense":
        config = SCMANConfig(mode="dense", layout=layout)
        module = SCMANAttention(query_dim=32, heads=4, context_dim=24, grid=(8, 8), config=config)
        inputs = (torch.randn(1, 64, 32), torch.randn(1, 16, 24))
    elif kind == "self":
        config = SCMANConfig(mode="sparse", window=4, global_tokens=2, layout=layout)
        module = SCMANAttention(query_dim=32, heads=4, grid=(8, 8), config=config)
        inputs = (torch.randn(1, 64, 32),)
    else:
        config = SCMANConfig(mode="sparse", summary_tokens=4, summary="learned", context_length=16, layout=layout)
        module = SCMANAttention(query_dim=32, heads=4, context_dim=24, grid=(8, 8), config=config)
        inputs = (torch.randn(1, 64, 32), torch.randn(1, 16, 24))
    if layout == "bc1l":
        inputs = tuple(_to_bc1l(x) for x in inputs)
    with torch.no_grad():
        expected = module.eval()(*inputs)
    return module, inputs, expected


CASES = [("self", "bhld"), ("cross", "bc1l"), ("dense", "bhld")]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "layout"), CASES)
def test_standalone_scman_exports_to_onnx_and_runs_in_onnxruntime(tmp_path, kind, layout):
    import onnxruntime as ort

    module, inputs, expected = _standalone(kind, layout)
    path = tmp_path / "scman.onnx"
    with torch.no_grad():
        program = torch.onnx.export(module, inputs, dynamo=True, opset_version=18, verbose=False)
    program.save(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    (out,) = session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
    ops = {node.op_type for node in program.model_proto.graph.node} if hasattr(program, "model_proto") else set()
    assert not {op for op in ops if FORBIDDEN_OPS.search(op.lower())}, ops
    torch.testing.assert_close(torch.from_numpy(out), expected, atol=EXPORT_ATOL, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "layout"), CASES)
def test_standalone_scman_lowers_to_executorch_xnnpack(tmp_path, kind, layout):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    module, inputs, expected = _standalone(kind, layout)
    with torch.no_grad():
        program = torch.export.export(module, inputs, strict=False)
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    info = get_delegation_info(edge.exported_program().graph_module)
    fallback = {
        name: row.non_delegated
        for name, row in info.delegation_by_operator.items()
        if row.non_delegated and name != "getitem"
    }
    assert info.num_delegated_subgraphs == 1 and not fallback, fallback  # the whole layer runs in XNNPACK
    path = tmp_path / "scman.pte"
    path.write_bytes(edge.to_executorch().buffer)
    method = Runtime.get().load_program(path).load_method("forward")
    (out,) = method.execute(list(inputs))
    torch.testing.assert_close(out, expected, atol=EXPORT_ATOL, rtol=0)


def test_dense_mode_applies_an_attention_mask_like_attn_processor(teacher_unet):
    from diffusers.models.attention_processor import AttnProcessor

    unet = copy.deepcopy(teacher_unet)
    install_scman(unet, SCMANConfig(mode="dense"))
    attn = _layer(unet, "mid_block.attentions.0.transformer_blocks.0.attn2")
    generator = torch.Generator().manual_seed(6)
    hidden = torch.randn(2, 16, 64, generator=generator)
    context = torch.randn(2, CONTEXT_LENGTH, 32, generator=generator)
    mask = torch.zeros(2, 1, CONTEXT_LENGTH)
    mask[:, :, 10:] = -10000.0
    with torch.no_grad():
        out = attn(hidden, encoder_hidden_states=context, attention_mask=mask)
        attn.set_processor(AttnProcessor())
        expected = attn(hidden, encoder_hidden_states=context, attention_mask=mask)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_component_building_keeps_installed_scman(pipeline_dir):
    # The export-time swap to AttnProcessor must not undo a student's SCMAN layers.
    from edgegen.families.stable_diffusion import build_component
    from edgegen.families.loading import load_pipeline

    student = load_pipeline(pipeline_dir)
    install_scman(student.unet, SCMANConfig(**SPARSE))
    build_component(student, "denoiser")
    kinds = {type(p).__name__ for name, p in student.unet.attn_processors.items() if "attn2" in name}
    assert kinds == {"SCMANProcessor"}


# bc1l is the Core ML layout; its token mixing does not convert to LiteRT (see the module's limits).
CONVERSIONS = [
    ("tflite", "self", "bhld"), ("tflite", "cross", "bhld"), ("tflite", "self", "bc1l"), ("tflite", "dense", "bhld"),
    ("coreml", "dense", "bhld"), ("coreml", "self", "bhld"), ("coreml", "cross", "bhld"), ("coreml", "self", "bc1l"), ("coreml", "cross", "bc1l"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("target", "kind", "layout"), CONVERSIONS)
def test_standalone_scman_converts_for_litert_and_core_ml(tmp_path, target, kind, layout):
    """Every SCMAN mode and layout converts with edgegen's own exporters; LiteRT also runs it."""
    from edgegen.families.stable_diffusion import Component
    from edgegen.exporting.orchestration import ExportOptions
    from edgegen.registry import EXPORTERS
    from edgegen.schema.manifest import TensorSpec

    module, inputs, expected = _standalone(kind, layout)
    names = ["hidden_states", "context"][: len(inputs)]
    spec = lambda name, t: TensorSpec(name=name, shape=list(t.shape), dtype="float32")  # noqa: E731
    component = Component(
        name="scman",
        module=module,
        inputs=[spec(n, t) for n, t in zip(names, inputs)],
        outputs=[spec("attended", expected)],
        reference_inputs=dict(zip(names, inputs)),
        source_subfolder="",
        source_class="SCMANAttention",
    )
    exported = EXPORTERS.get(target).export(component, tmp_path, ExportOptions())
    assert [s.name for s in exported.inputs] == names and exported.outputs[0].shape == list(expected.shape)
    assert not exported.delegation.fallback_ops
    if target == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(tmp_path / exported.model_file)).get_signature_runner("serving_default")
        out = runner(**{n: t.numpy() for n, t in zip(names, inputs)})["attended"]
        torch.testing.assert_close(torch.from_numpy(out), expected, atol=EXPORT_ATOL, rtol=0)
    else:
        from edgegen.exporters.coreml import mil_op_counts

        ops = mil_op_counts(tmp_path / exported.model_file)
        # MIL's slice_by_index is a static slice; data-dependent ops would be gather/scatter/...
        assert not {op for op in ops if FORBIDDEN_MIL_OPS.search(op)}, ops
