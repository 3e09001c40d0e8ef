"""Exact module rewrites that keep a diffusers model inside an on-device delegate.

Owns the export-time module swaps that compute the same function with ops every delegate takes
(ExecuTorch XNNPACK, Core ML, LiteRT, ONNX). In ExecuTorch 1.5.1 XNNPACK leaves these outside
its delegate, splitting the graph into many delegate pieces:

- ``native_group_norm`` / ``native_layer_norm``: rewritten as a 4-D reshape, ``mean`` over the two
  innermost dims with keepdim (the only mean XNNPACK takes), subtract, square by ``mul``,
  ``rsqrt`` and an elementwise affine;
- ``mean`` over the last dim of diffusers ``RMSNorm`` (SD3.5's query/key norm) and of
  transformers' ``T5LayerNorm`` and ``Gemma2RMSNorm`` (the T5 and Gemma-2 text encoders): the
  same reshape to 4-D and ``mean`` over the two innermost dims;
- ``upsample_nearest2d`` (diffusers ``Upsample2D``): rewritten as two ``cat`` + reshape steps. A
  depthwise all-ones ``ConvTranspose2d`` is delegated too but ran ~1.6x slower in XNNPACK;
- ``arange``/``exp``/``unsqueeze`` of the sinusoidal timestep embedding (diffusers ``Timesteps``):
  the frequencies are a constant, computed once with the same float32 ops;
- ``split_with_sizes`` of ``GEGLU``'s ``chunk``: rewritten as two slices;
- ``expand_copy`` of ``UNet2DConditionModel.get_time_embed``: skipped when the timestep already
  has one entry per sample (a no-op);
- int64 -> float32 casts of int rescaling divisors (``output_scale_factor = 1``): made floats.

Every rewrite but the last is a module swap on a copy of the module's state (parameters and submodules are
shared, not copied), so ``state_dict`` keys are unchanged and teacher weights still load; the
added constants are non-persistent buffers. Each function rewrites ``module``'s descendants in
place (never ``module`` itself) and returns human-readable descriptions of what changed.

Limits: results match the originals within float rounding (the norms' reductions run in another
order), not bitwise. An instance-level ``forward`` override (an accelerate offload hook) is not
carried over to the swapped module. Only the stock classes are rewritten, never subclasses.

Two passes work on an exported program's graph instead: ``explicit_type_promotion``, for models
loaded in float16 whose few float32 parts (kept so by transformers) mix with float16 ones, and
``delegable_graph_ops``, for the attention and shape ops of the transformer denoisers (and
float16's activations) that XNNPACK refuses.
"""

from __future__ import annotations

import copy
import functools
import math
from collections import Counter
from collections.abc import Callable
from typing import Any


def sharing_weights_copy(module: Any) -> Any:
    """A deep copy of ``module`` whose parameters and buffers are the original's tensors.

    The rewrites swap submodules and set attributes, never tensor data; a full ``deepcopy``
    would hold a second copy of the weights through the export (4.8 GiB for SDXL's float16
    UNet).
    """
    memo = {id(tensor): tensor for tensor in (*module.parameters(), *module.buffers())}
    return copy.deepcopy(module, memo)


def _adopt(cls: type, module: Any) -> Any:
    """A ``cls`` instance sharing ``module``'s attributes, parameters, buffers and children.

    torch's own bookkeeping (parameter, buffer, child and hook tables) is copied so that changes
    to the new module do not reach the old one; an instance-level ``forward`` (an offload hook)
    is dropped, since it would bypass the rewritten method.
    """
    import copy

    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    new.__dict__.pop("forward", None)
    for key in _torch_tables():
        if isinstance(module.__dict__.get(key), (dict, set)):
            new.__dict__[key] = copy.copy(module.__dict__[key])
    return new


@functools.cache
def _torch_tables() -> tuple[str, ...]:
    import torch

    return tuple(key for key, value in vars(torch.nn.Module()).items() if isinstance(value, (dict, set)))


def _swap(root: Any, convert: Callable[[Any], Any | None]) -> list[tuple[str, Any, Any]]:
    """Replace each descendant for which ``convert`` returns a module; (name, old, new) each."""
    swapped = []
    for parent_name, parent in list(root.named_modules()):
        for child_name, child in list(parent.named_children()):
            replacement = convert(child)
            if replacement is not None:
                setattr(parent, child_name, replacement)
                swapped.append((f"{parent_name}.{child_name}".lstrip("."), child, replacement))
    return swapped


def _describe(swapped: list[tuple[str, Any, Any]], what: str) -> list[str]:
    counts = Counter(type(old).__name__ for _, old, _ in swapped)
    return [f"{name} x{count} -> {what}" for name, count in sorted(counts.items())]


def _normalize_4d(view: Any, eps: float) -> Any:
    # XNNPACK takes mean.dim only on 4-D tensors over dims (2, 3) with keepdim=True.
    mean = view.mean(dim=(2, 3), keepdim=True)
    centered = view - mean
    variance = (centered * centered).mean(dim=(2, 3), keepdim=True)
    return centered * (variance + eps).rsqrt()


def _rms_normalize_last_dim(x: Any, eps: float) -> Any:
    """``x`` over the root mean square of its last dim, computed on a 4-D view so that XNNPACK
    takes the mean (dims (2, 3), keepdim: the only mean it takes); same shape as ``x``."""
    view = x.reshape(1, -1, 1, x.shape[-1])
    return (view * ((view * view).mean(dim=(2, 3), keepdim=True) + eps).rsqrt()).reshape(x.shape)


@functools.cache
def _classes() -> dict[str, type]:
    # Defined on first use so that importing this module does not import torch or diffusers.
    import torch
    from diffusers.models.activations import GEGLU
    from diffusers.models.embeddings import Timesteps
    from diffusers.models.normalization import RMSNorm
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.models.upsampling import Upsample2D
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    class DecomposedGroupNorm(torch.nn.GroupNorm):
        """``nn.GroupNorm`` from reshape/mean/sub/mul/rsqrt; same parameters, same state_dict."""

        def forward(self, x):
            shape = x.shape
            groups = self.num_groups
            view = x.reshape(shape[0], groups, 1, -1)
            y = _normalize_4d(view, self.eps).reshape(shape)
            if self.affine:
                channels = (1, self.num_channels) + (1,) * (len(shape) - 2)
                y = y * self.weight.reshape(channels) + self.bias.reshape(channels)
            return y

    class DecomposedLayerNorm(torch.nn.LayerNorm):
        """``nn.LayerNorm`` from reshape/mean/sub/mul/rsqrt; same parameters, same state_dict."""

        def forward(self, x):
            shape = x.shape
            size = math.prod(self.normalized_shape)
            y = _normalize_4d(x.reshape(1, -1, 1, size), self.eps).reshape(shape)
            if self.weight is not None:
                y = y * self.weight
            if self.bias is not None:
                y = y + self.bias
            return y

    class DecomposedRMSNorm(RMSNorm):
        """diffusers ``RMSNorm`` (SD3.5's and Flux's query/key norm) over a 4-D view, so that its
        mean is the one XNNPACK takes; same parameters, same state_dict."""

        def forward(self, hidden_states):
            y = _rms_normalize_last_dim(hidden_states, self.eps)
            if self.weight is not None:
                y = y * self.weight
                if self.bias is not None:
                    y = y + self.bias
            return y

    class DecomposedTorchRMSNorm(torch.nn.RMSNorm):
        """``torch.nn.RMSNorm`` over the last dim (Flux's query/key norm) on a 4-D view; same
        parameters, same state_dict."""

        def forward(self, x):
            if len(self.normalized_shape) != 1:
                return super().forward(x)
            y = _rms_normalize_last_dim(x, self.eps if self.eps is not None else torch.finfo(x.dtype).eps)
            return y * self.weight if self.weight is not None else y

    class DecomposedT5LayerNorm(T5LayerNorm):
        """transformers' ``T5LayerNorm`` (T5's RMS norm: PixArt, SD3, Flux) over a 4-D view; same
        parameters, same state_dict."""

        def forward(self, hidden_states):
            return self.weight * _rms_normalize_last_dim(hidden_states, self.variance_epsilon)

    class DecomposedGemma2RMSNorm(Gemma2RMSNorm):
        """transformers' ``Gemma2RMSNorm`` (Sana's text encoder) over a 4-D view, scaling by
        ``1 + weight``; same parameters, same state_dict."""

        def forward(self, x):
            return _rms_normalize_last_dim(x, self.eps) * (1.0 + self.weight)

    class NearestUpsample2x(torch.nn.Module):
        """Nearest 2x upsampling of NCHW as two concatenations of a tensor with itself.

        The two operands of each ``cat`` are separate reshape nodes on purpose: XNNPACK's
        partitioner counts distinct input nodes and refuses a cat of one node with itself.
        """

        def forward(self, x):
            n, c, h, w = x.shape
            columns = (n * c * h, w, 1)
            y = torch.cat([x.reshape(columns), x.reshape(columns)], dim=2)
            rows = (n * c * h, 1, 2 * w)
            y = torch.cat([y.reshape(rows), y.reshape(rows)], dim=1)
            return y.reshape(n, c, 2 * h, 2 * w)

    class DelegableUpsample2D(Upsample2D):
        """``Upsample2D`` whose nearest 2x interpolation is ``NearestUpsample2x``.

        Other cases (an explicit output size other than 2x, bfloat16 on old torch) take the
        original path.
        """

        def forward(self, hidden_states, output_size=None, *args, **kwargs):
            height, width = hidden_states.shape[-2:]
            if (
                hidden_states.dtype == torch.bfloat16
                or hidden_states.dim() != 4
                or (output_size is not None and tuple(output_size) != (2 * height, 2 * width))
            ):
                return super().forward(hidden_states, output_size, *args, **kwargs)
            if self.norm is not None:
                hidden_states = self.norm(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            hidden_states = self.upsample_nearest(hidden_states)
            if self.use_conv:
                conv = self.conv if self.name == "conv" else self.Conv2d_0
                hidden_states = conv(hidden_states)
            return hidden_states

    class PrecomputedTimesteps(Timesteps):
        """``Timesteps`` with its sinusoid frequencies as a constant, shaped (1, half)."""

        def forward(self, timesteps):
            emb = timesteps.reshape(-1, 1).float() * self.frequencies
            if self.scale != 1:
                emb = self.scale * emb
            sin, cos = torch.sin(emb), torch.cos(emb)
            emb = torch.cat([cos, sin] if self.flip_sin_to_cos else [sin, cos], dim=-1)
            if self.num_channels % 2 == 1:
                emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
            return emb

    class SlicedGEGLU(GEGLU):
        """``GEGLU`` splitting its projection with two slices instead of ``chunk``."""

        def forward(self, hidden_states, *args, **kwargs):
            hidden_states = self.proj(hidden_states)
            half = hidden_states.shape[-1] // 2
            return hidden_states[..., :half] * self.gelu(hidden_states[..., half:])

    class BatchedTimestepUNet(UNet2DConditionModel):
        """``UNet2DConditionModel`` that skips ``timesteps.expand(batch)`` when the timestep
        tensor already has one entry per sample (a no-op ``expand_copy`` XNNPACK does not take)."""

        def get_time_embed(self, sample, timestep):
            if torch.is_tensor(timestep) and timestep.dim() == 1 and timestep.shape[0] == sample.shape[0]:
                return self.time_proj(timestep).to(dtype=sample.dtype)
            return super().get_time_embed(sample, timestep)

    return {
        "UNet2DConditionModel": BatchedTimestepUNet,
        "GroupNorm": DecomposedGroupNorm,
        "LayerNorm": DecomposedLayerNorm,
        "RMSNorm": DecomposedRMSNorm,
        "TorchRMSNorm": DecomposedTorchRMSNorm,
        "T5LayerNorm": DecomposedT5LayerNorm,
        "Gemma2RMSNorm": DecomposedGemma2RMSNorm,
        "NearestUpsample2x": NearestUpsample2x,
        "Upsample2D": DelegableUpsample2D,
        "Timesteps": PrecomputedTimesteps,
        "GEGLU": SlicedGEGLU,
    }


def _exactly(module: Any, base: type, rewritten: type) -> bool:
    # Only the stock class: a subclass may compute something else, a rewritten one is done.
    return type(module) is base and not isinstance(module, rewritten)


def decompose_group_norms(module: Any) -> list[str]:
    """Replace every ``nn.GroupNorm`` below ``module`` by a reshape/mean/rsqrt GroupNorm."""
    import torch

    cls = _classes()["GroupNorm"]
    swapped = _swap(module, lambda m: _adopt(cls, m) if _exactly(m, torch.nn.GroupNorm, cls) else None)
    return _describe(swapped, "decomposed GroupNorm (reshape, mean, sub, mul, rsqrt, affine)")


def decompose_layer_norms(module: Any) -> list[str]:
    """Replace every ``nn.LayerNorm`` below ``module`` by a reshape/mean/rsqrt LayerNorm."""
    import torch

    cls = _classes()["LayerNorm"]
    swapped = _swap(module, lambda m: _adopt(cls, m) if _exactly(m, torch.nn.LayerNorm, cls) else None)
    return _describe(swapped, "decomposed LayerNorm (reshape, mean, sub, mul, rsqrt, affine)")


def decompose_rms_norms(module: Any) -> list[str]:
    """Replace every float32 diffusers ``RMSNorm`` and ``torch.nn.RMSNorm`` below ``module`` by one
    whose mean XNNPACK takes."""
    import torch
    from diffusers.models.normalization import RMSNorm

    cls = _classes()["RMSNorm"]

    def convert(child):
        if not _exactly(child, RMSNorm, cls):
            return None  # any other module, which may have no weight at all
        # Half-precision weights cast in between; those stay as diffusers computes them.
        float32 = child.weight is None or child.weight.dtype == torch.float32
        return _adopt(cls, child) if float32 else None

    changes = _describe(_swap(module, convert), "decomposed RMSNorm (reshape, mul, mean, rsqrt, affine)")
    torch_cls = _classes()["TorchRMSNorm"]

    def convert_torch(child):
        if not _exactly(child, torch.nn.RMSNorm, torch_cls) or (child.weight is not None and child.weight.dtype != torch.float32):
            return None
        return _adopt(torch_cls, child)

    return changes + _describe(_swap(module, convert_torch), "decomposed RMSNorm (reshape, mul, mean, rsqrt, affine)")


def decompose_text_encoder_rms_norms(module: Any) -> list[str]:
    """Replace every float32 ``T5LayerNorm`` and ``Gemma2RMSNorm`` below ``module`` by one whose
    mean XNNPACK takes (over the last dim of a 3-D tensor it is refused)."""
    import torch
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    changes = []
    for name, base in (("T5LayerNorm", T5LayerNorm), ("Gemma2RMSNorm", Gemma2RMSNorm)):
        cls = _classes()[name]

        def convert(child, base=base, cls=cls):
            if not _exactly(child, base, cls) or child.weight.dtype != torch.float32:
                return None  # half-precision norms cast in between; those stay as transformers computes them
            return _adopt(cls, child)

        changes += _describe(_swap(module, convert), f"decomposed {name} (reshape, mul, mean, rsqrt, scale)")
    return changes


def concat_nearest_upsampling(module: Any) -> list[str]:
    """Replace diffusers ``Upsample2D`` that interpolates by one upsampling with two ``cat``s."""
    from diffusers.models.upsampling import Upsample2D

    classes = _classes()
    cls = classes["Upsample2D"]

    def convert(child):
        if not _exactly(child, Upsample2D, cls) or child.use_conv_transpose or not child.interpolate:
            return None
        new = _adopt(cls, child)
        new.upsample_nearest = classes["NearestUpsample2x"]()
        return new

    return _describe(_swap(module, convert), "nearest 2x upsampling as cat + reshape")


def precompute_timestep_frequencies(module: Any) -> list[str]:
    """Replace diffusers ``Timesteps`` by one whose frequencies are a constant buffer."""
    import torch
    from diffusers.models.embeddings import Timesteps

    cls = _classes()["Timesteps"]

    def convert(child):
        if not _exactly(child, Timesteps, cls):
            return None
        new = _adopt(cls, child)
        # The same float32 ops, in the same order, as diffusers' get_timestep_embedding.
        half = child.num_channels // 2
        exponent = -math.log(10000) * torch.arange(start=0, end=half, dtype=torch.float32)
        exponent = exponent / (half - child.downscale_freq_shift)
        new.register_buffer("frequencies", torch.exp(exponent)[None, :], persistent=False)
        return new

    return _describe(_swap(module, convert), "timestep embedding with precomputed frequencies")


def slice_geglu(module: Any) -> list[str]:
    """Replace diffusers ``GEGLU`` by one that splits with slices instead of ``chunk``."""
    from diffusers.models.activations import GEGLU

    cls = _classes()["GEGLU"]
    swapped = _swap(module, lambda m: _adopt(cls, m) if _exactly(m, GEGLU, cls) else None)
    return _describe(swapped, "GEGLU split by slices")


def skip_batched_timestep_expand(module: Any) -> list[str]:
    """Replace each diffusers ``UNet2DConditionModel`` below ``module`` by one that does not
    ``expand`` a timestep tensor already shaped (batch,). The UNet must be a child (e.g. of the
    denoiser wrapper), since ``module`` itself is never swapped."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    cls = _classes()["UNet2DConditionModel"]
    swapped = _swap(module, lambda m: _adopt(cls, m) if _exactly(m, UNet2DConditionModel, cls) else None)
    return _describe(swapped, "UNet without the no-op timestep expand")


# (class path, attribute) pairs holding a divisor that diffusers configs often give as an int;
# an int scalar becomes an int64 constant plus a dtype cast that XNNPACK does not take.
_SCALAR_DIVISORS = (
    ("diffusers.models.resnet", "ResnetBlock2D", "output_scale_factor"),
    ("diffusers.models.attention_processor", "Attention", "rescale_output_factor"),
)


def float_scalar_divisors(module: Any) -> list[str]:
    """Turn int output-rescaling divisors into floats (``x / 1`` and ``x / 1.0`` are equal)."""
    import importlib

    counts: Counter = Counter()
    for _, child in module.named_modules():
        for module_path, class_name, attribute in _SCALAR_DIVISORS:
            cls = getattr(importlib.import_module(module_path), class_name)
            value = getattr(child, attribute, None)
            if isinstance(child, cls) and isinstance(value, int) and not isinstance(value, bool):
                setattr(child, attribute, float(value))
                counts[f"{class_name}.{attribute}"] += 1
    return [f"{name} x{count} -> float divisor" for name, count in sorted(counts.items())]


REWRITES = (
    decompose_group_norms,
    decompose_layer_norms,
    decompose_rms_norms,
    decompose_text_encoder_rms_norms,
    concat_nearest_upsampling,
    precompute_timestep_frequencies,
    slice_geglu,
    skip_batched_timestep_expand,
    float_scalar_divisors,
)


def make_delegable(module: Any) -> list[str]:
    """Apply every rewrite to ``module``'s descendants in place; what changed, one line each."""
    changes = []
    for rewrite in REWRITES:
        changes.extend(rewrite(module))
    return changes


def explicit_type_promotion(program: Any) -> list[str]:
    """Cast, in an exported program's graph, every float input of an op that mixes float dtypes
    to the dtype the op returns; in place, and recorded like the module rewrites.

    torch promotes mixed float dtypes implicitly (SDXL concatenates float16 text embeddings with
    float32 time embeddings; T5 adds its float16 residual to the output of the ``wo`` layer that
    transformers keeps in float32), but ExecuTorch's edge dialect and ONNX need one dtype across
    such an op's inputs. The casts are exactly the promotion torch performs.
    """
    import torch

    graph = program.graph_module.graph
    casts = 0
    for node in list(graph.nodes):
        result = node.meta.get("val")
        if node.op != "call_function" or not isinstance(result, torch.Tensor) or not result.dtype.is_floating_point:
            continue

        def tensors(value):
            return [value] if isinstance(value, torch.fx.Node) else [v for v in value if isinstance(v, torch.fx.Node)] if isinstance(value, (list, tuple)) else []

        mixed = {
            arg.meta["val"].dtype
            for value in (*node.args, *node.kwargs.values())
            for arg in tensors(value)
            if isinstance(arg.meta.get("val"), torch.Tensor) and arg.meta["val"].dtype.is_floating_point
        }
        if len(mixed) < 2:
            continue

        def cast(value):
            nonlocal casts
            if isinstance(value, (list, tuple)):
                return type(value)(cast(v) for v in value)
            if not isinstance(value, torch.fx.Node):
                return value
            found = value.meta.get("val")
            if not isinstance(found, torch.Tensor) or not found.dtype.is_floating_point or found.dtype == result.dtype:
                return value
            with graph.inserting_before(node):
                converted = graph.call_function(torch.ops.aten._to_copy.default, (value,), {"dtype": result.dtype})
            converted.meta["val"] = found.to(result.dtype)
            casts += 1
            return converted

        node.args = cast(node.args)
        node.kwargs = {key: cast(value) for key, value in node.kwargs.items()}
    if casts:
        program.graph_module.recompile()
    return [f"implicit float type promotion made explicit: x{casts} cast"] if casts else []


def explicit_padding_for_strided_convs(module: Any) -> list[str]:
    """Give every zero-padded ``Conv2d`` with a stride above 1 below ``module`` an explicit
    ``pad`` in front (and no padding of its own); exact.

    LiteRT lowers such a convolution (PyTorch pads both sides, TensorFlow's SAME pads the end)
    as ``tfl.pad`` + ``conv``; in a statically quantized graph that pad then sits between two
    quantizations of one tensor with different scales, which the converter refuses ("'tfl.pad'
    op quantization parameters violate the same scale constraint"). Padded in float before the
    convolution's input is quantized, the pad has nothing to violate.
    """
    import torch

    class PaddedConv2d(torch.nn.Module):
        def __init__(self, conv):
            super().__init__()
            # F.pad takes (left, right, top, bottom): the last dimension first.
            self.padding = tuple(p for p in reversed(conv.padding) for _ in range(2))
            self.conv = copy.copy(conv)
            self.conv.padding = (0, 0)

        def forward(self, x):
            return self.conv(torch.nn.functional.pad(x, self.padding))

    def convert(child):
        strided = isinstance(child, torch.nn.Conv2d) and not isinstance(child, PaddedConv2d) and child.stride != (1, 1)
        if strided and child.padding_mode == "zeros" and not isinstance(child.padding, str) and any(child.padding):
            return PaddedConv2d(child)
        return None

    return _describe(_swap(module, convert), "explicit pad, then the convolution without padding")


# Rows longer than this are not tiled by ``cat``: a copy that large is better left to the
# portable kernel than unrolled into the graph.
_MAX_TILED_COPIES = 256


def delegable_graph_ops(program: Any) -> list[str]:
    """Rewrite, in an exported program's graph, the ops XNNPACK leaves outside its delegate into
    equal ones it takes; in place, and recorded like the module rewrites.

    Each of these splits a transformer's graph into one delegate piece per block, and the pieces
    between run on ExecuTorch's portable kernels:

    - ``scaled_dot_product_attention`` (SD3's, Sana's and Flux's processors, transformers' text
      encoders): decomposed by ExecuTorch into a "safe" softmax whose full-size
      ``eq``/``any``/``where`` masking of fully masked rows XNNPACK refuses. Rewritten as
      ``bmm(q * scale, k^T)`` (+ the additive mask), ``softmax``, ``bmm`` with ``v`` over the
      flattened batch dims. Only without a mask or with a float mask: a fully ``-inf`` masked
      row would give NaN where the safe softmax gives zeros, and a boolean mask is left as is;
    - ``unsqueeze`` (all but the trailing dim) and ``squeeze``: a reshape to the same shape;
    - ``chunk``/``split``: one ``slice`` per piece, and ``unbind`` (Flux's rotary embedding): a
      ``slice`` and a reshape per piece;
    - ``matmul`` of two batched tensors (Sana's linear attention): ``bmm`` over the flattened
      batch dims, without the no-op ``expand`` its decomposition leaves;
    - ``expand`` and ``repeat_interleave`` of float tensors: ``cat`` of copies (the attention
      mask broadcast over heads); a no-op ``expand`` is removed;
    - integer Python scalars in float arithmetic (``1 + scale``): made floats, which removes the
      int64 -> float cast of a 0-d constant;
    - ``baddbmm`` with ``beta=0`` (diffusers' attention scores): ``bmm * alpha``;
    - ``silu``: ``x * sigmoid(x)``, which torch otherwise decomposes in float32 between casts
      for float16 inputs;
    - ``gelu`` in float16, which XNNPACK does not take: tanh's approximation as
      ``x * sigmoid(...)``, the one rewrite that is not exact (within 3e-4 of the erf form).

    Results equal the originals up to float rounding (attention's reductions run in another
    order), float16 GELU as said.
    """
    import operator

    import torch
    from torch.utils._pytree import tree_map

    aten = torch.ops.aten
    graph = program.graph_module.graph
    counts: Counter = Counter()
    float_arithmetic = (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.rsub.Scalar)

    def value(node):
        return node.meta.get("val") if isinstance(node, torch.fx.Node) else None

    def is_float(node) -> bool:
        found = value(node)
        return isinstance(found, torch.Tensor) and found.dtype.is_floating_point

    def static(shape) -> bool:
        return all(isinstance(size, int) for size in shape)

    def call(before, target, *args):
        with graph.inserting_before(before):
            node = graph.call_function(target, args)
        node.meta["val"] = target(*tree_map(lambda a: value(a) if isinstance(a, torch.fx.Node) else a, args))
        for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
            if key in before.meta:
                node.meta[key] = before.meta[key]
        return node

    def tiled(before, node, dim: int, copies: int):
        """``node`` (size 1 at ``dim``) repeated ``copies`` times along ``dim``, by ``cat``.

        The operands are separate reshape nodes (to a shape of another rank than ``node``'s),
        since XNNPACK refuses a ``cat`` of one node with itself."""
        shape = list(value(node).shape)
        pre, post = math.prod(shape[:dim]), math.prod(shape[dim + 1:])
        operand = [pre, 1, post] if len(shape) != 3 else [pre, 1, post, 1]
        joined = call(before, aten.cat.default, [call(before, aten.reshape.default, node, operand) for _ in range(copies)], 1)
        return call(before, aten.reshape.default, joined, shape[:dim] + [copies] + shape[dim + 1:])

    # The attention's scores (diffusers' get_attention_scores): torch decomposes baddbmm in
    # float32 for float16 inputs, between casts XNNPACK refuses; its ignored input is uninitialised.
    zero_beta = sum(n.target is aten.baddbmm.default and n.kwargs.get("beta", 1) == 0 for n in graph.nodes)
    if zero_beta:
        from edgegen.exporting.quantize import drop_zero_baddbmm_inputs

        drop_zero_baddbmm_inputs(program.graph_module)
        counts["baddbmm with beta=0 -> bmm * alpha"] = zero_beta

    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        target, result = node.target, value(node)

        if target in (aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default):
            if is_float(node.args[0]) and static(result.shape):
                node.target, node.args, node.kwargs = aten.reshape.default, (node.args[0], list(result.shape)), {}
                counts["unsqueeze/squeeze -> reshape"] += 1

        elif target in (aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default):
            pieces, source = result, node.args[0]
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
            dim %= value(source).dim()
            users = list(node.users)
            if is_float(source) and all(user.target is operator.getitem for user in users) and static(value(source).shape):
                starts = [0]
                for piece in pieces:
                    starts.append(starts[-1] + piece.shape[dim])
                for user in users:
                    index = user.args[1]
                    user.target, user.args = aten.slice.Tensor, (source, dim, starts[index], starts[index + 1])
                graph.erase_node(node)
                counts["chunk/split -> slices"] += 1

        elif target is aten.expand.default and is_float(node.args[0]) and static(result.shape):
            source = node.args[0]
            shape, out = list(value(source).shape), list(result.shape)
            if shape == out:
                node.replace_all_uses_with(source)
                graph.erase_node(node)
                counts["no-op expand removed"] += 1
                continue
            widened = [d for d, size in enumerate([1] * (len(out) - len(shape)) + shape) if size != out[d]]
            if any(out[d] > _MAX_TILED_COPIES for d in widened):
                continue
            current = source
            if len(shape) != len(out):
                current = call(node, aten.reshape.default, source, [1] * (len(out) - len(shape)) + shape)
            for d in widened:
                current = tiled(node, current, d, out[d])
            node.replace_all_uses_with(current)
            graph.erase_node(node)
            counts["expand -> cat of copies"] += 1

        elif target is aten.repeat_interleave.self_int and is_float(node.args[0]) and static(result.shape):
            source, repeats = node.args[0], node.args[1]
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
            if dim is None or not isinstance(repeats, int) or repeats > _MAX_TILED_COPIES:
                continue
            shape = list(value(source).shape)
            dim %= len(shape)
            current = call(node, aten.reshape.default, source, shape[: dim + 1] + [1] + shape[dim + 1:])
            current = tiled(node, current, dim + 1, repeats)
            current = call(node, aten.reshape.default, current, list(result.shape))
            node.replace_all_uses_with(current)
            graph.erase_node(node)
            counts["repeat_interleave -> cat of copies"] += 1

        elif target is aten.unbind.int and is_float(node.args[0]) and static(value(node.args[0]).shape):
            source = node.args[0]
            dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % value(source).dim()
            users = list(node.users)
            if all(user.target is operator.getitem for user in users):
                for user in users:
                    index = user.args[1]
                    piece = call(user, aten.slice.Tensor, source, dim, index, index + 1)
                    user.target, user.args = aten.reshape.default, (piece, list(value(user).shape))
                graph.erase_node(node)
                counts["unbind -> slices"] += 1

        elif target is aten.matmul.default and all(is_float(a) for a in node.args[:2]):
            left, right = (value(a) for a in node.args[:2])
            batch = list(left.shape[:-2])
            if left.dim() >= 3 and left.shape[:-2] == right.shape[:-2] and static(left.shape) and static(right.shape):
                flat = math.prod(batch)
                product = call(node, aten.bmm.default, call(node, aten.reshape.default, node.args[0], [flat, *left.shape[-2:]]),
                               call(node, aten.reshape.default, node.args[1], [flat, *right.shape[-2:]]))
                node.replace_all_uses_with(call(node, aten.reshape.default, product, list(result.shape)))
                graph.erase_node(node)
                counts["batched matmul -> bmm"] += 1

        elif target is aten.silu.default and is_float(node.args[0]):
            # Decomposed by torch in float32 for float16 inputs, between two casts XNNPACK refuses.
            node.target, node.args = aten.mul.Tensor, (node.args[0], call(node, aten.sigmoid.default, node.args[0]))
            counts["silu -> x * sigmoid(x)"] += 1

        elif target is aten.gelu.default and result.dtype == torch.float16:
            # XNNPACK has no float16 GELU. tanh's approximation, written with a sigmoid
            # (0.5 * (1 + tanh(z)) = sigmoid(2z)), is within 3e-4 of the erf form: under float16's
            # rounding of the activations it feeds.
            source = node.args[0]
            cubed = call(node, aten.mul.Tensor, call(node, aten.mul.Tensor, source, source), source)
            inner = call(node, aten.add.Tensor, source, call(node, aten.mul.Tensor, cubed, 0.044715))
            gate = call(node, aten.sigmoid.default, call(node, aten.mul.Tensor, inner, 2 * math.sqrt(2 / math.pi)))
            node.target, node.args, node.kwargs = aten.mul.Tensor, (source, gate), {}
            counts["float16 gelu -> x * sigmoid(1.5958 (x + 0.044715 x^3)), tanh's approximation"] += 1

        elif target is aten.scaled_dot_product_attention.default:
            replaced = _explicit_attention(node, call, value)
            if replaced is not None:
                node.replace_all_uses_with(replaced)
                graph.erase_node(node)
                counts["scaled_dot_product_attention -> bmm, softmax, bmm"] += 1

        elif target in float_arithmetic and isinstance(result, torch.Tensor) and result.dtype.is_floating_point:
            if any(type(a) is int for a in node.args):
                node.args = tuple(float(a) if type(a) is int else a for a in node.args)
                counts["int scalar in float arithmetic -> float"] += 1

    if counts:
        graph.eliminate_dead_code()
        program.graph_module.recompile()
    return [f"{what} x{count}" for what, count in sorted(counts.items())]


def _explicit_attention(node: Any, call: Callable, value: Callable) -> Any | None:
    """``scaled_dot_product_attention`` as bmm/softmax/bmm before ``node``; None where it does not
    apply (dropout, causal, grouped-query, a boolean mask, broadcast batch dims)."""
    import torch

    aten = torch.ops.aten
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    defaults = (None, None, None, None, 0.0, False, None, False)
    bound = dict(zip(names, defaults))
    bound.update(zip(names, node.args))
    bound.update(node.kwargs)
    query, key, values, mask = bound["query"], bound["key"], bound["value"], bound["attn_mask"]
    if bound["dropout_p"] or bound["is_causal"] or bound["enable_gqa"]:
        return None
    q, k, v = value(query), value(key), value(values)
    if mask is not None and not value(mask).dtype.is_floating_point:
        return None
    if q.dim() < 3 or not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]) or not all(isinstance(s, int) for s in (*q.shape, *k.shape, *v.shape)):
        return None
    batch, length, source = list(q.shape[:-2]), q.shape[-2], k.shape[-2]
    flat = math.prod(batch)
    scale = bound["scale"] if bound["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])
    scaled = call(node, aten.mul.Tensor, query, float(scale))
    keys_t = call(node, aten.transpose.int, key, -2, -1)
    scores = call(node, aten.bmm.default, call(node, aten.reshape.default, scaled, [flat, length, q.shape[-1]]),
                  call(node, aten.reshape.default, keys_t, [flat, k.shape[-1], source]))
    if mask is not None:
        scores = call(node, aten.add.Tensor, call(node, aten.reshape.default, scores, batch + [length, source]), mask)
        scores = call(node, aten.reshape.default, scores, [flat, length, source])
    weights = call(node, aten.softmax.int, scores, -1)
    out = call(node, aten.bmm.default, weights, call(node, aten.reshape.default, values, [flat, source, v.shape[-1]]))
    return call(node, aten.reshape.default, out, batch + [length, v.shape[-1]])
