"""Sana: a Gemma-2 text encoder, a SanaTransformer2DModel (linear attention), an AutoencoderDC.

Components: ``text_encoder`` (token ids and attention mask -> Gemma-2's last hidden states),
``denoiser`` (latents, timestep, text states and their mask -> the flow prediction) and
``vae_decoder`` (latents -> image; AutoencoderDC, its scaling folded in).

The prompt is conditioned as ``SanaPipeline`` does by default: lower-cased, prefixed with the
pipeline's own complex human instruction, tokenized right-padded to the instruction's length plus
``max_sequence_length - 2``, and then cut to the first token plus the last
``max_sequence_length - 1`` (``select_index``). The negative prompt is the empty string without
the instruction, padded to ``max_sequence_length``; because Gemma-2 is causal and the padding is
on the right, its states are the first ``max_sequence_length`` states of the same encoder
artifact run at the longer length, so one static-shape encoder serves both. The transformer's
timestep is the scheduler's times ``timestep_scale``; a learned-sigma output is split as the
pipeline splits it. Guidance is classifier-free.

Refused in one line: guidance-distilled transformers (``guidance_embeds``: Sana-Sprint, another
pipeline class).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.families.base import (
    Component,
    ComponentSpec,
    ConditioningEncoder,
    component_spec,
    no_student,
    read_config,
    require,
    spatial_size,
    tokenizer_digest,
    traced_component,
    use_plain_attention,
    vae_decoder_module,
)
from edgegen.families.prompts import CALIBRATION_PROMPTS, DEFAULT_PROMPT

PIPELINE_CLASSES = ("SanaPipeline",)
ENCODER = ConditioningEncoder("text_encoder", "tokenizer", attention_mask=True)
COMPONENTS = (
    ComponentSpec("text_encoder", "text_encoder", "encoder"),
    ComponentSpec("denoiser", "transformer", "denoiser"),
    ComponentSpec("vae_decoder", "vae", "decoder"),
)
_REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer")


def pipeline_defaults() -> tuple[int, str]:
    """SanaPipeline.__call__'s max_sequence_length and complex human instruction (joined), as diffusers ships them."""
    from diffusers import SanaPipeline

    parameters = inspect.signature(SanaPipeline.__call__).parameters
    return int(parameters["max_sequence_length"].default), "\n".join(parameters["complex_human_instruction"].default)


def _prepare(tokenizer: Any) -> Any:
    tokenizer.padding_side = "right"  # as the pipeline sets it before every call
    return tokenizer


def encoder_length(tokenizer: Any) -> int:
    max_length, instruction = pipeline_defaults()
    return len(_prepare(tokenizer).encode(instruction)) + max_length - 2


def tokenize(tokenizer: Any, prompts: list[str], tensors: str = "pt", instruction: bool = True) -> Any:
    """Token ids and mask at the encoder's static length; with the instruction for prompts, without
    it (and padded further) for the negative prompt."""
    _, text = pipeline_defaults()
    prompts = [prompt.lower().strip() for prompt in prompts]
    if instruction:
        prompts = [text + prompt for prompt in prompts]
    return _prepare(tokenizer)(
        prompts, padding="max_length", max_length=encoder_length(tokenizer), truncation=True, add_special_tokens=True, return_tensors=tensors
    )


def select(states: np.ndarray, mask: np.ndarray, instruction: bool) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's ``select_index`` (with the instruction) or its shorter negative encoding."""
    max_length, _ = pipeline_defaults()
    if not instruction:
        return states[:, :max_length], mask[:, :max_length]
    index = [0, *range(states.shape[1] - max_length + 1, states.shape[1])]
    return states[:, index], mask[:, index]


def layer_masks(config: Any, padding_mask: Any, dtype: Any) -> Any:
    """Gemma-2's 4-D eager attention masks (of the embeddings' ``dtype``), one per layer type,
    from the 2-D padding mask.

    The same values as transformers' ``create_causal_mask`` and
    ``create_sliding_window_causal_mask`` (0 where a key is seen, the dtype's minimum where
    not), from plain comparisons: transformers builds them with ``new_ones``, which
    coremltools cannot convert. Other attention implementations get the 2-D mask as before.
    """
    import torch

    if config._attn_implementation != "eager":
        return padding_mask
    position = torch.arange(padding_mask.shape[1], device=padding_mask.device)
    query, key = position[:, None], position[None, :]
    seen = (key <= query)[None, None] & padding_mask.bool()[:, None, None, :]
    masks = {"full_attention": seen}
    if getattr(config, "sliding_window", None) is not None:
        masks["sliding_attention"] = seen & (key > query - config.sliding_window)[None, None]
    hidden = torch.zeros((), dtype=dtype, device=padding_mask.device)
    return {kind: torch.where(mask, hidden, torch.finfo(dtype).min) for kind, mask in masks.items()}


def _wrappers():
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder
            self.mask_dtype = encoder.get_input_embeddings().weight.dtype

        def forward(self, input_ids, attention_mask):
            return self.encoder(input_ids, attention_mask=layer_masks(self.encoder.config, attention_mask, self.mask_dtype))[0]

    class Denoiser(torch.nn.Module):
        def __init__(self, transformer, latent_channels: int):
            super().__init__()
            self.transformer = transformer
            self.timestep_scale = float(transformer.config.timestep_scale)
            self.learned_sigma = transformer.config.out_channels // 2 == latent_channels

        def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask):
            prediction = self.transformer(
                hidden_states, encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
                timestep=timestep * self.timestep_scale, return_dict=False,
            )[0]
            return prediction.chunk(2, dim=1)[0] if self.learned_sigma else prediction

    return TextEncoder, Denoiser


def _kept_epsilon(like: Any, epsilon: float) -> Any:
    """``epsilon`` as a one-element tensor of ``like``'s dtype: ``x + it`` equals ``x + epsilon``.

    Sana's linear attentions divide by ``x + 1e-15``. torch.onnx's graph optimizer takes a
    scalar within 1e-8 of zero for a no-op ``x + 0`` and drops the add, so where ReLU left no
    positive query entry the graph divides 0 by 0 (NaN) instead of 0 by 1e-15. Its rule
    matches scalars only; a one-element tensor keeps the add, with the same numbers bit for bit.
    """
    import torch

    return torch.full((1,), epsilon, dtype=like.dtype, device=like.device)


def exportable_multiscale_attention(vae: Any) -> list[str]:
    """Give AutoencoderDC's ``SanaMultiscaleLinearAttention`` epsilons torch.onnx keeps (``_kept_epsilon``)."""
    from diffusers.models.attention_processor import SanaMultiscaleLinearAttention

    twin = _multiscale_attention_class()
    count = 0
    for module in vae.modules():
        if type(module) is SanaMultiscaleLinearAttention:
            module.__class__ = twin  # only two methods differ; parameters and state_dict stay
        count += isinstance(module, twin)
    if not count:
        return []
    return [f"SanaMultiscaleLinearAttention x{count} -> the same attention, its epsilon a one-element tensor (kept by torch.onnx)"]


@functools.cache
def _multiscale_attention_class() -> type:
    import torch
    import torch.nn.functional as F
    from diffusers.models.attention_processor import SanaMultiscaleLinearAttention

    class TensorEpsilonMultiscaleLinearAttention(SanaMultiscaleLinearAttention):
        """diffusers 0.42's two attention formulas with ``self.eps`` as a one-element tensor."""

        def apply_linear_attention(self, query, key, value):
            value = F.pad(value, (0, 0, 0, 1), mode="constant", value=1)
            scores = torch.matmul(value, key.transpose(-1, -2))
            hidden_states = torch.matmul(scores, query)
            hidden_states = hidden_states.to(dtype=torch.float32)
            return hidden_states[:, :, :-1] / (hidden_states[:, :, -1:] + _kept_epsilon(hidden_states, self.eps))

        def apply_quadratic_attention(self, query, key, value):
            scores = torch.matmul(key.transpose(-1, -2), query)
            scores = scores.to(dtype=torch.float32)
            scores = scores / (torch.sum(scores, dim=2, keepdim=True) + _kept_epsilon(scores, self.eps))
            return torch.matmul(value, scores.to(value.dtype))

    return TensorEpsilonMultiscaleLinearAttention


def exportable_linear_attention(transformer: Any) -> list[str]:
    """Give ``transformer``'s linear self-attention (``SanaLinearAttnProcessor2_0``) an epsilon
    torch.onnx keeps (``_kept_epsilon``)."""
    from diffusers.models.attention_processor import SanaLinearAttnProcessor2_0

    twin = _linear_attention_processor()
    current = transformer.attn_processors
    if any(type(proc) is SanaLinearAttnProcessor2_0 for proc in current.values()):
        swapped = {name: twin() if type(proc) is SanaLinearAttnProcessor2_0 else proc for name, proc in current.items()}
        transformer.set_attn_processor(swapped)
    # Counted after the swap, so that a second build of the same pipeline records it too.
    count = sum(isinstance(proc, twin) for proc in transformer.attn_processors.values())
    if not count:
        return []
    return [f"SanaLinearAttnProcessor2_0 x{count} -> the same linear attention, its epsilon a one-element tensor (kept by torch.onnx)"]


@functools.cache
def _linear_attention_processor() -> type:
    import torch
    import torch.nn.functional as F
    from diffusers.models.attention_processor import SanaLinearAttnProcessor2_0

    class TensorEpsilonLinearAttnProcessor(SanaLinearAttnProcessor2_0):
        """``SanaLinearAttnProcessor2_0.__call__`` (diffusers 0.42) with its 1e-15 as a tensor."""

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
            original_dtype = hidden_states.dtype
            if encoder_hidden_states is None:
                encoder_hidden_states = hidden_states
            query = attn.to_q(hidden_states)
            key = attn.to_k(encoder_hidden_states)
            value = attn.to_v(encoder_hidden_states)
            if attn.norm_q is not None:
                query = attn.norm_q(query)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            query = query.transpose(1, 2).unflatten(1, (attn.heads, -1))
            key = key.transpose(1, 2).unflatten(1, (attn.heads, -1)).transpose(2, 3)
            value = value.transpose(1, 2).unflatten(1, (attn.heads, -1))
            query, key = F.relu(query), F.relu(key)
            query, key, value = query.float(), key.float(), value.float()
            value = F.pad(value, (0, 0, 0, 1), mode="constant", value=1.0)
            scores = torch.matmul(value, key)
            hidden_states = torch.matmul(scores, query)
            hidden_states = hidden_states[:, :, :-1] / (hidden_states[:, :, -1:] + _kept_epsilon(hidden_states, 1e-15))
            hidden_states = hidden_states.flatten(1, 2).transpose(1, 2)
            hidden_states = hidden_states.to(original_dtype)
            hidden_states = attn.to_out[0](hidden_states)
            hidden_states = attn.to_out[1](hidden_states)
            if original_dtype == torch.float16:
                hidden_states = hidden_states.clip(-65504, 65504)
            return hidden_states

    return TensorEpsilonLinearAttnProcessor


def build_component(
    pipeline: Any, name: str, batch_size: int = 1, prompt: str = DEFAULT_PROMPT, seed: int = 0, timestep: float | None = None
) -> Component:
    """Wrap one part of a Sana ``pipeline`` as a static-shape module with reference inputs."""
    import torch

    spec = component_spec(FAMILY, name)
    TextEncoder, Denoiser = _wrappers()
    generator = torch.Generator().manual_seed(seed)
    tokenizer = require(pipeline, "tokenizer", "text_encoder")
    text_encoder = TextEncoder(require(pipeline, "text_encoder", "text_encoder")).eval()
    tokens = tokenize(tokenizer, [prompt] * batch_size)
    ids, mask = tokens.input_ids, tokens.attention_mask

    rewrites: list[str] = []
    if name == "text_encoder":
        module, source, inputs, output_names = text_encoder, pipeline.text_encoder, {"input_ids": ids, "attention_mask": mask}, ["text_embeddings"]
        if source.config._attn_implementation == "eager":
            rewrites = [f"{type(source).__name__} attention masks: built by comparisons in the wrapper, not by transformers (new_ones)"]
    elif name == "denoiser":
        transformer = require(pipeline, "transformer", "denoiser")
        latent_channels = transformer.config.in_channels
        with torch.no_grad():
            states = text_encoder(ids, mask)
        states, selected_mask = (torch.from_numpy(x) for x in select(states.numpy(), mask.numpy(), instruction=True))
        size = spatial_size(transformer.config.sample_size)
        sample = torch.randn((batch_size, latent_channels, *size), generator=generator)
        if timestep is None:
            timestep = pipeline.scheduler.config.num_train_timesteps // 2
        timesteps = torch.full((batch_size,), float(timestep), dtype=torch.float32)
        module, source = Denoiser(transformer, latent_channels).eval(), transformer
        rewrites = use_plain_attention(transformer) + exportable_linear_attention(transformer)
        inputs = {"hidden_states": sample, "timestep": timesteps, "encoder_hidden_states": states, "encoder_attention_mask": selected_mask}
        output_names = ["noise_pred"]
    else:
        vae = require(pipeline, "vae", "vae_decoder")
        transformer = getattr(pipeline, "transformer", None)
        size = spatial_size(transformer.config.sample_size) if transformer is not None else (vae.config.sample_size,) * 2
        latents = torch.randn((batch_size, vae.config.latent_channels, *size), generator=generator)
        module, source, inputs, output_names = vae_decoder_module(vae), vae, {"latents": latents}, ["image"]
        rewrites = exportable_multiscale_attention(vae)

    return traced_component(name, module, inputs, output_names, spec, source, rewrites)


def calibration_inputs(pipeline: Any, name: str, batch_size: int = 1, count: int = len(CALIBRATION_PROMPTS)) -> list[dict[str, Any]]:
    """``count`` input sets for ``name``: other prompts, seeds and timesteps than the reference."""
    steps = pipeline.scheduler.config.num_train_timesteps
    sets = []
    for index in range(count):
        prompt = CALIBRATION_PROMPTS[index % len(CALIBRATION_PROMPTS)]
        part = build_component(pipeline, name, batch_size, prompt=prompt, seed=1000 + index, timestep=(index + 0.5) * steps / count)
        sets.append(part.reference_inputs)
    return sets


class SanaFamily:
    name = "sana"
    description = "Sana (SanaPipeline: linear-attention transformer, Gemma-2 text encoder, AutoencoderDC)"
    pipeline_classes = PIPELINE_CLASSES
    components = COMPONENTS
    encoders = (ENCODER,)
    guidance_modes = ("classifier-free",)
    denoiser_output = "noise_pred"
    decoder_output = "image"

    def claims(self, folder: Path, index: dict[str, Any]) -> bool:
        if index.get("_class_name") not in self.pipeline_classes:
            return False
        missing = [name for name in _REQUIRED if not (isinstance(index.get(name), list) and index[name][:1] != [None])]
        if missing:
            raise EdgegenError(f"{folder} (SanaPipeline) lacks {', '.join(missing)}: a Sana pipeline needs all of {', '.join(_REQUIRED)}")
        if (Path(folder) / "transformer" / "config.json").is_file() and read_config(folder, "transformer").get("guidance_embeds"):
            raise EdgegenError(f"{folder}: a Sana transformer with guidance_embeds (Sana-Sprint) is not supported yet")
        return True

    build_component = staticmethod(build_component)
    calibration_inputs = staticmethod(calibration_inputs)

    def latent_shape(self, folder: Path) -> tuple[int, ...]:
        transformer = read_config(folder, "transformer")
        return (1, transformer["in_channels"], *spatial_size(transformer["sample_size"]))

    def prepare_timesteps(self, scheduler: Any, steps: int, latent_shape: tuple[int, ...]) -> None:
        scheduler.set_timesteps(steps)

    def encode_prompt(self, tokenizers: dict[str, Any], run: Any, prompt: str) -> dict[str, np.ndarray]:
        instruction = bool(prompt)  # the pipeline encodes its negative prompt without the instruction
        tokens = tokenize(tokenizers[ENCODER.tokenizer_subfolder], [prompt], tensors="np", instruction=instruction)
        ids, mask = tokens.input_ids.astype(np.int64), tokens.attention_mask.astype(np.int64)
        states = run(ENCODER.component, {"input_ids": ids, "attention_mask": mask})["text_embeddings"]
        states, mask = select(states, mask, instruction)
        return {"encoder_hidden_states": states, "encoder_attention_mask": mask}

    def denoiser_inputs(self, latents: np.ndarray, timestep: float, conditioning: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            "hidden_states": latents.astype(np.float32),
            "timestep": np.full((latents.shape[0],), timestep, dtype=np.float32),
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "encoder_attention_mask": conditioning["encoder_attention_mask"],
        }

    def decoder_inputs(self, latents: np.ndarray) -> dict[str, np.ndarray]:
        return {"latents": latents.astype(np.float32)}

    def fingerprint(self, folder: Path) -> str:
        digest = hashlib.sha256(tokenizer_digest(folder, ENCODER.tokenizer_subfolder).encode())
        transformer, vae = read_config(folder, "transformer"), read_config(folder, "vae")
        configs = {
            "transformer": {key: transformer.get(key) for key in ("in_channels", "sample_size", "caption_channels", "timestep_scale")},
            "vae": {key: vae.get(key) for key in ("latent_channels", "scaling_factor")},
        }
        digest.update(json.dumps(configs, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def make_student(
        self, teacher_dir: Path, output_dir: Path, preset: str, force: bool = False, seed: int = 0, attention_heads: int | None = None
    ) -> Path:
        return no_student(self)


FAMILY = SanaFamily()
