"""Stable Diffusion 3: edgegen's pieces against StableDiffusion3Pipeline's own functions.

The conditioning the family builds from its encoder components is the pipeline's
``encode_prompt`` (two CLIPs' penultimate states and pooled outputs, the T5 states or the zeros
that stand for a left-out T5), the denoiser wrapper is the pipeline's transformer call, the
decoder is the pipeline's decode with scaling and shift, and the whole eager loop (flow-matching
timesteps, dynamic shifting included) ends on the pipeline's latents from the same noise.
"""

from __future__ import annotations

import numpy as np
import pytest

PROMPT = "a green triangle at the bottom right"


@pytest.fixture(scope="module", params=[True, False], ids=["with-t5", "without-t5"])
def folder(request, tmp_path_factory):
    from tests.dummy_pipelines.stable_diffusion_3 import build

    return build(tmp_path_factory.mktemp("sd3") / "pipeline", with_t5=request.param)


@pytest.fixture(scope="module")
def pipeline(folder):
    import torch

    from edgegen.families.loading import load_pipeline

    # Grad mode is global: switched off for this module's comparisons only, then restored.
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        yield load_pipeline(folder)
    finally:
        torch.set_grad_enabled(previous)


def _case(folder, steps: int, guidance_scale: float):
    from edgegen.sampling.loop import SamplingPlan, load_case

    return load_case(folder, None, SamplingPlan(steps=steps, guidance_scale=guidance_scale))


def test_the_folder_decides_whether_there_is_a_t5_component(folder, pipeline):
    from edgegen.families import component_names, family_of

    names = component_names(family_of(folder))
    assert names[-2:] == ("denoiser", "vae_decoder")
    assert ("text_encoder_3" in names) == (pipeline.text_encoder_3 is not None)


def test_conditioning_is_the_pipelines_encode_prompt(folder, pipeline):
    case = _case(folder, 1, 5.0)
    wanted = pipeline.encode_prompt(PROMPT, None, None, do_classifier_free_guidance=True)
    for prompt, (embeds, pooled) in ((PROMPT, (wanted[0], wanted[2])), ("", (wanted[1], wanted[3]))):
        got = case.family.encode_prompt(case.tokenizers, case._timed, prompt)
        assert got["encoder_hidden_states"].shape == tuple(embeds.shape)
        np.testing.assert_allclose(got["encoder_hidden_states"], embeds.numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(got["pooled_projections"], pooled.numpy(), rtol=0, atol=1e-5)


def test_denoiser_and_decoder_are_the_pipelines_own_calls(folder, pipeline):
    import torch

    from edgegen.families import family_of

    family = family_of(folder)
    denoiser = family.build_component(pipeline, "denoiser", prompt=PROMPT, seed=3, timestep=640.0)
    inputs = denoiser.reference_inputs
    wanted = pipeline.transformer(
        hidden_states=inputs["hidden_states"], timestep=inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"],
        pooled_projections=inputs["pooled_projections"], return_dict=False,
    )[0]
    np.testing.assert_allclose(denoiser.run_eager()["noise_pred"].numpy(), wanted.numpy(), rtol=0, atol=1e-5)

    decoder = family.build_component(pipeline, "vae_decoder", seed=4)
    latents = decoder.reference_inputs["latents"]
    vae = pipeline.vae
    assert vae.config.shift_factor  # the dummy VAE has a shift, as SD3's does
    wanted = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
    np.testing.assert_allclose(decoder.run_eager()["image"].numpy(), wanted.numpy(), rtol=0, atol=1e-5)
    assert not torch.equal(decoder.run_eager()["image"], vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0])


@pytest.mark.parametrize("dynamic_shifting", [False, True], ids=["fixed-shift", "dynamic-shift"])
def test_eager_loop_ends_on_the_pipelines_latents(folder, pipeline, dynamic_shifting):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from edgegen.sampling.loop import initial_latents

    steps, guidance = 3, 4.0
    case = _case(folder, steps, guidance)
    scheduler_config = {**pipeline.scheduler.config, "use_dynamic_shifting": dynamic_shifting}
    case.scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    pipeline.scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    latents = initial_latents(case.latent_shape, 11)
    got = case.generate(PROMPT, latents, 11)
    wanted = pipeline(PROMPT, num_inference_steps=steps, guidance_scale=guidance, latents=torch.from_numpy(latents), output_type="latent").images
    np.testing.assert_allclose(case.scheduler.timesteps.numpy(), pipeline.scheduler.timesteps.numpy(), rtol=0, atol=1e-3)
    assert float(case.scheduler.timesteps[0]) > 1.0  # the transformer takes the scheduler's 0..1000 timestep
    np.testing.assert_allclose(got.step_latents[-1], wanted.numpy(), rtol=0, atol=1e-4)
    assert len(got.call_ms["denoiser"]) == 2 * steps  # classifier-free: with and without the prompt


def test_a_folder_without_its_transformer_is_refused_in_one_line(tmp_path, folder):
    import json
    import shutil

    from edgegen.errors import EdgegenError
    from edgegen.families import family_of

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    index = json.loads((broken / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps({**index, "transformer": [None, None]}))
    with pytest.raises(EdgegenError, match="has no transformer; a Stable Diffusion 3 pipeline needs them") as error:
        family_of(broken)
    assert "\n" not in str(error.value)


def test_sd35_query_key_rms_norm_is_rewritten_exactly_for_xnnpack():
    import copy

    import torch
    from diffusers.models.normalization import RMSNorm

    from edgegen.exporting.rewrites import decompose_rms_norms

    torch.manual_seed(0)
    norm = torch.nn.Sequential(RMSNorm(8, eps=1e-6))
    with torch.no_grad():
        norm[0].weight.normal_()
    rewritten = copy.deepcopy(norm)
    assert decompose_rms_norms(rewritten) == ["RMSNorm x1 -> decomposed RMSNorm (reshape, mul, mean, rsqrt, affine)"]
    x = torch.randn(2, 4, 333, 8)  # [batch, heads, tokens, head dim], as the joint attention calls it
    torch.testing.assert_close(rewritten(x), norm(x), rtol=1e-5, atol=1e-6)
    assert rewritten.state_dict().keys() == norm.state_dict().keys()
