"""SCMAN: sparse cross-modal attention with static, NPU-friendly sparsity.

A drop-in replacement for the attention of a diffusers denoiser, installed through diffusers'
own processor mechanism (``install_scman(unet, config)``, or ``SCMANProcessor`` in a per-layer
dict for ``set_attn_processor``), and usable without diffusers as ``SCMANAttention``.

Patterns (``SCMANConfig.mode``):
- ``dense``: standard scaled dot-product attention; reproduces ``AttnProcessor`` exactly,
  additive attention masks included.
- ``sparse``, cross-attention (image tokens query the conditioning sequence): token reduction.
  The M context tokens become S summary tokens *before* the key/value projections, so both the
  projections and the attention cost grow with the budget S, not with M. ``summary="pooled"``
  averages fixed groups of M/S consecutive tokens; ``summary="learned"`` applies a learned
  [S x M] mixing matrix along the token axis (initialised to the pooled average, or an adaptive
  average when S does not divide M). Both are one constant-shape matmul.
- ``sparse``, self-attention (replaced only when ``self_attention=True``): block-sparse local
  windows plus global tokens. The H x W token grid is cut into non-overlapping w x w windows;
  each query sees the w*w keys of its own window and G global tokens. Global token g is the
  mean key/value of the g-th of G equal groups of consecutive raster-order image tokens
  (horizontal bands of H/G rows when G divides H), computed as a matmul with a constant
  [G x HW] averaging matrix, so every query sees a summary of the whole image.

Everything has static shapes. Window partition is a reshape/permute into window-major token
order, (B, heads, H*W, d); local scores are then a free reshape to (B*heads, nW, w*w, d) and one
batched matmul; the global tokens' scores are one more matmul on the window-major queries; both
are concatenated for a single softmax and split back by static slices. Pooling and summary
mixing are a Linear over the token axis with a constant (or learned) matrix. Every matmul on
(batch, heads, length, head_dim) tensors is run as one 3-D bmm over the folded batch axes (a
free reshape), because 4-D torch.matmul lowers to expand copies that XNNPACK does not delegate.
Sparse modes use no gather, scatter, top-k, index, expand or boolean mask at run time, and
refuse an attention mask.

Layouts (``SCMANConfig.layout``):
- ``bhld``: Linear projections on (B, L, C); attention on (batch, heads, length, head_dim).
- ``bc1l``: Apple ml-stable-diffusion "split_einsum" style. Projections are 1x1 Conv2d on a
  channels-first (B, C, 1, L) tensor (``SCMANAttention`` holds Conv2d modules; the processor
  applies the wrapped Linear weights as 1x1 convolutions), heads are split by a reshape to
  (B, heads, head_dim, L), and attention is computed channels-first: scores = q^T k and
  out = v p^T, so keys and values are never transposed.

The token grid. A diffusers transformer block sees image tokens as (B, H*W, C): the grid is gone
by then, and a run-time shape cannot choose a static pattern. So the grid is fixed when the
processor is built:
- ``install_scman`` derives it per layer from the UNet config (``unet_token_grids``):
  ``sample_size`` is the latent grid of ``down_blocks.0``; every down block but the last ends
  with a stride-2 Downsample2D (with ``downsample_padding`` p: out = floor((r + 2p - 3)/2) + 1,
  or floor(r/2) when p = 0), ``mid_block`` runs at the last down resolution and
  ``up_blocks.j`` mirrors ``down_blocks.{n-1-j}`` (diffusers upsamples to the skip's size). For
  a transformer denoiser the grid is ``sample_size // patch_size`` for every layer.
- ``SCMANProcessor(config, grid=(H, W))`` / ``SCMANAttention(..., grid=(H, W))`` take it
  explicitly. A 4-D (B, C, H, W) input to a processor must match it.
At run time the processor checks that the token count equals H*W (a Python check on static
shapes, free after export) and fails naming the layer, so a UNet run at a different resolution
than ``sample_size`` fails loudly instead of mixing windows. Cross-attention also needs the
context length M statically (``SCMANConfig.context_length``: ``tokenizer.model_max_length``).

Limits: the ``bc1l`` learned/pooled summary does not convert to LiteRT (litert-torch 0.10
folds it into a rank-4 batch_matmul that TFLite rejects); ``bc1l`` is the Core ML layout, use
``bhld`` for LiteRT and XNNPACK. Joint attention (``add_k_proj``, SD3/Flux) and q/k-norm attention are refused; one
processor instance serves one grid, so use ``install_scman`` or a per-layer dict rather than a
single instance across resolutions; attention runs in the input dtype (``upcast_attention`` and
``upcast_softmax`` are not applied, which matters in float16 only); FLOP counts from
``scman_flops`` are analytic (2 FLOPs per multiply-add; softmax and reshapes not counted).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from edgegen.errors import EdgegenError

# torch is imported at module level because the classes here are nn.Modules; nothing under
# ``import edgegen`` imports this module, so the CLI stays fast.

MODES = ("dense", "sparse")
SUMMARIES = ("pooled", "learned")
LAYOUTS = ("bhld", "bc1l")


@dataclass(frozen=True)
class SCMANConfig:
    """What to sparsify and how; validated on construction (grid checks happen per layer)."""

    mode: str = "sparse"
    window: int = 4  # side w of the square local windows over the image-token grid
    global_tokens: int = 1  # G pooled whole-image tokens seen by every query (0 = none)
    summary_tokens: int = 4  # S conditioning tokens kept after token reduction
    summary: str = "pooled"  # "pooled": fixed group averages; "learned": learned [S x M] mixing
    context_length: int | None = None  # M, the conditioning length (needed by sparse cross layers)
    self_attention: bool = False  # also replace self-attention layers (sparse: windows + global tokens)
    layout: str = "bhld"  # "bhld" or "bc1l" (1x1-conv projections, channels-first attention)

    def __post_init__(self) -> None:
        def choice(name: str, value: Any, options: tuple[str, ...]) -> None:
            if value not in options:
                raise EdgegenError(f"SCMAN {name} '{value}' is not one of: {', '.join(options)}")

        def positive(name: str, value: Any, minimum: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise EdgegenError(f"SCMAN {name} must be an integer >= {minimum}, got {value!r}")

        choice("mode", self.mode, MODES)
        choice("summary", self.summary, SUMMARIES)
        choice("layout", self.layout, LAYOUTS)
        positive("window", self.window)
        positive("global_tokens", self.global_tokens, minimum=0)
        positive("summary_tokens", self.summary_tokens)
        if self.context_length is not None:
            positive("context_length", self.context_length)
            if self.mode == "sparse":
                if self.summary_tokens > self.context_length:
                    raise EdgegenError(
                        f"SCMAN summary_tokens {self.summary_tokens} exceed the context length "
                        f"{self.context_length}: token reduction cannot add tokens"
                    )
                if self.summary == "pooled" and self.context_length % self.summary_tokens:
                    raise EdgegenError(
                        f"SCMAN pooled summary needs summary_tokens ({self.summary_tokens}) to divide "
                        f"the context length ({self.context_length}); pick a divisor or summary='learned'"
                    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _grid(grid: Any) -> tuple[int, int] | None:
    if grid is None:
        return None
    height, width = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if min(height, width) < 1:
        raise EdgegenError(f"SCMAN token grid must be positive, got {grid}")
    return int(height), int(width)


def _averaging_matrix(groups: int, length: int) -> torch.Tensor:
    """[groups x length]: row i averages the i-th of ``groups`` contiguous (adaptive) spans."""
    matrix = torch.zeros(groups, length)
    for i in range(groups):
        start, end = (i * length) // groups, -((-(i + 1) * length) // groups)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class SCMANCore(nn.Module):
    """The static attention plan of one layer: pattern, grid, heads and (learned) reducers.

    ``attend(q, k, v)`` takes projected tensors, (B, L, C) in ``bhld`` layout or (B, C, 1, L) in
    ``bc1l``, and returns the attended values in the same layout (before the output projection).
    """

    def __init__(
        self, config: SCMANConfig, heads: int, is_cross: bool, grid: Any = None, name: str = "SCMAN layer"
    ) -> None:
        super().__init__()
        self.config, self.heads, self.is_cross, self.name = config, int(heads), bool(is_cross), name
        self.grid = _grid(grid)
        sparse = config.mode == "sparse"
        self.kind = "dense" if not sparse else ("reduce" if is_cross else "window")
        if self.heads < 1:
            raise EdgegenError(f"{name}: heads must be >= 1, got {heads}")
        if self.kind == "reduce":
            if config.context_length is None:
                raise EdgegenError(
                    f"{name}: sparse cross-attention needs SCMANConfig.context_length (the text "
                    "encoder's sequence length, e.g. tokenizer.model_max_length) to build its static reduction"
                )
            matrix = _averaging_matrix(config.summary_tokens, config.context_length)
            if config.summary == "learned":
                self.summary_weight = nn.Parameter(matrix)
            else:
                self.register_buffer("summary_weight", matrix, persistent=False)
        if self.kind == "window":
            if self.grid is None:
                raise EdgegenError(f"{name}: sparse self-attention needs the token grid (H, W)")
            height, width = self.grid
            w, tokens = config.window, height * width
            if height % w or width % w:
                raise EdgegenError(
                    f"{name}: window {w} does not divide the {height}x{width} token grid; "
                    "choose a window that divides both sides"
                )
            if config.global_tokens > tokens:
                raise EdgegenError(
                    f"{name}: {config.global_tokens} global tokens exceed the {tokens} image tokens "
                    f"of the {height}x{width} grid"
                )
            if config.global_tokens and tokens % config.global_tokens:
                raise EdgegenError(
                    f"{name}: global_tokens {config.global_tokens} must divide the {tokens} image tokens "
                    "(each global token pools an equal group)"
                )
            if config.global_tokens:
                self.register_buffer(
                    "global_weight", _averaging_matrix(config.global_tokens, tokens), persistent=False
                )

    def extra_repr(self) -> str:
        return f"kind={self.kind}, heads={self.heads}, grid={self.grid}, layout={self.config.layout}"

    # -- checks on static shapes (Python ints, so free after export) --------------------------
    def check_tokens(self, tokens: int) -> None:
        if self.kind == "window" and tokens != self.grid[0] * self.grid[1]:
            raise EdgegenError(
                f"{self.name}: got {tokens} image tokens but its grid {self.grid[0]}x{self.grid[1]} "
                f"has {self.grid[0] * self.grid[1]}; run at the configured sample_size or pass grid"
            )

    def check_context(self, tokens: int) -> None:
        if self.kind == "reduce" and tokens != self.config.context_length:
            raise EdgegenError(
                f"{self.name}: got {tokens} context tokens but SCMANConfig.context_length is "
                f"{self.config.context_length}"
            )

    # -- token reduction ----------------------------------------------------------------------
    def reduce_context(self, context: torch.Tensor) -> torch.Tensor:
        """M context tokens -> S summary tokens; (B, M, C) or (B, C, 1, M)."""
        if self.kind != "reduce":
            return context
        self.check_context(context.shape[-1] if self.config.layout == "bc1l" else context.shape[1])
        return self._pool_tokens(context, self.summary_weight)

    # -- attention ----------------------------------------------------------------------------
    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if mask is not None and self.kind != "dense":
            raise EdgegenError(f"{self.name}: sparse SCMAN takes no attention mask (static patterns only)")
        bc1l = self.config.layout == "bc1l"
        if self.kind == "window":
            self.check_tokens(q.shape[-1] if bc1l else q.shape[1])
            return self._window_bc1l(q, k, v, scale) if bc1l else self._window_bhld(q, k, v, scale)
        if bc1l:
            batch, channels, _, length = q.shape
            heads = self.heads
            qt = q.reshape(batch, heads, channels // heads, length)
            kt = k.reshape(batch, heads, channels // heads, k.shape[-1])
            vt = v.reshape(batch, heads, channels // heads, v.shape[-1])
            return _attention_cf(qt, kt, vt, scale, mask).reshape(batch, channels, 1, length)
        batch, length, channels = q.shape
        out = _attention(_split(q, self.heads), _split(k, self.heads), _split(v, self.heads), scale, mask)
        return out.permute(0, 2, 1, 3).reshape(batch, length, channels)

    def _pool_tokens(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # Mixing along the token axis as a Linear over that axis: the constant sits on the
        # right of the product, where every backend takes it as a fully connected layer.
        if self.config.layout == "bc1l":
            # (B, C, 1, M) -> (B, C, 1, S) as a 2-D fully connected layer (XNNPACK, Core ML).
            batch, channels, _, length = x.shape
            mixed = nn.functional.linear(x.reshape(batch * channels, length), weight)
            return mixed.reshape(batch, channels, 1, weight.shape[0])
        return nn.functional.linear(x.transpose(1, 2), weight).transpose(1, 2)  # (B, M, C) -> (B, S, C)

    def _window_bhld(self, q, k, v, scale):
        batch, tokens, channels = q.shape
        heads, w, g = self.heads, self.config.window, self.config.global_tokens
        height, width = self.grid
        windows, head_dim, area = (height // w) * (width // w), channels // heads, w * w

        def partition(x):  # (B, HW, C) -> (B, heads, HW, d) with tokens in window-major order
            x = x.reshape(batch * (height // w), w, width // w, w * channels).permute(0, 2, 1, 3)
            return x.reshape(batch, tokens, heads, head_dim).permute(0, 2, 1, 3)

        def by_window(x):  # (B, heads, HW, n) -> (B*heads, nW, w*w, n): a free reshape
            return x.reshape(batch * heads, windows, area, x.shape[-1])

        qw, kw, vw = partition(q), partition(k), partition(v)
        scores = _bmm(by_window(qw), by_window(kw).transpose(-1, -2)) * scale  # (B*h, nW, ww, ww)
        if g:
            # Global keys/values: (B, C, G) reshaped to (B, heads, d, G), i.e. already k^T.
            key_t = nn.functional.linear(k.transpose(1, 2), self.global_weight).reshape(batch, heads, head_dim, g)
            value_t = nn.functional.linear(v.transpose(1, 2), self.global_weight).reshape(batch, heads, head_dim, g)
            scores = torch.cat([scores.reshape(batch, heads, tokens, area), _bmm(qw, key_t) * scale], dim=-1)
            probs = scores.softmax(dim=-1)
            local, global_ = probs[..., :area], probs[..., area:]  # static slices
            out = _bmm(by_window(local), by_window(vw)).reshape(batch, heads, tokens, head_dim)
            out = out + _bmm(global_, value_t.transpose(-1, -2))
        else:
            out = _bmm(scores.softmax(dim=-1), by_window(vw)).reshape(batch, heads, tokens, head_dim)
        out = out.permute(0, 2, 1, 3).reshape(batch * (height // w), width // w, w, w * channels)
        return out.permute(0, 2, 1, 3).reshape(batch, tokens, channels)

    def _window_bc1l(self, q, k, v, scale):
        batch, channels, _, tokens = q.shape
        heads, w, g = self.heads, self.config.window, self.config.global_tokens
        height, width = self.grid
        windows, head_dim, area = (height // w) * (width // w), channels // heads, w * w

        def partition(x):  # (B, C, 1, HW) -> (B*heads, nW, d, w*w): channels-first windows
            x = x.reshape(batch * channels * (height // w), w, width // w, w).permute(0, 2, 1, 3)
            return x.reshape(batch * heads, head_dim, windows, area).permute(0, 2, 1, 3)

        qt, kt, vt = partition(q), partition(k), partition(v)
        scores = _bmm(qt.transpose(-1, -2), kt) * scale  # (B*h, nW, ww, ww)
        if g:
            key_t = nn.functional.linear(k, self.global_weight).reshape(batch, heads, head_dim, g)
            value_t = nn.functional.linear(v, self.global_weight).reshape(batch, heads, head_dim, g)
            rows = qt.transpose(-1, -2).reshape(batch, heads, tokens, head_dim)  # window-major
            scores = torch.cat([scores.reshape(batch, heads, tokens, area), _bmm(rows, key_t) * scale], dim=-1)
            probs = scores.softmax(dim=-1)
            local, global_ = probs[..., :area], probs[..., area:]  # static slices
            local = local.reshape(batch * heads, windows, area, area)
            out = _bmm(vt, local.transpose(-1, -2)).permute(0, 2, 1, 3).reshape(batch, heads, head_dim, tokens)
            out = out + _bmm(value_t, global_.transpose(-1, -2))
        else:
            out = _bmm(vt, scores.softmax(dim=-1).transpose(-1, -2)).permute(0, 2, 1, 3)
        out = out.reshape(batch * channels * (height // w), width // w, w, w).permute(0, 2, 1, 3)
        return out.reshape(batch, channels, 1, tokens)


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, channels = x.shape
    return x.reshape(batch, length, heads, channels // heads).permute(0, 2, 1, 3)


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Product of 4-D (N, A, i, j) x (N, A, j, k) run as one 3-D bmm.

    torch.matmul on 4-D tensors lowers to expand copies around a bmm, which XNNPACK does not
    take; folding the two batch axes is a free reshape and keeps the whole layer delegated.
    """
    n, a_ = a.shape[0], a.shape[1]
    out = torch.bmm(a.reshape(n * a_, a.shape[2], a.shape[3]), b.reshape(n * a_, b.shape[2], b.shape[3]))
    return out.reshape(n, a_, out.shape[1], out.shape[2])


def _attention(q, k, v, scale, mask=None):
    """q (N, A, L, d), k/v (N, A, S, d) -> (N, A, L, d); mask additive, broadcastable to scores."""
    scores = _bmm(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask
    return _bmm(scores.softmax(dim=-1), v)


def _attention_cf(qt, kt, vt, scale, mask=None):
    """Channels-first: qt (N, A, d, L), kt/vt (N, A, d, S) -> (N, A, d, L)."""
    scores = _bmm(qt.transpose(-1, -2), kt) * scale
    if mask is not None:
        scores = scores + mask
    return _bmm(vt, scores.softmax(dim=-1).transpose(-1, -2))


def _conv1x1(x: torch.Tensor, linear: nn.Module) -> torch.Tensor:
    """A Linear applied as a 1x1 convolution over (B, C, 1, L)."""
    weight = linear.weight
    return nn.functional.conv2d(x, weight.reshape(*weight.shape, 1, 1), linear.bias)


class SCMANProcessor(nn.Module):
    """diffusers attention processor running SCMAN inside an existing ``Attention`` layer.

    It reuses the layer's own projections, heads, scale, norms, residual and output rescale, so a
    teacher's weights load unchanged. An ``nn.Module`` so that a learned summary is registered
    under the layer (``...attn2.processor.core.summary_weight``).
    """

    def __init__(self, config: SCMANConfig, grid: Any = None, is_cross: bool = True, name: str = "SCMAN layer"):
        super().__init__()
        self.core = SCMANCore(config, heads=1, is_cross=is_cross, grid=grid, name=name)
        self.config = config

    def forward(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        core = self.core
        check_attention_layer(attn, core.name)
        core.heads = attn.heads
        is_cross = encoder_hidden_states is not None
        if is_cross != core.is_cross:
            raise EdgegenError(
                f"{core.name}: built for {'cross' if core.is_cross else 'self'}-attention but called as "
                f"{'cross' if is_cross else 'self'}-attention"
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            if core.grid is not None and (height, width) != core.grid:
                raise EdgegenError(f"{core.name}: input grid {height}x{width} differs from its grid {core.grid}")
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, sequence_length, _ = source.shape
        if attention_mask is not None:
            if core.kind != "dense":
                raise EdgegenError(f"{core.name}: sparse SCMAN takes no attention mask (static patterns only)")
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.reshape(batch_size, attn.heads, -1, sequence_length)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)
        else:
            context = encoder_hidden_states

        if self.config.layout == "bc1l":
            x = hidden_states.transpose(1, 2).unsqueeze(2)  # (B, C, 1, L)
            c = x if encoder_hidden_states is None else context.transpose(1, 2).unsqueeze(2)
            c = core.reduce_context(c)
            q, k, v = _conv1x1(x, attn.to_q), _conv1x1(c, attn.to_k), _conv1x1(c, attn.to_v)
            out = core.attend(q, k, v, attn.scale, attention_mask)
            out = _conv1x1(out, attn.to_out[0]).squeeze(2).transpose(1, 2)
        else:
            context = core.reduce_context(context)
            q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
            out = core.attend(q, k, v, attn.scale, attention_mask)
            out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def check_attention_layer(attn: Any, name: str) -> None:
    if getattr(attn, "add_k_proj", None) is not None:
        raise EdgegenError(f"{name}: joint attention (added key/value projections, SD3/Flux) is not supported")
    if getattr(attn, "norm_q", None) is not None or getattr(attn, "norm_k", None) is not None:
        raise EdgegenError(f"{name}: attention with q/k normalization is not supported")
    if attn.to_q.out_features % attn.heads:
        raise EdgegenError(f"{name}: {attn.to_q.out_features} channels do not split into {attn.heads} heads")


class SCMANAttention(nn.Module):
    """SCMAN as a plain module with its own projections (no diffusers needed).

    ``forward(hidden_states, context=None)``: (B, L, query_dim) in ``bhld`` layout, or
    (B, query_dim, 1, L) in ``bc1l`` layout where the projections are 1x1 Conv2d. ``context``
    None means self-attention; a module built with ``context_dim`` is a cross-attention layer.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        head_dim: int | None = None,
        context_dim: int | None = None,
        grid: Any = None,
        config: SCMANConfig | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.config = config or SCMANConfig()
        if heads < 1 or (head_dim is None and query_dim % heads):
            raise EdgegenError(f"SCMANAttention: query_dim {query_dim} does not split into {heads} heads")
        head_dim = head_dim or query_dim // heads
        inner, context_dim_ = heads * head_dim, context_dim or query_dim

        def projection(n_in: int, n_out: int, has_bias: bool) -> nn.Module:
            if self.config.layout == "bc1l":
                return nn.Conv2d(n_in, n_out, kernel_size=1, bias=has_bias)
            return nn.Linear(n_in, n_out, bias=has_bias)

        self.to_q = projection(query_dim, inner, bias)
        self.to_k = projection(context_dim_, inner, bias)
        self.to_v = projection(context_dim_, inner, bias)
        self.to_out = projection(inner, query_dim, True)
        self.scale = head_dim**-0.5
        self.core = SCMANCore(self.config, heads, is_cross=context_dim is not None, grid=grid, name="SCMANAttention")

    def forward(self, hidden_states: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if (context is not None) != self.core.is_cross:
            raise EdgegenError("SCMANAttention: pass context exactly when built with context_dim")
        q, k, v = self.project(hidden_states, context)
        return self.to_out(self.core.attend(q, k, v, self.scale))

    def project(self, hidden_states: torch.Tensor, context: torch.Tensor | None = None):
        """Projected q, k, v as ``attend`` takes them (context already reduced)."""
        source = hidden_states if context is None else self.core.reduce_context(context)
        return self.to_q(hidden_states), self.to_k(source), self.to_v(source)


# -- installing on a diffusers model -------------------------------------------------------------

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^(mid_block)\.")


def _pair(size: Any) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def unet_token_grids(model: Any) -> dict[str, tuple[int, int]]:
    """Processor name -> (H, W) token grid of that attention layer, from the model config."""
    config = model.config
    names = list(model.attn_processors)
    if getattr(config, "sample_size", None) is None:
        raise EdgegenError(f"{type(model).__name__} has no sample_size in its config; pass each layer's grid")
    if not getattr(config, "down_block_types", None):
        patch = getattr(config, "patch_size", None) or 1
        height, width = _pair(config.sample_size)
        return {name: (height // patch, width // patch) for name in names}
    padding = getattr(config, "downsample_padding", 1)
    levels = [_pair(config.sample_size)]
    for _ in range(len(config.down_block_types) - 1):
        levels.append(
            tuple(r // 2 if padding == 0 else (r + 2 * padding - 3) // 2 + 1 for r in levels[-1])
        )
    grids = {}
    for name in names:
        match = _BLOCK.match(name)
        if match is None:
            raise EdgegenError(f"cannot place attention layer '{name}' in the UNet; pass its grid explicitly")
        if match.group(3):
            grids[name] = levels[-1]
        elif match.group(1) == "down_blocks":
            grids[name] = levels[int(match.group(2))]
        else:
            grids[name] = levels[len(levels) - 1 - int(match.group(2))]
    return grids


def _attention_modules(model: Any) -> dict[str, Any]:
    return {f"{name}.processor": module for name, module in model.named_modules() if hasattr(module, "set_processor")}


def install_scman(model: Any, config: SCMANConfig) -> list[str]:
    """Put SCMAN on ``model``'s cross-attention layers (and self-attention if configured).

    Each layer's token grid comes from ``unet_token_grids``; every configuration problem is
    found before anything is changed. Returns one line per replaced layer.
    """
    if not hasattr(model, "set_attn_processor"):
        raise EdgegenError(f"{type(model).__name__} has no attention processors to replace")
    grids = unet_token_grids(model)
    modules = _attention_modules(model)
    processors = dict(model.attn_processors)
    replaced = []
    for name, attn in modules.items():
        is_cross = bool(attn.is_cross_attention)
        if not is_cross and not config.self_attention:
            continue
        layer = name.removesuffix(".processor")
        check_attention_layer(attn, layer)
        processor = SCMANProcessor(config, grid=grids[name], is_cross=is_cross, name=layer)
        processor.core.heads = attn.heads
        processors[name] = processor
        grid = "x".join(map(str, grids[name]))
        kind = processor.core.kind
        detail = {
            "dense": "dense",
            "reduce": f"{config.summary} summary {config.context_length}->{config.summary_tokens} tokens",
            "window": f"window {config.window}x{config.window} + {config.global_tokens} global tokens",
        }[kind]
        replaced.append(
            f"{layer}: {'cross' if is_cross else 'self'}-attention, grid {grid}, heads {attn.heads}, "
            f"{detail}, layout {config.layout}"
        )
    model.set_attn_processor(processors)
    return replaced


# -- analytic cost ---------------------------------------------------------------------------------


def scman_flops(
    config: SCMANConfig,
    grid: Any,
    context_length: int | None = None,
    channels: int = 320,
    context_dim: int | None = None,
    heads: int = 8,
) -> dict[str, Any]:
    """Analytic FLOPs (2 per multiply-add) of one attention layer, dense vs SCMAN.

    Cross-attention when ``context_length`` is given, else self-attention over the grid. Counts
    the key/value projections (they shrink with token reduction), the score and value matmuls
    and SCMAN's own pooling/mixing matmuls; the query and output projections are the same in
    both and left out. Also gives the attention-matrix elements (batch 1, all heads).
    """
    height, width = _grid(grid)
    tokens = height * width
    context_dim = context_dim or channels
    if context_length is not None:
        dense_keys, source_dim = context_length, context_dim
        dense = 2 * 2 * context_length * context_dim * channels + 2 * 2 * tokens * context_length * channels
        dense_matrix = heads * tokens * context_length
        if config.mode == "sparse":
            s = config.summary_tokens
            reduction = 2 * s * context_length * context_dim
            sparse = reduction + 2 * 2 * s * context_dim * channels + 2 * 2 * tokens * s * channels
            sparse_matrix, keys = heads * tokens * s, s
        else:
            sparse, sparse_matrix, keys = dense, dense_matrix, dense_keys
    else:
        source_dim = channels
        dense_keys = tokens
        dense = 2 * 2 * tokens * channels * channels + 2 * 2 * tokens * tokens * channels
        dense_matrix = heads * tokens * tokens
        if config.mode == "sparse":
            w, g = config.window, config.global_tokens
            keys = w * w + g
            pooling = 2 * 2 * g * tokens * channels
            sparse = 2 * 2 * tokens * channels * channels + pooling + 2 * 2 * tokens * keys * channels
            sparse_matrix = heads * tokens * keys
        else:
            sparse, sparse_matrix, keys = dense, dense_matrix, dense_keys
    return {
        "kind": "cross" if context_length is not None else "self",
        "grid": [height, width],
        "image_tokens": tokens,
        "context_tokens": context_length,
        "channels": channels,
        "source_dim": source_dim,
        "heads": heads,
        "dense_keys_per_query": dense_keys,
        "sparse_keys_per_query": keys,
        "dense_flops": dense,
        "sparse_flops": sparse,
        "flop_ratio": dense / sparse,
        "dense_attention_elements": dense_matrix,
        "sparse_attention_elements": sparse_matrix,
    }


def scman_flops_sweep(
    config: SCMANConfig, grids: list[Any], context_lengths: list[int | None], **layer: Any
) -> list[dict[str, Any]]:
    """``scman_flops`` for every (grid, context length) pair; a context length of None = self-attention."""
    rows = []
    for grid in grids:
        for length in context_lengths:
            point = config
            if length is not None and config.mode == "sparse":
                point = SCMANConfig(**{**config.to_dict(), "context_length": length})
            rows.append(scman_flops(point, grid, length, **layer))
    return rows


__all__ = [
    "SCMANAttention",
    "SCMANConfig",
    "SCMANCore",
    "SCMANProcessor",
    "install_scman",
    "scman_flops",
    "scman_flops_sweep",
    "unet_token_grids",
]
