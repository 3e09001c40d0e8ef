"""The delegable rewrites compute what the originals compute and keep the teacher's weights."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import torch

from edgegen.exporting import rewrites
from edgegen.families.stable_diffusion import build_component

ATOL = 1e-5
PTE_ATOL = 1e-4


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    # Norm layers start at weight 1, bias 0: random values make the affine part count.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return module.eval()


def rewritten(original: torch.nn.Module, rewrite) -> tuple[torch.nn.Module, list[str]]:
    copied = copy.deepcopy(original)
    return copied, rewrite(copied)


def assert_same(original, changed, *inputs, **kwargs):
    with torch.no_grad():
        expected, actual = original(*inputs, **kwargs), changed(*inputs, **kwargs)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def assert_weights_load(original, changed):
    assert list(changed.state_dict()) == list(original.state_dict())
    changed.load_state_dict(original.state_dict(), strict=True)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(2, 32, 8, 8), (2, 32, 24), (1, 32, 5, 3)])
def test_group_norm_matches(shape, affine):
    original = torch.nn.Sequential(randomized(torch.nn.GroupNorm(8, 32, eps=1e-6, affine=affine)))
    changed, changes = rewritten(original, rewrites.decompose_group_norms)
    assert changes == ["GroupNorm x1 -> decomposed GroupNorm (reshape, mean, sub, mul, rsqrt, affine)"]
    assert isinstance(changed[0], torch.nn.GroupNorm) and type(changed[0]) is not torch.nn.GroupNorm
    x = 3.0 * torch.randn(shape, generator=torch.Generator().manual_seed(1)) + 0.5
    assert_same(original, changed, x)
    assert_weights_load(original, changed)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.nn.LayerNorm(32),
        lambda: torch.nn.LayerNorm(32, elementwise_affine=False),
        lambda: torch.nn.LayerNorm(32, bias=False),
        lambda: torch.nn.LayerNorm((4, 8), eps=1e-6),
    ],
)
def test_layer_norm_matches(make):
    original = torch.nn.Sequential(randomized(make()))
    changed, changes = rewritten(original, rewrites.decompose_layer_norms)
    assert changes and changes[0].startswith("LayerNorm x1 ->")
    x = 2.0 * torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(2)) - 1.0
    x = x.reshape(2, 7, *original[0].normalized_shape)
    assert_same(original, changed, x)
    assert_weights_load(original, changed)


@pytest.mark.parametrize("name", ["T5LayerNorm", "Gemma2RMSNorm"])
def test_text_encoder_rms_norms_match_and_lower_whole(name):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    base = {"T5LayerNorm": T5LayerNorm, "Gemma2RMSNorm": Gemma2RMSNorm}[name]
    original = torch.nn.Sequential(randomized(base(32, eps=1e-6)))
    changed, changes = rewritten(original, rewrites.decompose_text_encoder_rms_norms)
    assert changes == [f"{name} x1 -> decomposed {name} (reshape, mul, mean, rsqrt, scale)"]
    x = 2.0 * torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(3)) - 0.5
    assert_same(original, changed, x)
    assert_weights_load(original, changed)
    # The point of it: the whole norm is one XNNPACK subgraph (the original's 3-D mean is refused).
    with torch.no_grad():
        edge = to_edge_transform_and_lower(torch.export.export(changed, (x,)), partitioner=[XnnpackPartitioner()])
    calls = [n for n in edge.exported_program().graph.nodes if n.op == "call_function"]
    assert [str(n.target) for n in calls if "getitem" not in str(n.target)] == ["executorch_call_delegate"]


def test_a_float16_text_encoder_norm_is_left_alone():
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    original = torch.nn.Sequential(T5LayerNorm(32).half())
    assert rewrites.decompose_text_encoder_rms_norms(copy.deepcopy(original)) == []


@pytest.mark.parametrize("use_conv", [True, False])
def test_upsample_matches_nearest_interpolation(use_conv):
    from diffusers.models.upsampling import Upsample2D

    original = torch.nn.Sequential(randomized(Upsample2D(16, use_conv=use_conv)))
    changed, changes = rewritten(original, rewrites.concat_nearest_upsampling)
    assert changes == ["Upsample2D x1 -> nearest 2x upsampling as cat + reshape"]
    x = torch.randn(2, 16, 5, 7, generator=torch.Generator().manual_seed(3))
    assert_same(original, changed, x)
    # Upsampling is a copy: without a conv it is bitwise the same.
    if not use_conv:
        with torch.no_grad():
            assert torch.equal(original(x), changed(x))
    # An explicit 2x output size takes the rewritten path; another size the original one.
    for size in [(10, 14), (11, 15)]:
        assert_same(original[0], changed[0], x, output_size=size)
    assert_weights_load(original, changed)


def test_upsample_without_interpolation_is_left_alone():
    from diffusers.models.upsampling import Upsample2D

    original = torch.nn.Sequential(Upsample2D(8, use_conv_transpose=True))
    assert rewrites.concat_nearest_upsampling(original) == []


@pytest.mark.parametrize(("channels", "flip", "shift", "scale"), [(32, True, 0, 1), (33, False, 1, 1), (16, True, 1, 2)])
def test_timestep_embedding_matches(channels, flip, shift, scale):
    from diffusers.models.embeddings import Timesteps

    original = torch.nn.Sequential(Timesteps(channels, flip_sin_to_cos=flip, downscale_freq_shift=shift, scale=scale))
    changed, changes = rewritten(original, rewrites.precompute_timestep_frequencies)
    assert changes == ["Timesteps x1 -> timestep embedding with precomputed frequencies"]
    timesteps = torch.tensor([0.0, 1.0, 499.5, 999.0])
    assert_same(original, changed, timesteps)
    assert changed.state_dict() == {}  # the frequencies are a non-persistent buffer


def test_geglu_matches():
    from diffusers.models.activations import GEGLU

    original = torch.nn.Sequential(randomized(GEGLU(16, 24)))
    changed, changes = rewritten(original, rewrites.slice_geglu)
    assert changes == ["GEGLU x1 -> GEGLU split by slices"]
    assert_same(original, changed, torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(4)))
    assert_weights_load(original, changed)


def test_importing_rewrites_does_not_import_torch():
    code = "import sys, edgegen.exporting.rewrites; print('torch' in sys.modules or 'diffusers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.fixture(scope="module")
def delegable(pipeline):
    """name -> (original component, rewritten copy of its module, the changes listed)."""
    built = {}
    for name in ("denoiser", "vae_decoder"):
        component = build_component(pipeline, name)
        # A copy: the session pipeline's modules are shared with other tests.
        module = copy.deepcopy(component.module)
        built[name] = (component, module, rewrites.make_delegable(module))
    return built


def test_make_delegable_lists_every_rewrite(delegable):
    _, _, denoiser_changes = delegable["denoiser"]
    for expected in ("GroupNorm x21", "LayerNorm x12", "Upsample2D x1", "Timesteps x1", "GEGLU x4", "UNet2DConditionModel x1"):
        assert any(change.startswith(expected) for change in denoiser_changes), (expected, denoiser_changes)
    _, _, vae_changes = delegable["vae_decoder"]
    assert any(change.startswith("GroupNorm x30") for change in vae_changes)
    assert any(change.startswith("Upsample2D x2") for change in vae_changes)


@pytest.mark.parametrize("name", ["denoiser", "vae_decoder"])
def test_whole_component_matches_and_takes_teacher_weights(delegable, name):
    component, module, _ = delegable[name]
    assert_same(component.module, module, *component.example_args())
    assert_weights_load(component.module, module)
    # The changes leave no stock module behind, and a second pass finds nothing to do.
    assert not any(type(m) in (torch.nn.GroupNorm, torch.nn.LayerNorm) for m in module.modules())
    assert rewrites.make_delegable(module) == []


@pytest.mark.slow
def test_rewritten_vae_decoder_lowers_to_fewer_xnnpack_pieces(delegable):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from edgegen.exporters.executorch import delegation_report

    component, module, _ = delegable["vae_decoder"]
    args = component.example_args()
    expected = component.run_eager()["image"]
    reports, outputs = {}, {}
    with torch.no_grad():
        for label, candidate in (("before", component.module), ("after", module)):
            edge = to_edge_transform_and_lower(
                torch.export.export(candidate, args, strict=False), partitioner=[XnnpackPartitioner()]
            )
            reports[label] = delegation_report(edge, "xnnpack")
            # The runtime reads from this buffer: it must stay alive while the method runs.
            buffer = edge.to_executorch().buffer
            program = Runtime.get().load_program(buffer)
            outputs[label] = program.load_method("forward").execute(list(args))[0]
    before, after = reports["before"], reports["after"]
    assert after.delegate_subgraphs < before.delegate_subgraphs
    assert after.delegated_fraction > before.delegated_fraction
    assert not any("group_norm" in op or "upsample" in op for op in after.fallback_ops)
    torch.testing.assert_close(outputs["after"], expected, atol=PTE_ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# graph rewrites: what XNNPACK refuses inside a transformer block, in an exported program


def lowered(module: torch.nn.Module, *args) -> tuple[list[str], list[str], object]:
    """The graph rewrites' descriptions, the ops left outside XNNPACK once lowered, and the
    rewritten program."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(module, args, strict=False)
    changes = rewrites.delegable_graph_ops(program)
    edge = to_edge_transform_and_lower(copy.deepcopy(program), partitioner=[XnnpackPartitioner()])
    outside = [
        re.sub(r"_\d+$", "", node.name) for node in edge.exported_program().graph.nodes
        if node.op == "call_function" and "getitem" not in str(node.target) and "call_delegate" not in str(node.target)
    ]
    return changes, outside, program


class BlockShapes(torch.nn.Module):
    """The shape ops of PixArt's, SD3's and Flux's blocks around their linears."""

    def forward(self, x, table, mask):
        shift, scale = (table[None] + table[:, None]).chunk(2, dim=1)  # unsqueeze, chunk
        real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)  # Flux's rotary embedding
        heads = mask[:, None, None, :].expand(2, 3, 1, mask.shape[-1])  # the mask over heads
        repeated = mask.repeat_interleave(3, dim=0)
        y = x * (1 + scale) + shift  # an int scalar in float arithmetic
        return y, real * imag.squeeze(0), heads, repeated


def test_shape_ops_become_delegable_and_stay_exact():
    args = (torch.randn(2, 6, 8), torch.randn(2, 8), torch.randn(2, 6))
    with torch.no_grad():
        expected = BlockShapes()(*args)
        changes, outside, program = lowered(BlockShapes(), *args)
        actual = program.module()(*args)
    for want, got in zip(expected, actual):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    for rewrite in ("chunk/split", "unbind", "unsqueeze/squeeze", "expand", "repeat_interleave", "int scalar"):
        assert any(change.startswith(rewrite) for change in changes), (rewrite, changes)
    assert outside == []


class Attention(torch.nn.Module):
    def forward(self, q, k, v, mask=None):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_becomes_bmm_softmax_bmm_inside_xnnpack(masked):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8, generator=generator) for _ in range(3))
    args = (q, k, v) + ((torch.randn(2, 1, 1, 16, generator=generator),) if masked else ())
    with torch.no_grad():
        expected = Attention()(*args)
        changes, outside, program = lowered(Attention(), *args)
        torch.testing.assert_close(program.module()(*args), expected, atol=1e-5, rtol=0)
    assert any(change.startswith("scaled_dot_product_attention") for change in changes)
    # Without the rewrite, ExecuTorch's safe softmax leaves eq/any/where/full_like outside.
    assert outside == []


def test_attention_with_a_boolean_mask_is_left_alone():
    q = k = v = torch.randn(1, 2, 4, 8)
    program = torch.export.export(Attention(), (q, k, v, torch.ones(1, 1, 4, 4, dtype=torch.bool)), strict=False)
    assert not any(change.startswith("scaled_dot_product_attention") for change in rewrites.delegable_graph_ops(program))


class Float16Activations(torch.nn.Module):
    def forward(self, q, k):
        scores = torch.baddbmm(torch.empty(2, 16, 16, dtype=q.dtype), q, k.transpose(1, 2), beta=0, alpha=0.5)
        return torch.nn.functional.gelu(scores) + torch.nn.functional.silu(scores)


def test_float16_activations_stay_inside_xnnpack_and_gelu_is_within_float16_rounding():
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 16, 8, generator=generator) for _ in range(2))
    half = (q.half(), k.half())
    changes, outside, program = lowered(Float16Activations(), *half)
    for rewrite in ("baddbmm", "silu", "float16 gelu"):
        assert any(change.startswith(rewrite) for change in changes), (rewrite, changes)
    # Only the 0-d scalar constants' float32 -> float16 casts run outside, before the delegate.
    assert set(outside) <= {"dim_order_ops__to_dim_order_copy_default"}
    with torch.no_grad():
        expected = Float16Activations()(*(t.float() for t in half))  # the erf GELU, in float32
        actual = program.module()(*half).float()
    # Within float16's rounding of values up to ~10 (its spacing there is 2**-7).
    torch.testing.assert_close(actual, expected, atol=2e-2, rtol=1e-2)
    # tanh's approximation against the erf form, in float32, over the range activations take.
    x = torch.linspace(-8, 8, 4001)
    approximation = x * torch.sigmoid(2 * (2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3))
    assert (approximation - torch.nn.functional.gelu(x)).abs().max() < 5e-4


def test_the_rewritten_copy_shares_the_weights_and_leaves_the_original_alone(pipeline):
    component = build_component(pipeline, "vae_decoder")
    copied = rewrites.sharing_weights_copy(component.module)
    changes = rewrites.make_delegable(copied)
    assert changes and rewrites.make_delegable(copy.deepcopy(component.module)) == changes
    # No second copy of the weights: the export of a large model holds them once.
    originals = {tensor.data_ptr() for tensor in component.module.state_dict().values()}
    assert {tensor.data_ptr() for tensor in copied.state_dict().values()} == originals
    assert any(type(m) is torch.nn.GroupNorm for m in component.module.modules())  # the original is not rewritten
    assert_same(component.module, copied, *component.example_args())


@pytest.mark.parametrize("eps", [1e-6, None])
def test_torch_rms_norm_matches(eps):
    # Flux's query/key norm; torch's own eps (None) is the dtype's machine epsilon.
    original = randomized(torch.nn.RMSNorm(16, eps=eps))
    changed, changes = rewritten(torch.nn.Sequential(original), rewrites.decompose_rms_norms)
    assert changes == ["RMSNorm x1 -> decomposed RMSNorm (reshape, mul, mean, rsqrt, affine)"]
    assert_same(original, changed[0], torch.randn(2, 5, 3, 16))
    assert_weights_load(original, changed[0])
