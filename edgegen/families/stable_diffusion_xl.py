"""Stable Diffusion XL: StableDiffusionXLPipeline (SDXL-Turbo and -Lightning are the same pipeline
with other schedulers and configs): two CLIP text encoders, a UNet with added conditioning, an
AutoencoderKL.

Components: ``text_encoder`` (CLIPTextModel: token ids -> its penultimate hidden states),
``text_encoder_2`` (CLIPTextModelWithProjection: token ids -> its penultimate hidden states and
the projected pooled embedding), ``denoiser`` (latents, timestep, the two encoders' states
concatenated on the feature axis, the pooled ``text_embeds`` and the micro-conditioning
``time_ids`` -> noise prediction) and ``vae_decoder`` (raw latents -> image, with the VAE's
scaling, shift or latents mean/std folded in), as the pipeline's own ``encode_prompt``,
``_get_add_time_ids`` and decode compute them.

``time_ids`` (original size, crop top-left, target size) are fixed by the folder: the UNet's
sample size times the VAE factor, as the pipeline computes them for its default size. With
``force_zeros_for_empty_prompt`` (the pipeline's default) the unconditional conditioning is
zeros, not the encoded empty prompt; so a prompt that is itself empty gets zeros too.

Refused, before anything is written: a folder without ``text_encoder`` (the SDXL refiner's
layout, which conditions on an aesthetic score: StableDiffusionXLImg2ImgPipeline) and UNets
whose added conditioning is not SDXL's text-time pair (a guidance embedding, class embeddings).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
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
    text_encoder_wrapper,
    tokenizer_digest,
    traced_component,
    use_plain_attention,
    vae_decoder_module,
)
from edgegen.families.base import tokenize as tokenize_prompts
from edgegen.families.prompts import CALIBRATION_PROMPTS, DEFAULT_PROMPT

COMPONENTS = (
    ComponentSpec("text_encoder", "text_encoder", "encoder"),
    ComponentSpec("text_encoder_2", "text_encoder_2", "encoder"),
    ComponentSpec("denoiser", "unet", "denoiser"),
    ComponentSpec("vae_decoder", "vae", "decoder"),
)
ENCODER = ConditioningEncoder(component="text_encoder", tokenizer_subfolder="tokenizer", hidden_layer=-2)
ENCODER_2 = ConditioningEncoder(component="text_encoder_2", tokenizer_subfolder="tokenizer_2", hidden_layer=-2, pooled_output=True)
PIPELINE_CLASSES = ("StableDiffusionXLPipeline",)
# original size (2), crop top-left (2), target size (2)
TIME_ID_COUNT = 6
# UNet config keys that add conditioning inputs beyond SDXL's text_embeds and time_ids.
_OTHER_CONDITIONING = ("class_embed_type", "time_cond_proj_dim", "encoder_hid_dim_type")


def _config_get(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def _check_unet(unet: Any, projection_dim: int | None, where: str) -> None:
    """The UNet takes exactly SDXL's added conditioning, sized for text_encoder_2's projection."""
    added = _config_get(unet, "addition_embed_type")
    if added != "text_time":
        raise EdgegenError(f"{where}: a UNet with addition_embed_type={added!r} is not an SDXL denoiser (it takes 'text_time')")
    others = [key for key in _OTHER_CONDITIONING if _config_get(unet, key)]
    if others:
        raise EdgegenError(
            f"{where}: a UNet with {', '.join(f'{key}={_config_get(unet, key)!r}' for key in others)} takes inputs "
            "this SDXL denoiser does not declare (LCM-SDXL guidance embeddings and class embeddings are not supported yet)"
        )
    if projection_dim is not None:
        passed = _config_get(unet, "addition_time_embed_dim") * TIME_ID_COUNT + projection_dim
        expected = _config_get(unet, "projection_class_embeddings_input_dim")
        if passed != expected:
            raise EdgegenError(
                f"{where}: the UNet's added embedding takes {expected} features but {TIME_ID_COUNT} time ids and "
                f"text_encoder_2's projection_dim {projection_dim} make {passed}"
            )


def time_ids(unet_sample_size: Any, vae_scale_factor: int) -> np.ndarray:
    """[1, 6] float32: (height, width, 0, 0, height, width) of the pipeline's default image size."""
    height, width = (side * vae_scale_factor for side in spatial_size(unet_sample_size))
    return np.array([[height, width, 0, 0, height, width]], dtype=np.float32)


def _vae_scale_factor(vae_config: Any) -> int:
    return 2 ** (len(_config_get(vae_config, "block_out_channels")) - 1)


def standardized_decoder_module(vae: Any) -> Any:
    """``vae_decoder_module``, or, for a VAE with latents mean and std (Playground v2.5 style),
    the pipeline's ``latents * std / scaling + mean`` before decoding."""
    import torch

    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return vae_decoder_module(vae)

    class StandardizedVaeDecoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae
            self.register_buffer("latents_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("latents_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
            self.scaling_factor = float(vae.config.scaling_factor)

        def forward(self, latents):
            latents = latents * self.latents_std / self.scaling_factor + self.latents_mean
            return self.vae.decode(latents, return_dict=False)[0]

    return StandardizedVaeDecoder(vae).eval()


def _denoiser_module(unet: Any) -> Any:
    import torch

    class Denoiser(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
            added = {"text_embeds": text_embeds, "time_ids": time_ids}
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]

    return Denoiser(unet).eval()


def _pipeline_time_ids(pipeline: Any) -> Any:
    """The pipeline's own ``_get_add_time_ids`` for its default size (it checks the UNet's sizes)."""
    import torch

    unet, encoder_2 = pipeline.unet, pipeline.text_encoder_2
    size = tuple(side * pipeline.vae_scale_factor for side in spatial_size(unet.config.sample_size))
    _check_unet(unet.config, encoder_2.config.projection_dim, type(pipeline).__name__)
    return pipeline._get_add_time_ids(size, (0, 0), size, dtype=torch.float32, text_encoder_projection_dim=encoder_2.config.projection_dim)


def _conditioning(pipeline: Any, prompt: str, batch_size: int) -> dict[str, Any]:
    """encoder_hidden_states and text_embeds as the pipeline's encode_prompt gives them; the empty
    prompt is the unconditional conditioning (zeros under force_zeros_for_empty_prompt)."""
    import torch

    encoders = [text_encoder_wrapper(require(pipeline, spec.component, spec.component), spec) for spec in (ENCODER, ENCODER_2)]
    ids = [tokenize_prompts(require(pipeline, spec.tokenizer_subfolder, spec.component), [prompt] * batch_size).input_ids for spec in (ENCODER, ENCODER_2)]
    with torch.no_grad():
        states = encoders[0](ids[0])
        states_2, pooled = encoders[1](ids[1])
    hidden = torch.cat([states, states_2], dim=-1)
    if prompt == "" and pipeline.config.force_zeros_for_empty_prompt:
        hidden, pooled = torch.zeros_like(hidden), torch.zeros_like(pooled)
    return {"encoder_hidden_states": hidden, "text_embeds": pooled}


def build_component(
    pipeline: Any,
    name: str,
    batch_size: int = 1,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    timestep: float | None = None,
) -> Component:
    """Wrap one part of ``pipeline`` as a static-shape module with reference inputs."""
    import torch

    spec = component_spec(FAMILY, name)
    generator = torch.Generator().manual_seed(seed)
    if name in ("text_encoder", "text_encoder_2"):
        encoder = ENCODER if name == "text_encoder" else ENCODER_2
        source = require(pipeline, name, name)
        tokenizer = require(pipeline, encoder.tokenizer_subfolder, name)
        module, rewrites = text_encoder_wrapper(source, encoder), []
        inputs = {"input_ids": tokenize_prompts(tokenizer, [prompt] * batch_size, encoder.max_length).input_ids}
        output_names = ["text_embeddings", "pooled_text_embeddings"] if encoder.pooled_output else ["text_embeddings"]
    elif name == "denoiser":
        unet = require(pipeline, "unet", "denoiser")
        conditioning = _conditioning(pipeline, prompt, batch_size)
        size = spatial_size(unet.config.sample_size)
        sample = torch.randn((batch_size, unet.config.in_channels, *size), generator=generator)
        if timestep is None:
            timestep = pipeline.scheduler.config.num_train_timesteps // 2
        inputs = {
            "sample": sample,
            "timestep": torch.full((batch_size,), float(timestep), dtype=torch.float32),
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "text_embeds": conditioning["text_embeds"],
            "time_ids": _pipeline_time_ids(pipeline).repeat(batch_size, 1),
        }
        module, rewrites, source = _denoiser_module(unet), use_plain_attention(unet), unet
        output_names = ["noise_pred"]
    else:
        vae = require(pipeline, "vae", "vae_decoder")
        unet = getattr(pipeline, "unet", None)
        if unet is not None:
            size = spatial_size(unet.config.sample_size)
        else:
            size = (vae.config.sample_size // _vae_scale_factor(vae.config),) * 2
        inputs = {"latents": torch.randn((batch_size, vae.config.latent_channels, *size), generator=generator)}
        module, rewrites, source = standardized_decoder_module(vae), use_plain_attention(vae), vae
        output_names = ["image"]

    return traced_component(name, module, inputs, output_names, spec, source, rewrites)


def calibration_inputs(pipeline: Any, name: str, batch_size: int = 1, count: int = len(CALIBRATION_PROMPTS)) -> list[dict[str, Any]]:
    """``count`` input sets for ``name``: other prompts, seeds and timesteps than the reference; with
    classifier-free guidance half the denoiser's calls are unconditional, so every other
    denoiser set takes the empty prompt's conditioning."""
    steps = pipeline.scheduler.config.num_train_timesteps
    sets = []
    for index in range(count):
        prompt = CALIBRATION_PROMPTS[index % len(CALIBRATION_PROMPTS)]
        if name == "denoiser" and index % 2:
            prompt = ""
        timestep = (index + 0.5) * steps / count
        part = build_component(pipeline, name, batch_size, prompt=prompt, seed=1000 + index, timestep=timestep)
        sets.append(part.reference_inputs)
    return sets


@dataclass(frozen=True)
class FolderConditioning:
    """What a folder's configs fix for every prompt."""

    time_ids: np.ndarray  # [1, 6] float32
    zeros_for_empty_prompt: bool
    hidden_size: int  # the concatenated encoder_hidden_states' features
    pooled_size: int  # text_encoder_2's projection


def folder_conditioning(folder: Path, index: dict[str, Any]) -> FolderConditioning:
    unet, vae = read_config(folder, "unet"), read_config(folder, "vae")
    encoder, encoder_2 = read_config(folder, "text_encoder"), read_config(folder, "text_encoder_2")
    _check_unet(unet, encoder_2.get("projection_dim"), str(folder))
    return FolderConditioning(
        time_ids=time_ids(unet["sample_size"], _vae_scale_factor(vae)),
        zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)),
        hidden_size=int(encoder["hidden_size"]) + int(encoder_2["hidden_size"]),
        pooled_size=int(encoder_2["projection_dim"]),
    )


class StableDiffusionXLFamily:
    """The registry's instance judges folders; ``family_of`` gives ``for_folder``'s instance, which
    knows the folder's time ids and empty-prompt rule."""

    name = "stable-diffusion-xl"
    description = "Stable Diffusion XL (StableDiffusionXLPipeline: UNet with text-time conditioning, two CLIP text encoders, AutoencoderKL)"
    pipeline_classes = PIPELINE_CLASSES
    components = COMPONENTS
    encoders = (ENCODER, ENCODER_2)
    guidance_modes = ("classifier-free",)
    denoiser_output = "noise_pred"
    decoder_output = "image"

    def __init__(self, conditioning: FolderConditioning | None = None):
        self._conditioning = conditioning

    def claims(self, folder: Path, index: dict[str, Any]) -> bool:
        if index.get("_class_name") not in self.pipeline_classes:
            return False
        where = f"{folder} ({index['_class_name']})"
        if index.get("text_encoder") in (None, [None, None]) or index.get("requires_aesthetics_score"):
            raise EdgegenError(
                f"{where}: no text_encoder (text_encoder_2 only) is the SDXL refiner's layout, which "
                "StableDiffusionXLImg2ImgPipeline runs with an aesthetic score; refiners are not supported"
            )
        if (Path(folder) / "unet" / "config.json").is_file():
            projection = Path(folder) / "text_encoder_2" / "config.json"
            projection_dim = read_config(folder, "text_encoder_2").get("projection_dim") if projection.is_file() else None
            _check_unet(read_config(folder, "unet"), projection_dim, where)
        return True

    def for_folder(self, folder: Path, index: dict[str, Any]) -> StableDiffusionXLFamily:
        return StableDiffusionXLFamily(folder_conditioning(folder, index))

    build_component = staticmethod(build_component)
    calibration_inputs = staticmethod(calibration_inputs)

    def latent_shape(self, folder: Path) -> tuple[int, ...]:
        unet = read_config(folder, "unet")
        return (1, unet["in_channels"], *spatial_size(unet["sample_size"]))

    def _folder(self) -> FolderConditioning:
        if self._conditioning is None:
            raise EdgegenError("the SDXL family needs its folder's time ids: take it from family_of(folder)")
        return self._conditioning

    def encode_prompt(self, tokenizers: dict[str, Any], run: Any, prompt: str) -> dict[str, np.ndarray]:
        folder = self._folder()
        if prompt == "" and folder.zeros_for_empty_prompt:
            length = tokenizers[ENCODER.tokenizer_subfolder].model_max_length
            return {
                "encoder_hidden_states": np.zeros((1, length, folder.hidden_size), dtype=np.float32),
                "text_embeds": np.zeros((1, folder.pooled_size), dtype=np.float32),
            }
        outputs = []
        for encoder in self.encoders:
            ids = tokenize_prompts(tokenizers[encoder.tokenizer_subfolder], [prompt], encoder.max_length, tensors="np").input_ids
            outputs.append(run(encoder.component, {"input_ids": ids.astype(np.int64)}))
        return {
            "encoder_hidden_states": np.concatenate([output["text_embeddings"] for output in outputs], axis=-1),
            "text_embeds": outputs[-1]["pooled_text_embeddings"],
        }

    def prepare_timesteps(self, scheduler: Any, steps: int, latent_shape: tuple[int, ...]) -> None:
        scheduler.set_timesteps(steps)

    def denoiser_inputs(self, latents: np.ndarray, timestep: float, conditioning: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = latents.shape[0]
        return {
            "sample": latents,
            "timestep": np.full((batch,), timestep, dtype=np.float32),
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "text_embeds": conditioning["text_embeds"],
            "time_ids": np.repeat(self._folder().time_ids, batch, axis=0),
        }

    def decoder_inputs(self, latents: np.ndarray) -> dict[str, np.ndarray]:
        return {"latents": latents.astype(np.float32)}

    def fingerprint(self, folder: Path) -> str:
        digest = hashlib.sha256()
        for encoder in self.encoders:
            digest.update(tokenizer_digest(folder, encoder.tokenizer_subfolder).encode())
        unet, vae = read_config(folder, "unet"), read_config(folder, "vae")
        configs = {
            "unet": {key: unet.get(key) for key in ("in_channels", "sample_size", "cross_attention_dim", "addition_time_embed_dim")},
            "vae": {key: vae.get(key) for key in ("latent_channels", "scaling_factor", "shift_factor", "latents_mean", "latents_std")},
            "vae_scale_factor": _vae_scale_factor(vae),
        }
        digest.update(json.dumps(configs, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def make_student(
        self, teacher_dir: Path, output_dir: Path, preset: str, force: bool = False, seed: int = 0, attention_heads: int | None = None
    ) -> Path:
        return no_student(self)


FAMILY = StableDiffusionXLFamily()
