"""PixArt-alpha/Sigma: the family's encoder, denoiser and whole eager loop against diffusers' own pipelines.

The tiny pipelines follow diffusers' fast tests (tests/dummy_pipelines/pixart.py); a third one,
built here, has the 128 sample size at which PixArt-alpha adds resolution and aspect-ratio
conditioning (patch size 16 keeps it to 64 tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgegen.errors import EdgegenError

PROMPT = "A Red circle on the white square "
GUIDANCE = 4.5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny PixArt-alpha, PixArt-Sigma and PixArt-alpha-at-sample-size-128 pipeline folders."""
    import torch
    from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

    from tests.dummy_pipelines.pixart import build

    root = tmp_path_factory.mktemp("pixart")
    alpha = build(root / "alpha")
    sigma = build(root / "sigma", "PixArtSigmaPipeline")
    parts = PixArtAlphaPipeline.from_pretrained(str(alpha)).components
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=128, num_layers=2, patch_size=16, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, norm_type="ada_norm_single", norm_elementwise_affine=False,
    )
    assert transformer.use_additional_conditions
    conditioned = root / "alpha-128"
    PixArtAlphaPipeline(**{**parts, "transformer": transformer.eval()}).save_pretrained(conditioned, safe_serialization=True)
    return {"alpha": alpha, "sigma": sigma, "alpha-128": conditioned}


def _load(folder: Path):
    from edgegen.families.loading import load_pipeline

    return load_pipeline(folder)


@pytest.mark.parametrize("kind", ["alpha", "sigma", "alpha-128"])
def test_encoder_and_denoiser_equal_the_pipelines_encode_prompt_and_transformer_call(folders, kind):
    import torch

    from edgegen.families import family_of
    from edgegen.families.pixart import sequence_length

    folder = folders[kind]
    family = family_of(folder)
    assert family.name == "pixart"
    pipeline = _load(folder)
    length = sequence_length(type(pipeline).__name__, pipeline.tokenizer)
    with torch.no_grad():
        want_embeds, want_mask, want_negative, want_negative_mask = pipeline.encode_prompt(PROMPT, max_sequence_length=length)

    encoders = {}

    def run(name, inputs):
        component = encoders.setdefault(name, family.build_component(pipeline, name))
        outputs = component.run_eager({key: torch.from_numpy(value) for key, value in inputs.items()})
        return {key: value.numpy() for key, value in outputs.items()}

    tokenizers = {"tokenizer": pipeline.tokenizer}
    conditional = family.encode_prompt(tokenizers, run, PROMPT)
    unconditional = family.encode_prompt(tokenizers, run, "")
    np.testing.assert_array_equal(conditional["encoder_hidden_states"], want_embeds.numpy())
    np.testing.assert_array_equal(conditional["encoder_attention_mask"], want_mask.numpy())
    np.testing.assert_array_equal(unconditional["encoder_hidden_states"], want_negative.numpy())
    np.testing.assert_array_equal(unconditional["encoder_attention_mask"], want_negative_mask.numpy())
    assert 0 < want_mask.sum() < length  # the prompt is padded, so the mask matters

    # One transformer call as the pipeline makes it (SDPA processors, a [negative, prompt] batch,
    # added conditioning at sample size 128, the learned-sigma half split off), before the family
    # swaps in the plain attention processor.
    transformer = pipeline.transformer
    size = transformer.config.sample_size
    latents = torch.randn((1, transformer.config.in_channels, size, size), generator=torch.Generator().manual_seed(3))
    t = torch.tensor([641])
    added = {"resolution": None, "aspect_ratio": None}
    if kind == "alpha-128":
        height = size * pipeline.vae_scale_factor
        added = {"resolution": torch.tensor([[height, height]] * 2).float(), "aspect_ratio": torch.tensor([[1.0]] * 2)}
    with torch.no_grad():
        want = transformer(
            torch.cat([latents] * 2), encoder_hidden_states=torch.cat([want_negative, want_embeds]),
            encoder_attention_mask=torch.cat([want_negative_mask, want_mask]), timestep=t.expand(2),
            added_cond_kwargs=added, return_dict=False,
        )[0].chunk(2, dim=1)[0]
    denoiser = family.build_component(pipeline, "denoiser")
    assert any("AttnProcessor" in rewrite for rewrite in denoiser.graph_rewrites)
    assert [spec.name for spec in denoiser.inputs] == ["sample", "timestep", "encoder_hidden_states", "encoder_attention_mask"]
    got = [
        denoiser.run_eager({**{k: torch.from_numpy(v) for k, v in family.denoiser_inputs(latents.numpy(), float(t), cond).items()}})["noise_pred"]
        for cond in (unconditional, conditional)
    ]
    torch.testing.assert_close(torch.cat(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["alpha", "sigma", "alpha-128"])
def test_eager_loop_equals_the_diffusers_pipeline_from_the_same_latents(folders, kind):
    import torch

    from edgegen.families.pixart import sequence_length
    from edgegen.sampling.loop import SamplingPlan, initial_latents, load_case

    folder = folders[kind]
    case = load_case(folder, None, SamplingPlan(steps=2, guidance_scale=GUIDANCE))
    latents = initial_latents(case.latent_shape, 11)
    generation = case.generate(PROMPT, latents, 11)
    pipeline = _load(folder)
    call = dict(
        prompt=PROMPT, latents=torch.from_numpy(latents), num_inference_steps=2, guidance_scale=GUIDANCE, clean_caption=False,
        use_resolution_binning=False, max_sequence_length=sequence_length(type(pipeline).__name__, pipeline.tokenizer),
    )
    with torch.no_grad():
        want_latents = pipeline(**call, output_type="latent").images
        want_image = pipeline(**call, output_type="pt").images
    np.testing.assert_allclose(generation.step_latents[-1], want_latents.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose((generation.image + 1) / 2, want_image[0].numpy(), rtol=1e-4, atol=1e-5)


def test_sequence_length_is_the_pipelines_default_unless_the_tokenizer_is_shorter(folders):
    from edgegen.families import family_of
    from edgegen.families.pixart import sequence_length
    from edgegen.sampling.loop import load_tokenizers_and_scheduler
    from tests.dummy_pipelines.tokenizers import t5_tokenizer

    long = t5_tokenizer(max_length=512)
    assert sequence_length("PixArtAlphaPipeline", long) == 120
    assert sequence_length("PixArtSigmaPipeline", long) == 300
    assert sequence_length("PixArtSigmaPipeline", t5_tokenizer(max_length=32)) == 32
    family = family_of(folders["sigma"])
    assert family.pipeline_class == "PixArtSigmaPipeline"
    tokenizers, _ = load_tokenizers_and_scheduler(folders["sigma"], family)
    shapes = []
    family.encode_prompt(tokenizers, lambda name, inputs: shapes.append(inputs["input_ids"].shape) or {"text_embeddings": None}, "a dot")
    assert shapes == [(1, 32)]


@pytest.mark.parametrize("pipeline_class, sample_size", [("PixArtSigmaPipeline", 128), ("PixArtAlphaPipeline", 8)])
def test_resolution_conditioning_the_pipeline_never_passes_is_refused_in_one_line(tmp_path, folders, pipeline_class, sample_size):
    import shutil

    from edgegen.families import family_of

    folder = tmp_path / "pipeline"
    shutil.copytree(folders["alpha"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": pipeline_class}))
    config = json.loads((folder / "transformer" / "config.json").read_text())
    (folder / "transformer" / "config.json").write_text(json.dumps({**config, "sample_size": sample_size, "use_additional_conditions": True}))
    with pytest.raises(EdgegenError, match=f"resolution and aspect-ratio conditioning .* {pipeline_class} never passes") as error:
        family_of(folder)
    assert "\n" not in str(error.value)


def test_onnx_keeps_a_squeeze_of_a_dimension_that_is_not_one_loadable(tmp_path):
    # PixArt's transformer squeezes its token dimension (a no-op in torch); torch.onnx writes an
    # ONNX Squeeze that onnxruntime refuses to load.
    import onnxruntime
    import torch

    from edgegen.exporters.onnx import drop_noop_squeezes

    class Unpatchify(torch.nn.Module):
        def forward(self, tokens):
            return tokens.squeeze(1).squeeze(0) * 2

    tokens = torch.randn(1, 16, 8)
    program = torch.onnx.export(Unpatchify(), (tokens,), dynamo=True, input_names=["tokens"], output_names=["out"], verbose=False)
    assert drop_noop_squeezes(program) == ["Squeeze of a dimension that is not 1 x1 -> Identity"]
    program.save(str(tmp_path / "model.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    np.testing.assert_array_equal(session.run(None, {"tokens": tokens.numpy()})[0], tokens[0].numpy() * 2)


def test_tflite_int8_leaves_a_linear_float_when_layout_ops_lead_it_to_the_output():
    # A DiT's last linear reaches the output through unpatchify reshapes, a permutation and the
    # learned-sigma slice; quantized there, the converter makes the model output int8.
    import torch

    from edgegen.exporters.tflite import STATIC_OPS, _float_boundary_quantizer

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj_in, self.proj_out = torch.nn.Linear(8, 8), torch.nn.Linear(8, 16)

        def forward(self, tokens):
            x = self.proj_out(self.proj_in(tokens)).squeeze(1).reshape(1, 2, 2, 2, 2, 4)
            x = torch.einsum("nhwpqc->nchpwq", x).reshape(1, 4, 4, 4)
            return {"noise_pred": x[:, :2]}

    graph = torch.export.export(Head(), (torch.randn(1, 4, 8),)).module()
    annotated = _float_boundary_quantizer(STATIC_OPS).annotate(graph)
    first, last = [node for node in annotated.graph.nodes if node.target == torch.ops.aten.linear.default]
    assert first.meta["quantization_annotation"].output_qspec is not None  # inside the model: quantized
    assert last.meta["quantization_annotation"].output_qspec is None  # led to the output: float
    for node in annotated.graph.nodes:
        annotation = node.meta.get("quantization_annotation")
        if annotation is not None:
            assert last not in annotation.input_qspec_map or type(annotation.input_qspec_map[last]).__name__ != "SharedQuantizationSpec"
