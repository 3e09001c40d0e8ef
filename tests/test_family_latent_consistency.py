"""LCM: the guidance scale is a declared denoiser input, and edgegen's loop is diffusers' own LCM loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.dummy_pipelines import latent_consistency


@pytest.fixture(scope="module")
def lcm_dir(tmp_path_factory):
    return latent_consistency.build(tmp_path_factory.mktemp("lcm") / "pipeline")


def test_the_in_graph_guidance_embedding_is_the_pipelines(lcm_dir):
    from diffusers import LatentConsistencyModelPipeline

    from edgegen.families.latent_consistency import guidance_embedding

    scales = torch.tensor([1.0, 2.5, 8.5])
    expected = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, scales - 1, embedding_dim=32)
    assert torch.allclose(guidance_embedding(scales, 32), expected, atol=1e-6)
    assert guidance_embedding(scales, 33).shape == (3, 33)


def test_the_denoiser_declares_the_guidance_scale_and_uses_it(lcm_dir):
    from edgegen.families import family_of
    from edgegen.families.loading import load_pipeline

    family = family_of(lcm_dir)
    denoiser = family.build_component(load_pipeline(lcm_dir), "denoiser")
    assert [spec.name for spec in denoiser.inputs] == ["sample", "timestep", "encoder_hidden_states", "guidance_scale"]
    low = denoiser.run_eager({**denoiser.reference_inputs, "guidance_scale": torch.tensor([1.0])})["noise_pred"]
    high = denoiser.run_eager({**denoiser.reference_inputs, "guidance_scale": torch.tensor([8.5])})["noise_pred"]
    assert not torch.allclose(low, high, atol=1e-4), "the guidance input does not reach the UNet"


def test_the_eager_loop_is_diffusers_lcm_pipeline_and_reproducible(lcm_dir):
    from diffusers import LatentConsistencyModelPipeline

    from edgegen.sampling.loop import SamplingPlan, initial_latents, load_case

    prompt, seed, steps, guidance = "a red circle", 3, 3, 4.0
    case = load_case(lcm_dir, None, SamplingPlan(steps=steps, guidance_scale=guidance))
    assert case.plan.guidance_mode == "embedded" and case.plan.calls_per_step == 1
    latents = initial_latents(case.latent_shape, seed)
    first, second = case.generate(prompt, latents, seed), case.generate(prompt, latents, seed)
    assert np.array_equal(first.step_latents[-1], second.step_latents[-1]), "a seeded LCM run must repeat exactly"
    assert len(first.call_ms["denoiser"]) == steps

    pipeline = LatentConsistencyModelPipeline.from_pretrained(str(lcm_dir), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    expected = pipeline(
        prompt, num_inference_steps=steps, guidance_scale=guidance, latents=torch.from_numpy(latents),
        generator=torch.Generator().manual_seed(seed), output_type="latent",
    ).images
    np.testing.assert_allclose(first.step_latents[-1], expected.numpy(), rtol=0, atol=1e-4)
