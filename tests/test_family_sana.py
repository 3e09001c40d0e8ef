"""Sana: the pipeline's instruction-prefixed Gemma-2 conditioning, AutoencoderDC; edgegen's loop is SanaPipeline's."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from tests.dummy_pipelines import sana


@pytest.fixture(scope="module")
def sana_dir(tmp_path_factory):
    return sana.build(tmp_path_factory.mktemp("sana") / "pipeline")


def test_conditioning_is_the_pipelines_encode_prompt(sana_dir):
    from diffusers import SanaPipeline

    from edgegen.families import family_of
    from edgegen.families.loading import load_pipeline
    from edgegen.sampling.loop import eager_runners, load_tokenizers_and_scheduler

    family = family_of(sana_dir)
    runners, _ = eager_runners(sana_dir)
    tokenizers, _ = load_tokenizers_and_scheduler(sana_dir, family)
    ours = family.encode_prompt(tokenizers, lambda name, inputs: runners[name](inputs), "A Red Circle")
    negative = family.encode_prompt(tokenizers, lambda name, inputs: runners[name](inputs), "")
    pipeline = load_pipeline(sana_dir)
    with torch.no_grad():
        prompt, mask, negative_prompt, negative_mask = SanaPipeline.encode_prompt(
            pipeline, "A Red Circle", do_classifier_free_guidance=True, negative_prompt="",
            complex_human_instruction=inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default,
            device=torch.device("cpu"),
        )
    np.testing.assert_allclose(ours["encoder_hidden_states"], prompt.numpy(), atol=1e-5)
    assert np.array_equal(ours["encoder_attention_mask"], mask.numpy())
    np.testing.assert_allclose(negative["encoder_hidden_states"], negative_prompt.numpy(), atol=1e-5)
    assert np.array_equal(negative["encoder_attention_mask"], negative_mask.numpy())


def test_the_eager_loop_is_sana_pipeline(sana_dir):
    from diffusers import SanaPipeline

    from edgegen.sampling.loop import SamplingPlan, initial_latents, load_case

    prompt, seed, steps, guidance = "a red circle", 4, 3, 4.5
    case = load_case(sana_dir, None, SamplingPlan(steps=steps, guidance_scale=guidance))
    latents = initial_latents(case.latent_shape, seed)
    got = case.generate(prompt, latents, seed).step_latents[-1]
    pipeline = SanaPipeline.from_pretrained(str(sana_dir), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    expected = pipeline(
        prompt, num_inference_steps=steps, guidance_scale=guidance, latents=torch.from_numpy(latents), output_type="latent",
    ).images.numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * float(np.abs(expected).max()))


def test_export_formulations_compute_what_diffusers_and_transformers_compute(sana_dir):
    """The text encoder's own 4-D masks, and the linear attentions whose epsilon torch.onnx keeps,
    give bit for bit what the untouched pipeline gives."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    from edgegen.families.base import vae_decoder_module
    from edgegen.families.loading import load_pipeline
    from edgegen.families.sana import FAMILY, layer_masks, tokenize

    pipeline, untouched = load_pipeline(sana_dir), load_pipeline(sana_dir)
    encoder = untouched.text_encoder
    for window in (None, 5):  # the dummy's window is longer than its prompts; 5 cuts into them
        if window is not None:
            encoder.config.sliding_window = window
        tokens = tokenize(untouched.tokenizer, ["a red circle", "A longer prompt about a blue square"])
        embeds = encoder.get_input_embeddings()(tokens.input_ids)
        positions = torch.arange(tokens.input_ids.shape[1])[None]
        kwargs = {"config": encoder.config, "inputs_embeds": embeds, "attention_mask": tokens.attention_mask, "past_key_values": None, "position_ids": positions}
        ours = layer_masks(encoder.config, tokens.attention_mask, embeds.dtype)
        assert torch.equal(ours["full_attention"], create_causal_mask(**kwargs))
        assert torch.equal(ours["sliding_attention"], create_sliding_window_causal_mask(**kwargs))
    encoder.config.sliding_window = pipeline.text_encoder.config.sliding_window

    with torch.no_grad():
        text = FAMILY.build_component(pipeline, "text_encoder", prompt="a blue square")
        assert torch.equal(text.module(*text.example_args()), encoder(*text.example_args())[0])
        denoiser = FAMILY.build_component(pipeline, "denoiser", seed=3, timestep=250.0)
        assert any("SanaLinearAttnProcessor2_0" in rewrite for rewrite in denoiser.graph_rewrites)
        args = denoiser.example_args()
        expected = untouched.transformer(
            args[0], encoder_hidden_states=args[2], encoder_attention_mask=args[3],
            timestep=args[1] * untouched.transformer.config.timestep_scale, return_dict=False,
        )[0]
        assert torch.equal(denoiser.module(*args), expected)
        decoder = FAMILY.build_component(pipeline, "vae_decoder", seed=3)
        assert any("SanaMultiscaleLinearAttention" in rewrite for rewrite in decoder.graph_rewrites)
        assert torch.equal(decoder.module(*decoder.example_args()), vae_decoder_module(untouched.vae)(*decoder.example_args()))


def test_core_ml_movedim_converter_is_torchs_permutation():
    """AutoencoderDC's ``movedim`` (no converter in coremltools 9) becomes the transpose torch does."""
    ct = pytest.importorskip("coremltools")
    from edgegen.exporters.coreml import _register_missing_converters

    _register_missing_converters()
    x = torch.randn(2, 3, 4, 5)
    for source, destination in ((1, -1), (-1, 1), ((1, 3), (0, 1))):

        class MoveDims(torch.nn.Module):
            def forward(self, x):
                return x.movedim(source, destination)

        traced = torch.jit.trace(MoveDims(), (x,))
        model = ct.convert(
            traced, inputs=[ct.TensorType(name="x", shape=x.shape)], convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS17, skip_model_load=True,
        )
        perms = [op.perm.val.tolist() for op in model._mil_program.functions["main"].operations if op.op_type == "transpose"]
        assert len(perms) == 1
        assert torch.equal(x.permute(perms[0]), x.movedim(source, destination))
