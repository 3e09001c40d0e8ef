"""SDXL's own behaviour against diffusers' StableDiffusionXLPipeline on the tiny dummy pipeline:
both encoders' penultimate layers and the pooled projection as encode_prompt gives them, zeros
for the empty prompt (force_zeros_for_empty_prompt) and the encoded "" without it, the time ids
_get_add_time_ids makes, the whole eager sampling loop against the pipeline's own loop from the
same latents, a decoder with latents mean/std, and the refiner refused in one line.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from edgegen.errors import EdgegenError

PROMPT = "a blue square in the middle"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tests.dummy_pipelines.stable_diffusion_xl import build

    return build(tmp_path_factory.mktemp("sdxl") / "pipeline")


def _diffusers_pipeline(folder):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True, torch_dtype=torch.float32)


def _eager_encode(folder, prompt):
    from edgegen.families import family_of
    from edgegen.sampling.loop import eager_runners, load_tokenizers_and_scheduler

    family = family_of(folder)
    runners, _ = eager_runners(folder)
    tokenizers, _ = load_tokenizers_and_scheduler(folder, family)
    return family, family.encode_prompt(tokenizers, lambda name, inputs: runners[name](inputs), prompt)


def test_encode_prompt_and_denoiser_inputs_are_the_pipelines(folder):
    family, conditional = _eager_encode(folder, PROMPT)
    _, unconditional = _eager_encode(folder, "")
    pipeline = _diffusers_pipeline(folder)
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = pipeline.encode_prompt(PROMPT, device=torch.device("cpu"), do_classifier_free_guidance=True)
    np.testing.assert_allclose(conditional["encoder_hidden_states"], embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(conditional["text_embeds"], pooled.numpy(), atol=1e-5)
    assert not negative.any() and not negative_pooled.any()  # force_zeros_for_empty_prompt
    np.testing.assert_array_equal(unconditional["encoder_hidden_states"], negative.numpy())
    np.testing.assert_array_equal(unconditional["text_embeds"], negative_pooled.numpy())

    size = (pipeline.default_sample_size * pipeline.vae_scale_factor,) * 2
    projection = pipeline.text_encoder_2.config.projection_dim
    time_ids = pipeline._get_add_time_ids(size, (0, 0), size, dtype=torch.float32, text_encoder_projection_dim=projection)
    latents = np.zeros((1, 4, 32, 32), dtype=np.float32)
    inputs = family.denoiser_inputs(latents, 501.0, conditional)
    assert list(inputs) == [spec.name for spec in family.build_component(pipeline, "denoiser").inputs]
    np.testing.assert_array_equal(inputs["time_ids"], time_ids.numpy())
    assert inputs["time_ids"].tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]  # 32 latents x VAE factor 2


def test_without_force_zeros_the_empty_prompt_is_encoded(folder, tmp_path):
    other = tmp_path / "no-zeros"
    shutil.copytree(folder, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "force_zeros_for_empty_prompt": False}))
    _, unconditional = _eager_encode(other, "")
    pipeline = _diffusers_pipeline(other)
    with torch.no_grad():
        _, negative, _, negative_pooled = pipeline.encode_prompt(PROMPT, device=torch.device("cpu"), do_classifier_free_guidance=True)
    assert negative.abs().sum() > 0
    np.testing.assert_allclose(unconditional["encoder_hidden_states"], negative.numpy(), atol=1e-5)
    np.testing.assert_allclose(unconditional["text_embeds"], negative_pooled.numpy(), atol=1e-5)


def test_eager_sampling_loop_matches_the_pipelines_own_loop(folder):
    from edgegen.sampling.loop import SamplingPlan, initial_latents, load_case

    case = load_case(folder, None, SamplingPlan(steps=2, guidance_scale=2.0))
    latents = initial_latents(case.latent_shape, 7)
    ours = case.generate(PROMPT, latents, 7).step_latents[-1]
    pipeline = _diffusers_pipeline(folder)
    theirs = pipeline(
        PROMPT, num_inference_steps=2, guidance_scale=2.0, latents=torch.from_numpy(latents), output_type="latent"
    ).images.numpy()
    assert np.abs(theirs).max() > 0.1
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_decoder_folds_in_latents_mean_and_std_as_the_pipeline_decodes(folder):
    from edgegen.families import family_of

    pipeline = _diffusers_pipeline(folder)
    pipeline.vae.register_to_config(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[0.5, 1.5, 1.0, 2.0])
    latents = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 4, 32, 32), dtype=np.float32))
    image = pipeline(PROMPT, num_inference_steps=1, latents=latents, output_type="pt").images
    final = pipeline(PROMPT, num_inference_steps=1, latents=latents, output_type="latent").images
    decoder = family_of(folder).build_component(pipeline, "vae_decoder")
    ours = decoder.run_eager({"latents": final})["image"]
    np.testing.assert_allclose((ours / 2 + 0.5).clamp(0, 1).numpy(), image.numpy(), atol=1e-5)


def test_a_refiner_layout_and_a_guidance_embedding_unet_are_refused_in_one_line(folder, tmp_path):
    from edgegen.families import family_of

    refiner = tmp_path / "refiner"
    shutil.copytree(folder, refiner)
    index = json.loads((refiner / "model_index.json").read_text())
    (refiner / "model_index.json").write_text(json.dumps({**index, "text_encoder": [None, None], "tokenizer": [None, None]}))
    with pytest.raises(EdgegenError, match="refiner") as refused:
        family_of(refiner)
    assert "\n" not in str(refused.value)

    lcm = tmp_path / "lcm-unet"
    shutil.copytree(folder, lcm)
    config = json.loads((lcm / "unet" / "config.json").read_text())
    (lcm / "unet" / "config.json").write_text(json.dumps({**config, "time_cond_proj_dim": 256}))
    with pytest.raises(EdgegenError, match="time_cond_proj_dim"):
        family_of(lcm)
