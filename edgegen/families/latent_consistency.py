"""Latent Consistency Models: a Stable Diffusion UNet distilled to take the guidance scale as an input.

LatentConsistencyModelPipeline folders, and StableDiffusionPipeline folders whose UNet has a
``time_cond_proj_dim`` (an LCM-distilled UNet, or SD with the LCM LoRA fused). The text encoder
and the decoder are Stable Diffusion's; the denoiser declares a fourth input, ``guidance_scale`` ([B] float32), and computes the
UNet's ``timestep_cond`` from it in the graph as the pipeline does
(``get_guidance_scale_embedding(w - 1)``).
Guidance is embedded: one denoiser call per step, no classifier-free pass, as diffusers does for
these UNets. LCMScheduler draws noise between steps; the sampling loop hands it a seeded generator,
so a run is reproducible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.families import stable_diffusion
from edgegen.families.base import Component, read_config
from edgegen.families.prompts import CALIBRATION_PROMPTS, DEFAULT_PROMPT

PIPELINE_CLASSES = ("LatentConsistencyModelPipeline", "StableDiffusionPipeline")
# LCM's pipelines default to 8.5; the reference inputs use it, calibration spreads around it.
DEFAULT_GUIDANCE_SCALE = 8.5
_CALIBRATION_GUIDANCE = (1.0, 2.0, 4.0, 6.0, 8.5, 12.0)


def guidance_frequencies(dim: int) -> Any:
    """The sinusoid frequencies of ``get_guidance_scale_embedding``, shaped [half]."""
    import torch

    half = dim // 2
    return torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))


def guidance_embedding(guidance_scale: Any, dim: int, frequencies: Any = None) -> Any:
    """diffusers' ``get_guidance_scale_embedding(w - 1, dim)``, in the graph: [B] scales -> [B, dim]."""
    import torch

    w = (guidance_scale.to(torch.float32) - 1.0) * 1000.0
    frequencies = guidance_frequencies(dim) if frequencies is None else frequencies
    angles = w[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(embedding, (0, 1)) if dim % 2 else embedding


def _denoiser_wrapper():
    import torch

    class Denoiser(torch.nn.Module):
        # The artifact takes the guidance scale itself: the app passes what the user chose, and the
        # embedding (sin/cos of a few frequencies) is computed in the graph as the pipeline does.
        def __init__(self, unet):
            super().__init__()
            self.unet = unet
            self.embedding_dim = int(unet.config.time_cond_proj_dim)
            # A constant, so that no arange is left outside the delegates (the same float32 ops).
            self.register_buffer("frequencies", guidance_frequencies(self.embedding_dim), persistent=False)

        def forward(self, sample, timestep, encoder_hidden_states, guidance_scale):
            # In the latents' dtype, as LatentConsistencyModelPipeline casts it (float16 models).
            timestep_cond = guidance_embedding(guidance_scale, self.embedding_dim, self.frequencies).to(sample.dtype)
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False)[0]

    return Denoiser


def _check_unet(config: Any, where: str) -> None:
    get = config.get if isinstance(config, dict) else (lambda key: getattr(config, key, None))
    if not get("time_cond_proj_dim"):
        raise EdgegenError(f"{where}: the UNet has no time_cond_proj_dim, so it takes no guidance embedding; export it as Stable Diffusion")
    others = [key for key in ("addition_embed_type", "class_embed_type") if get(key)]
    if others:
        raise EdgegenError(f"{where}: an LCM UNet with {', '.join(f'{key}={get(key)!r}' for key in others)} (SDXL's LCM) is not supported yet")


def build_component(
    pipeline: Any,
    name: str,
    batch_size: int = 1,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    timestep: float | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
) -> Component:
    import torch

    def guidance_input(unet: Any, batch: int) -> dict[str, Any]:
        return {"guidance_scale": torch.full((batch,), guidance_scale, dtype=torch.float32)}

    return stable_diffusion.build_sd_component(
        pipeline, name, batch_size, prompt, seed, timestep,
        check_unet=_check_unet, denoiser_wrapper=_denoiser_wrapper(), extra_denoiser_inputs=guidance_input,
    )


def calibration_inputs(pipeline: Any, name: str, batch_size: int = 1, count: int = len(CALIBRATION_PROMPTS)) -> list[dict[str, Any]]:
    """SD's calibration sets, with the guidance scale spread over the range users sample with."""
    import torch

    sets = stable_diffusion.calibration_inputs(pipeline, name, batch_size, count, build=build_component)
    if name == "denoiser":
        for index, inputs in enumerate(sets):
            inputs["guidance_scale"] = torch.full((batch_size,), _CALIBRATION_GUIDANCE[index % len(_CALIBRATION_GUIDANCE)])
    return sets


class LatentConsistencyFamily(stable_diffusion.StableDiffusionFamily):
    name = "latent-consistency"
    description = "Latent Consistency Models (LatentConsistencyModelPipeline, or an SD pipeline with an LCM UNet: guidance embedding)"
    pipeline_classes = PIPELINE_CLASSES
    guidance_modes = ("embedded",)

    def claims(self, folder: Path, index: dict[str, Any]) -> bool:
        if index.get("_class_name") not in self.pipeline_classes:
            return False
        where = f"{folder} ({index['_class_name']})"
        unet = read_config(folder, "unet") if (Path(folder) / "unet" / "config.json").is_file() else {}
        if index["_class_name"] == "StableDiffusionPipeline" and not unet.get("time_cond_proj_dim"):
            return False  # plain Stable Diffusion
        if unet:
            _check_unet(unet, where)
        return True

    build_component = staticmethod(build_component)
    calibration_inputs = staticmethod(calibration_inputs)

    def denoiser_inputs(self, latents: np.ndarray, timestep: float, conditioning: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = super().denoiser_inputs(latents, timestep, conditioning)
        scale = conditioning.get("guidance_scale")
        if scale is None:
            scale = np.full((latents.shape[0],), DEFAULT_GUIDANCE_SCALE, dtype=np.float32)
        return {**inputs, "guidance_scale": scale.astype(np.float32)}

    def make_student(
        self, teacher_dir: Path, output_dir: Path, preset: str, force: bool = False, seed: int = 0, attention_heads: int | None = None
    ) -> Path:
        from edgegen.families.base import no_student

        return no_student(self)


FAMILY = LatentConsistencyFamily()
