"""Stable Diffusion: edgegen's eager loop equals diffusers' own pipeline under every scheduler users pick."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.dummy_pipelines import stable_diffusion

# The schedulers SD folders ship with or users swap in; ancestral ones draw noise while stepping.
SCHEDULERS = {
    "DDIMScheduler": {},
    "EulerDiscreteScheduler": {},
    "EulerAncestralDiscreteScheduler": {},
    "DPMSolverMultistepScheduler": {"algorithm_type": "dpmsolver++"},
    "PNDMScheduler": {"skip_prk_steps": True},
    "LMSDiscreteScheduler": {},
}


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return stable_diffusion.build(tmp_path_factory.mktemp("sd") / "pipeline")


@pytest.mark.parametrize("scheduler_class", SCHEDULERS)
def test_the_eager_loop_is_diffusers_pipeline_under_each_scheduler(tmp_path, sd_dir, scheduler_class):
    import diffusers
    from diffusers import StableDiffusionPipeline

    from edgegen.sampling.loop import SamplingPlan, initial_latents, load_case

    folder = tmp_path / scheduler_class
    shutil.copytree(sd_dir, folder)
    original = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    scheduler = getattr(diffusers, scheduler_class).from_config(original, **SCHEDULERS[scheduler_class])
    shutil.rmtree(folder / "scheduler")
    scheduler.save_pretrained(folder / "scheduler")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", scheduler_class]}))

    prompt, seed, steps, guidance = "a blue square", 5, 4, 3.0
    case = load_case(folder, None, SamplingPlan(steps=steps, guidance_scale=guidance))
    assert type(case.scheduler).__name__ == scheduler_class
    latents = initial_latents(case.latent_shape, seed)
    got = case.generate(prompt, latents, seed).step_latents[-1]
    again = case.generate(prompt, latents, seed).step_latents[-1]
    assert np.array_equal(got, again), f"{scheduler_class}: the same seed must give the same latents"

    pipeline = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    # diffusers scales the injected latents by init_noise_sigma itself, as edgegen's loop does.
    expected = pipeline(
        prompt, num_inference_steps=steps, guidance_scale=guidance, latents=torch.from_numpy(latents),
        generator=torch.Generator().manual_seed(seed), output_type="latent",
    ).images.numpy()
    scale = float(np.abs(expected).max())
    assert np.abs(got - expected).max() <= 1e-4 * scale, f"{scheduler_class}: max diff {np.abs(got - expected).max():.2e}"
