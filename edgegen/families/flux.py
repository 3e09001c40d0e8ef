"""Flux (FLUX.1 dev / schnell): a FluxTransformer2DModel on packed latents, CLIP pooled + T5, flow matching.

Components: ``text_encoder`` (CLIP: token ids -> the pooled embedding only, as the pipeline
uses it), ``text_encoder_2`` (T5: token ids -> last hidden states, no attention mask, as the
pipeline calls it), ``denoiser`` (packed latents, timestep, [guidance], pooled and per-token
conditioning -> the flow prediction) and ``vae_decoder`` (latents -> image, unpacked by the
family, the VAE's scaling and shift folded in).

The latents the sampling loop carries are Flux's packed ones, [B, (H/2)(W/2), 4C]; the text and
image position ids are fixed by the static shapes, so the denoiser wrapper holds them as
constants (exactly ``_prepare_latent_image_ids`` and zeros for the text) instead of asking the
app for them. The timestep the transformer takes is the scheduler's divided by 1000, as the
pipeline passes it. Guidance-distilled checkpoints (dev: ``guidance_embeds``) take the scale as
a denoiser input ("embedded" guidance); schnell takes none. The image size is the VAE config's
``sample_size`` (1024 for FLUX.1, the pipeline's default).
"""

from __future__ import annotations

import hashlib
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
    tokenizer_digest,
    traced_component,
    vae_decoder_module,
)
from edgegen.families.base import tokenize as tokenize_prompts
from edgegen.families.prompts import CALIBRATION_PROMPTS, DEFAULT_PROMPT

PIPELINE_CLASSES = ("FluxPipeline",)
# FluxPipeline's max_sequence_length default; a tokenizer with a shorter limit caps it.
T5_MAX_LENGTH = 512
CLIP_ENCODER = ConditioningEncoder("text_encoder", "tokenizer", pooled_output=True)
T5_ENCODER = ConditioningEncoder("text_encoder_2", "tokenizer_2")
COMPONENTS = (
    ComponentSpec("text_encoder", "text_encoder", "encoder"),
    ComponentSpec("text_encoder_2", "text_encoder_2", "encoder"),
    ComponentSpec("denoiser", "transformer", "denoiser"),
    ComponentSpec("vae_decoder", "vae", "decoder"),
)
_REQUIRED = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
STATIC_ROTARY_REWRITE = "FluxTransformer2DModel: rotary embeddings of the static position ids precomputed (float64 -> float32 constants)"
# FluxPipeline's guidance_scale default, for the reference inputs of guidance-distilled models.
DEFAULT_GUIDANCE_SCALE = 3.5


def vae_scale_factor(vae_config: Any) -> int:
    get = vae_config.get if isinstance(vae_config, dict) else (lambda key: getattr(vae_config, key))
    return 2 ** (len(get("block_out_channels")) - 1)


def latent_grid(vae_config: Any) -> tuple[int, int]:
    """The unpacked latent height and width for the VAE's sample size, as ``prepare_latents`` rounds them."""
    get = vae_config.get if isinstance(vae_config, dict) else (lambda key: getattr(vae_config, key))
    factor = vae_scale_factor(vae_config)
    side = 2 * (int(get("sample_size")) // (factor * 2))
    return side, side


def pack(latents: np.ndarray) -> np.ndarray:
    b, c, h, w = latents.shape
    return latents.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(latents: np.ndarray, height: int, width: int) -> np.ndarray:
    b, _, channels = latents.shape
    return latents.reshape(b, height // 2, width // 2, channels // 4, 2, 2).transpose(0, 3, 1, 4, 2, 5).reshape(b, channels // 4, height, width)


def image_ids(height: int, width: int) -> Any:
    """``FluxPipeline._prepare_latent_image_ids`` for the packed grid."""
    import torch

    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(height // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3)


def _wrappers():
    import torch

    class PooledTextEncoder(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids):
            return self.encoder(input_ids, output_hidden_states=False).pooler_output

    class T5TextEncoder(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids):
            return self.encoder(input_ids, output_hidden_states=False)[0]

    class StaticRotary(torch.nn.Module):
        # FluxPosEmbed computes RoPE in float64 (no mobile converter takes f64 pow/sin/cos); the
        # position ids of a static shape are constants, so their (cos, sin) are computed once here
        # and cast to float32, as apply_rotary_emb uses them with float32 activations anyway.
        def __init__(self, pos_embed, ids):
            super().__init__()
            self.original = pos_embed
            self.ids_shape = tuple(ids.shape)
            with torch.no_grad():
                cos, sin = pos_embed(ids)
            self.register_buffer("cos", cos.to(torch.float32), persistent=False)
            self.register_buffer("sin", sin.to(torch.float32), persistent=False)

        def forward(self, ids):
            if tuple(ids.shape) != self.ids_shape:
                return self.original(ids)
            return self.cos, self.sin

    class Denoiser(torch.nn.Module):
        def __init__(self, transformer, text_length: int, height: int, width: int):
            super().__init__()
            self.transformer = transformer
            self.register_buffer("txt_ids", torch.zeros(text_length, 3), persistent=False)
            self.register_buffer("img_ids", image_ids(height, width), persistent=False)
            original = getattr(transformer.pos_embed, "original", transformer.pos_embed)
            transformer.pos_embed = StaticRotary(original, torch.cat([self.txt_ids, self.img_ids], dim=0))

        def forward(self, hidden_states, timestep, pooled_projections, encoder_hidden_states):
            return self.transformer(
                hidden_states=hidden_states, timestep=timestep, guidance=None, pooled_projections=pooled_projections,
                encoder_hidden_states=encoder_hidden_states, txt_ids=self.txt_ids, img_ids=self.img_ids, return_dict=False,
            )[0]

    class GuidedDenoiser(Denoiser):
        def forward(self, hidden_states, timestep, guidance, pooled_projections, encoder_hidden_states):
            return self.transformer(
                hidden_states=hidden_states, timestep=timestep, guidance=guidance, pooled_projections=pooled_projections,
                encoder_hidden_states=encoder_hidden_states, txt_ids=self.txt_ids, img_ids=self.img_ids, return_dict=False,
            )[0]

    return PooledTextEncoder, T5TextEncoder, Denoiser, GuidedDenoiser


def t5_length(tokenizer: Any) -> int:
    return min(int(tokenizer.model_max_length), T5_MAX_LENGTH)


def build_component(
    pipeline: Any,
    name: str,
    batch_size: int = 1,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    timestep: float | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
) -> Component:
    """Wrap one part of a Flux ``pipeline`` as a static-shape module with reference inputs."""
    import torch

    spec = component_spec(FAMILY, name)
    PooledTextEncoder, T5TextEncoder, Denoiser, GuidedDenoiser = _wrappers()
    generator = torch.Generator().manual_seed(seed)
    clip_tokenizer = require(pipeline, "tokenizer", "text_encoder")
    t5_tokenizer = require(pipeline, "tokenizer_2", "text_encoder_2")
    clip_ids = tokenize_prompts(clip_tokenizer, [prompt] * batch_size).input_ids
    t5_ids = tokenize_prompts(t5_tokenizer, [prompt] * batch_size, t5_length(t5_tokenizer)).input_ids
    clip = PooledTextEncoder(require(pipeline, "text_encoder", "text_encoder")).eval()
    t5 = T5TextEncoder(require(pipeline, "text_encoder_2", "text_encoder_2")).eval()
    vae = require(pipeline, "vae", "vae_decoder")
    height, width = latent_grid(vae.config)

    rewrites: list[str] = []
    if name == "text_encoder":
        module, source, inputs, output_names = clip, pipeline.text_encoder, {"input_ids": clip_ids}, ["pooled_embeddings"]
    elif name == "text_encoder_2":
        module, source, inputs, output_names = t5, pipeline.text_encoder_2, {"input_ids": t5_ids}, ["text_embeddings"]
    elif name == "denoiser":
        transformer = require(pipeline, "transformer", "denoiser")
        with torch.no_grad():
            pooled, states = clip(clip_ids), t5(t5_ids)
        channels = transformer.config.in_channels // 4
        latents = torch.randn((batch_size, channels, height, width), generator=generator)
        packed = torch.from_numpy(pack(latents.numpy()))
        if timestep is None:
            timestep = pipeline.scheduler.config.num_train_timesteps // 2
        timesteps = torch.full((batch_size,), float(timestep) / 1000.0, dtype=torch.float32)
        guided = bool(transformer.config.guidance_embeds)
        module = (GuidedDenoiser if guided else Denoiser)(transformer, states.shape[1], height, width).eval()
        source, rewrites = transformer, [STATIC_ROTARY_REWRITE]
        inputs = {"hidden_states": packed, "timestep": timesteps}
        if guided:
            inputs["guidance"] = torch.full((batch_size,), float(guidance_scale), dtype=torch.float32)
        inputs.update(pooled_projections=pooled, encoder_hidden_states=states)
        output_names = ["noise_pred"]
    else:
        latents = torch.randn((batch_size, vae.config.latent_channels, height, width), generator=generator)
        module, source, inputs, output_names = vae_decoder_module(vae), vae, {"latents": latents}, ["image"]

    return traced_component(name, module, inputs, output_names, spec, source, rewrites)


def calibration_inputs(pipeline: Any, name: str, batch_size: int = 1, count: int = len(CALIBRATION_PROMPTS)) -> list[dict[str, Any]]:
    """``count`` input sets: other prompts, seeds, timesteps across the flow, guidance 1..7."""
    steps = pipeline.scheduler.config.num_train_timesteps
    sets = []
    for index in range(count):
        prompt = CALIBRATION_PROMPTS[index % len(CALIBRATION_PROMPTS)]
        part = build_component(
            pipeline, name, batch_size, prompt=prompt, seed=1000 + index,
            timestep=(index + 0.5) * steps / count, guidance_scale=1.0 + 6.0 * index / max(count - 1, 1),
        )
        sets.append(part.reference_inputs)
    return sets


def _scheduler_shift(config: Any, image_seq_len: int) -> float:
    """FluxPipeline's ``calculate_shift``: mu for the resolution-dependent timestep shift."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * slope + (base_shift - slope * base_len)


class FluxFamily:
    name = "flux"
    description = "Flux (FluxPipeline: FLUX.1 transformer on packed latents, CLIP pooled + T5, flow matching)"
    pipeline_classes = PIPELINE_CLASSES
    components = COMPONENTS
    encoders = (CLIP_ENCODER, T5_ENCODER)
    denoiser_output = "noise_pred"
    decoder_output = "image"

    def __init__(self, guidance_modes: tuple[str, ...] = ("embedded",), vae_config: dict[str, Any] | None = None):
        self.guidance_modes = guidance_modes
        self.vae_config = vae_config or {}

    def claims(self, folder: Path, index: dict[str, Any]) -> bool:
        if index.get("_class_name") not in self.pipeline_classes:
            return False
        missing = [name for name in _REQUIRED if not (isinstance(index.get(name), list) and index[name][:1] != [None])]
        if missing:
            raise EdgegenError(f"{folder} (FluxPipeline) lacks {', '.join(missing)}: a Flux pipeline needs all of {', '.join(_REQUIRED)}")
        return True

    def for_folder(self, folder: Path, index: dict[str, Any]) -> FluxFamily:
        """dev (guidance_embeds) takes an embedded guidance scale; schnell takes none."""
        transformer = read_config(folder, "transformer")
        return FluxFamily(("embedded",) if transformer.get("guidance_embeds") else (), read_config(folder, "vae"))

    build_component = staticmethod(build_component)
    calibration_inputs = staticmethod(calibration_inputs)

    def _grid(self) -> tuple[int, int]:
        if not self.vae_config:
            raise EdgegenError("the Flux family needs its folder: use edgegen.families.family_of(folder)")
        return latent_grid(self.vae_config)

    def latent_shape(self, folder: Path) -> tuple[int, ...]:
        transformer, height, width = read_config(folder, "transformer"), *latent_grid(read_config(folder, "vae"))
        return (1, (height // 2) * (width // 2), transformer["in_channels"])

    def prepare_timesteps(self, scheduler: Any, steps: int, latent_shape: tuple[int, ...]) -> None:
        sigmas = np.linspace(1.0, 1 / steps, steps)
        if getattr(scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        mu = _scheduler_shift(scheduler.config, latent_shape[1])
        scheduler.set_timesteps(sigmas=sigmas, mu=mu) if sigmas is not None else scheduler.set_timesteps(steps, mu=mu)

    def encode_prompt(self, tokenizers: dict[str, Any], run: Any, prompt: str) -> dict[str, np.ndarray]:
        clip_ids = tokenize_prompts(tokenizers["tokenizer"], [prompt], tensors="np").input_ids.astype(np.int64)
        t5_tokenizer = tokenizers["tokenizer_2"]
        t5_ids = tokenize_prompts(t5_tokenizer, [prompt], t5_length(t5_tokenizer), tensors="np").input_ids.astype(np.int64)
        return {
            "pooled_projections": run("text_encoder", {"input_ids": clip_ids})["pooled_embeddings"],
            "encoder_hidden_states": run("text_encoder_2", {"input_ids": t5_ids})["text_embeddings"],
        }

    def denoiser_inputs(self, latents: np.ndarray, timestep: float, conditioning: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = latents.shape[0]
        inputs = {"hidden_states": latents.astype(np.float32), "timestep": np.full((batch,), timestep / 1000.0, dtype=np.float32)}
        if self.guidance_modes:
            scale = conditioning.get("guidance_scale")
            inputs["guidance"] = scale if scale is not None else np.full((batch,), DEFAULT_GUIDANCE_SCALE, dtype=np.float32)
        inputs["pooled_projections"] = conditioning["pooled_projections"]
        inputs["encoder_hidden_states"] = conditioning["encoder_hidden_states"]
        return inputs

    def decoder_inputs(self, latents: np.ndarray) -> dict[str, np.ndarray]:
        height, width = self._grid()
        return {"latents": unpack(latents.astype(np.float32), height, width)}

    def fingerprint(self, folder: Path) -> str:
        digest = hashlib.sha256()
        for encoder in self.encoders:
            digest.update(tokenizer_digest(folder, encoder.tokenizer_subfolder).encode())
        transformer, vae = read_config(folder, "transformer"), read_config(folder, "vae")
        configs = {
            "transformer": {key: transformer.get(key) for key in ("in_channels", "joint_attention_dim", "pooled_projection_dim", "guidance_embeds")},
            "vae": {key: vae.get(key) for key in ("latent_channels", "scaling_factor", "shift_factor", "sample_size", "block_out_channels")},
        }
        digest.update(json.dumps(configs, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def make_student(
        self, teacher_dir: Path, output_dir: Path, preset: str, force: bool = False, seed: int = 0, attention_heads: int | None = None
    ) -> Path:
        return no_student(self)


FAMILY = FluxFamily()
