"""Stable Diffusion 1.x/2.x: a UNet2DConditionModel denoiser, one CLIP text encoder, an AutoencoderKL.

Components: ``text_encoder`` (token ids -> embeddings), ``denoiser`` (latents, timestep,
embeddings -> noise prediction) and ``vae_decoder`` (latents -> image). Shapes are static and
taken from the pipeline's configs; the timestep is float32 because NPUs and converters handle
it better than int64. Reference inputs are realistic (a tokenized prompt, that prompt's
embeddings) so they can double as calibration data.

Refused, before anything is written: UNets with added conditioning (SDXL's text-time
embeddings, class embeddings) or a guidance-embedding input (LCM's ``time_cond_proj_dim``, which
the latent-consistency family claims first): exporting them as plain SD would drop an input.
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
    latent_space_config,
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
    ComponentSpec("denoiser", "unet", "denoiser"),
    ComponentSpec("vae_decoder", "vae", "decoder"),
)
COMPONENT_NAMES = tuple(spec.name for spec in COMPONENTS)
ENCODER = ConditioningEncoder(component="text_encoder", tokenizer_subfolder="tokenizer")
PIPELINE_CLASSES = ("StableDiffusionPipeline",)
# UNet config keys that add conditioning inputs this family's denoiser does not declare.
_ADDED_CONDITIONING = ("addition_embed_type", "class_embed_type", "time_cond_proj_dim")


def _wrappers():
    import torch

    class Denoiser(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    return Denoiser


def tokenize(pipeline: Any, prompts: list[str]) -> Any:
    return tokenize_prompts(pipeline.tokenizer, prompts).input_ids


def _check_unet(config: Any, where: str) -> None:
    get = config.get if isinstance(config, dict) else (lambda key: getattr(config, key, None))
    added = [key for key in _ADDED_CONDITIONING if get(key)]
    if added:
        raise EdgegenError(
            f"{where}: a UNet with {', '.join(f'{key}={get(key)!r}' for key in added)} takes inputs a "
            "Stable Diffusion 1.x/2.x denoiser does not (these UNets belong to the SDXL or LCM families; class-conditioned UNets are not supported)"
        )


def build_component(
    pipeline: Any,
    name: str,
    batch_size: int = 1,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    timestep: float | None = None,
) -> Component:
    """Wrap one part of ``pipeline`` as a static-shape module with reference inputs."""
    return build_sd_component(pipeline, name, batch_size, prompt, seed, timestep)


def build_sd_component(
    pipeline: Any,
    name: str,
    batch_size: int,
    prompt: str,
    seed: int,
    timestep: float | None,
    check_unet: Any = None,
    denoiser_wrapper: Any = None,
    extra_denoiser_inputs: Any = None,
) -> Component:
    """The SD component builder, with the denoiser's wrapper and added inputs replaceable: UNet
    variants (LCM's guidance embedding) differ from SD only there."""
    import torch

    spec = component_spec(FAMILY, name)
    Denoiser = denoiser_wrapper or _wrappers()
    check_unet = check_unet or _check_unet
    generator = torch.Generator().manual_seed(seed)
    text_model = require(pipeline, "text_encoder", "text_encoder")
    require(pipeline, "tokenizer", "text_encoder")
    input_ids = tokenize(pipeline, [prompt] * batch_size)
    text_encoder = text_encoder_wrapper(text_model, ENCODER)

    if name == "text_encoder":
        module, rewrites, source = text_encoder, [], text_model
        inputs = {"input_ids": input_ids}
        output_names = ["text_embeddings"]
    elif name == "denoiser":
        unet = require(pipeline, "unet", "denoiser")
        check_unet(unet.config, type(pipeline).__name__)
        with torch.no_grad():
            embeddings = text_encoder(input_ids)
        size = spatial_size(unet.config.sample_size)
        sample = torch.randn((batch_size, unet.config.in_channels, *size), generator=generator)
        if timestep is None:
            timestep = pipeline.scheduler.config.num_train_timesteps // 2
        timesteps = torch.full((batch_size,), float(timestep), dtype=torch.float32)
        module, rewrites, source = Denoiser(unet).eval(), use_plain_attention(unet), unet
        inputs = {"sample": sample, "timestep": timesteps, "encoder_hidden_states": embeddings}
        if extra_denoiser_inputs is not None:
            inputs.update(extra_denoiser_inputs(unet, batch_size))
        output_names = ["noise_pred"]
    else:
        vae = require(pipeline, "vae", "vae_decoder")
        unet = getattr(pipeline, "unet", None)
        if unet is not None:
            size = spatial_size(unet.config.sample_size)
        else:
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
            size = (vae.config.sample_size // factor,) * 2
        latents = torch.randn((batch_size, vae.config.latent_channels, *size), generator=generator)
        module = vae_decoder_module(vae)
        rewrites, source = use_plain_attention(vae), vae
        inputs = {"latents": latents}
        output_names = ["image"]

    return traced_component(name, module, inputs, output_names, spec, source, rewrites)


def calibration_inputs(
    pipeline: Any, name: str, batch_size: int = 1, count: int = len(CALIBRATION_PROMPTS), build: Any = None
) -> list[dict[str, Any]]:
    """``count`` input sets for ``name``: other prompts, seeds and timesteps than the reference."""
    build = build or build_component
    steps = pipeline.scheduler.config.num_train_timesteps
    sets = []
    for index in range(count):
        prompt = CALIBRATION_PROMPTS[index % len(CALIBRATION_PROMPTS)]
        timestep = (index + 0.5) * steps / count
        part = build(pipeline, name, batch_size, prompt=prompt, seed=1000 + index, timestep=timestep)
        sets.append(part.reference_inputs)
    return sets


def pipeline_components(pipeline: Any) -> list[str]:
    """The component names this loaded pipeline can provide."""
    names = []
    if getattr(pipeline, "text_encoder", None) is not None and getattr(pipeline, "tokenizer", None) is not None:
        names.append("text_encoder")
    if getattr(pipeline, "unet", None) is not None:
        names.append("denoiser")
    if getattr(pipeline, "vae", None) is not None:
        names.append("vae_decoder")
    return names


class StableDiffusionFamily:
    name = "stable-diffusion"
    description = "Stable Diffusion 1.x/2.x (StableDiffusionPipeline: UNet, one CLIP text encoder, AutoencoderKL)"
    pipeline_classes = PIPELINE_CLASSES
    components = COMPONENTS
    encoders = (ENCODER,)
    guidance_modes = ("classifier-free",)
    denoiser_output = "noise_pred"
    decoder_output = "image"

    def claims(self, folder: Path, index: dict[str, Any]) -> bool:
        if index.get("_class_name") not in self.pipeline_classes:
            return False
        unet_config = Path(folder) / "unet" / "config.json"
        if unet_config.is_file():
            _check_unet(read_config(folder, "unet"), f"{folder} ({index['_class_name']})")
        return True

    build_component = staticmethod(build_component)
    calibration_inputs = staticmethod(calibration_inputs)

    def latent_shape(self, folder: Path) -> tuple[int, ...]:
        unet = read_config(folder, "unet")
        return (1, unet["in_channels"], *spatial_size(unet["sample_size"]))

    def encode_prompt(self, tokenizers: dict[str, Any], run: Any, prompt: str) -> dict[str, np.ndarray]:
        ids = tokenize_prompts(tokenizers[ENCODER.tokenizer_subfolder], [prompt], ENCODER.max_length, tensors="np").input_ids
        return {"encoder_hidden_states": run(ENCODER.component, {"input_ids": ids.astype(np.int64)})["text_embeddings"]}

    def prepare_timesteps(self, scheduler: Any, steps: int, latent_shape: tuple[int, ...]) -> None:
        scheduler.set_timesteps(steps)

    def denoiser_inputs(self, latents: np.ndarray, timestep: float, conditioning: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = np.full((latents.shape[0],), timestep, dtype=np.float32)
        return {"sample": latents, "timestep": t, "encoder_hidden_states": conditioning["encoder_hidden_states"]}

    def decoder_inputs(self, latents: np.ndarray) -> dict[str, np.ndarray]:
        return {"latents": latents.astype(np.float32)}

    def fingerprint(self, folder: Path) -> str:
        digest = hashlib.sha256(tokenizer_digest(folder, ENCODER.tokenizer_subfolder).encode())
        unet, vae = read_config(folder, "unet"), latent_space_config(folder)
        configs = {
            "unet": {key: unet.get(key) for key in ("in_channels", "sample_size", "cross_attention_dim")},
            "vae": {key: vae.get(key) for key in ("latent_channels", "scaling_factor", "shift_factor")},
        }
        digest.update(json.dumps(configs, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def make_student(
        self, teacher_dir: Path, output_dir: Path, preset: str, force: bool = False, seed: int = 0, attention_heads: int | None = None
    ) -> Path:
        from edgegen.models.student import make_student

        return make_student(teacher_dir, preset, output_dir, force=force, seed=seed, attention_heads=attention_heads)


FAMILY = StableDiffusionFamily()
