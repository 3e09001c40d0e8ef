"""Flux: packed latents, pooled CLIP + T5 conditioning, embedded guidance; edgegen's loop is FluxPipeline's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.dummy_pipelines import flux


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return flux.build(tmp_path_factory.mktemp("flux") / "dev")


@pytest.fixture(scope="module")
def schnell_dir(tmp_path_factory):
    return flux.build(tmp_path_factory.mktemp("flux") / "schnell", guidance_embeds=False)


def test_packing_round_trips_as_the_pipeline_packs():
    from diffusers import FluxPipeline

    from edgegen.families.flux import pack, unpack

    latents = torch.randn(1, 4, 8, 6)
    packed = FluxPipeline._pack_latents(latents, 1, 4, 8, 6)
    assert np.array_equal(pack(latents.numpy()), packed.numpy())
    assert np.array_equal(unpack(packed.numpy(), 8, 6), latents.numpy())


def test_dev_takes_the_guidance_scale_and_schnell_none(flux_dir, schnell_dir):
    from edgegen.families import family_of
    from edgegen.families.loading import load_pipeline

    dev, schnell = family_of(flux_dir), family_of(schnell_dir)
    assert dev.guidance_modes == ("embedded",) and schnell.guidance_modes == ()
    names = [spec.name for spec in dev.build_component(load_pipeline(flux_dir), "denoiser").inputs]
    assert names == ["hidden_states", "timestep", "guidance", "pooled_projections", "encoder_hidden_states"]
    names = [spec.name for spec in schnell.build_component(load_pipeline(schnell_dir), "denoiser").inputs]
    assert names == ["hidden_states", "timestep", "pooled_projections", "encoder_hidden_states"]


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_the_eager_loop_is_flux_pipeline(flux_dir, schnell_dir, variant):
    from diffusers import FluxPipeline

    from edgegen.families import family_of
    from edgegen.families.loading import load_pipeline
    from edgegen.sampling.loop import SamplingPlan, initial_latents, load_case

    folder = flux_dir if variant == "dev" else schnell_dir
    prompt, seed, steps, guidance = "a red circle", 2, 3, (4.0 if variant == "dev" else 1.0)
    case = load_case(folder, None, SamplingPlan(steps=steps, guidance_scale=guidance))
    assert case.plan.calls_per_step == 1
    latents = initial_latents(case.latent_shape, seed)
    got = case.generate(prompt, latents, seed)

    pipeline = FluxPipeline.from_pretrained(str(folder), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    size = 32  # the VAE's sample_size, edgegen's image size for this folder
    expected = pipeline(
        prompt, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance, latents=torch.from_numpy(latents),
        max_sequence_length=32, output_type="latent",
    ).images.numpy()
    np.testing.assert_allclose(got.step_latents[-1], expected, rtol=0, atol=1e-4 * float(np.abs(expected).max()))

    # The decoder: unpacked, unscaled and shifted as the pipeline does before vae.decode.
    family, loaded = family_of(folder), load_pipeline(folder)
    decoder = family.build_component(loaded, "vae_decoder")
    image = decoder.run_eager({"latents": torch.from_numpy(family.decoder_inputs(expected)["latents"])})["image"]
    unpacked = FluxPipeline._unpack_latents(torch.from_numpy(expected), size, size, pipeline.vae_scale_factor)
    with torch.no_grad():
        want = pipeline.vae.decode(unpacked / pipeline.vae.config.scaling_factor + pipeline.vae.config.shift_factor).sample
    assert torch.allclose(image, want, atol=1e-5)
