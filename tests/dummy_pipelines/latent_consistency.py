"""A tiny LCM pipeline (diffusers' test_latent_consistency_models.py get_dummy_components: SD's with
``time_cond_proj_dim=32`` and an LCMScheduler)."""

from __future__ import annotations

from pathlib import Path

from tests.dummy_pipelines import stable_diffusion

FAMILY = "latent-consistency"


def build(folder: Path) -> Path:
    from diffusers import LatentConsistencyModelPipeline

    parts = stable_diffusion.components(time_cond_proj_dim=32, scheduler_class="LCMScheduler")
    LatentConsistencyModelPipeline(**parts).save_pretrained(folder, safe_serialization=True)
    return folder
