"""``edgegen bundle --format apple-swift`` of an SD3 pipeline: StableDiffusion3Pipeline's folder.

The contract is read back from the packages' specs; the Swift SD3 loop (DiscreteFlowScheduler.swift
at shift 3, guidance with the conditional row first, CLIP states joined with 2048 zero features and
77 T5 tokens, the last x0 decoded from ``x / 1.5305 + 0.0609``), ported to Python, runs the
bundle's graphs and must draw what diffusers' FlowMatchEulerDiscreteScheduler draws around the
pipeline's own ``encode_prompt`` and transformer (at 77 T5 tokens, the app's). Core ML predicts
only on macOS; here the loop runs the graphs the packages were converted from.
"""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest
from typer.testing import CliRunner

from edgegen.cli import app
from tests.helpers import on_numpy

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle at the top left", "a small blue square"]
STEPS = 4
GUIDANCE = 7.5


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    """diffusers' test SD3 with and without its T5 encoder, and their bundles."""
    from tests.dummy_pipelines import stable_diffusion_3

    root, made = tmp_path_factory.mktemp("apple-sd3"), {}
    for name, with_t5 in (("t5", True), ("no-t5", False)):
        source = stable_diffusion_3.build(root / name, with_t5=with_t5)
        result = CliRunner().invoke(app, ["bundle", str(source), "--format", "apple-swift", "-o", str(root / f"{name}-bundle")])
        assert result.exit_code == 0, result.output
        made[name] = (source, root / f"{name}-bundle")
    return made


@pytest.mark.parametrize("name", ["t5", "no-t5"])
def test_the_sd3_folder_meets_the_sd3_pipelines_contract(name, sd3):
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    from edgegen.bundling.apple_swift_sd3 import SD3_CONTRACT
    from edgegen.schema.bundle import read_bundle_manifest

    _, folder = sd3[name]
    manifest = read_bundle_manifest(folder)
    models = {role: model for role, model in SD3_CONTRACT.models.items() if name == "t5" or role != "encoder_3"}
    if platform.system() == "Darwin":  # pragma: no cover - compiled: no spec to read; the loop test runs it
        return
    # T5 is used only when its model and both tokenizer files are there.
    extra = {"tokenizer.json", "tokenizer_config.json"} if name == "t5" else set()
    assert {f.path for f in manifest.files} == {f"{m}.mlpackage" for m in models.values()} | {"vocab.json", "merges.txt"} | extra
    assert any("StableDiffusion3Pipeline(resourcesAt:" in line and "decoderShiftFactor = 0.0609" in line for line in manifest.next_steps)
    assert any(line.startswith("no VAEEncoder (optional, image-to-image)") for line in manifest.adaptations)
    expected = {
        "encoder": ({"input_ids": [1, 77]}, {"hidden_embeds": [1, 77, 768], "pooled_outputs": [1, 768]}),
        "encoder_2": ({"input_ids": [1, 77]}, {"hidden_embeds": [1, 77, 1280], "pooled_outputs": [1, 1280]}),
        "encoder_3": ({"input_ids": [1, 77], "attention_mask": [1, 77]}, {"encoder_hidden_states": [1, 4096, 1, 77]}),
        "transformer": (
            {"latent_image_embeddings": [2, 4, 32, 32], "timestep": [2], "token_level_text_embeddings": [2, 4096, 1, 154], "pooled_text_embeddings": [2, 2048, 1, 1]},
            {"denoiser_output": [2, 4, 32, 32]},
        ),
        "decoder": ({"z": [1, 4, 32, 32]}, {"image": [1, 3, 32, 32]}),
    }
    for role, model in models.items():
        inputs, outputs = expected[role]
        spec = ct.utils.load_spec(str(folder / f"{model}.mlpackage"))
        assert {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input} == inputs, role
        assert {o.name: list(o.type.multiArrayType.shape) for o in spec.description.output} == outputs, role
        function = spec.mlProgram.functions["main"]
        computed = {MIL_pb2.DataType.Name(o.outputs[0].type.tensorType.dataType) for o in function.block_specializations[function.opset].operations if o.outputs}
        # Apple converts the MMDiT in float32 (float16 overflows in SD3), and T5 overflows in
        # float16 too; the rest in float16.
        assert ("FLOAT16" in computed) == (role not in ("transformer", "encoder_3")), role


def _swift_ids(tokenizer, prompt, pad_id=None):
    ids = tokenizer(prompt.strip().lower(), add_special_tokens=True).input_ids[:77]
    return ids + [tokenizer.eos_token_id if pad_id is None else pad_id] * (77 - len(ids))


def _swift_t5_ids(tokenizer, prompt, length=77):
    """TextEncoderT5.swift: the pieces, cut to length - 1, the end token, padded with 0."""
    ids = tokenizer(prompt, add_special_tokens=False).input_ids[: length - 1] + [tokenizer.eos_token_id]
    return ids + [0] * (length - len(ids))


def _swift_sd3_loop(graphs, pipeline, prompt, noise, steps, vocab):
    """StableDiffusion3Pipeline.generateImages for one image, on ``graphs`` (role -> callable on numpy)."""
    from edgegen.bundling.apple_swift_sd3 import SD3_CONTRACT, SwiftDiscreteFlow

    def encode(text):
        hidden_1, pooled_1 = graphs["encoder"](np.array([_swift_ids(pipeline.tokenizer, text)], dtype=np.float32))
        hidden_2, pooled_2 = graphs["encoder_2"](np.array([_swift_ids(pipeline.tokenizer_2, text, vocab["!"])], dtype=np.float32))
        states = np.concatenate([hidden_1, hidden_2, np.zeros((1, 77, 2048), dtype=np.float32)], axis=2).transpose(0, 2, 1)[:, :, None, :]
        if "encoder_3" in graphs:
            ids = np.array([_swift_t5_ids(pipeline.tokenizer_3, text)], dtype=np.float32)
            t5 = graphs["encoder_3"](ids, (ids == 0).astype(np.float32))[..., : SD3_CONTRACT.t5_tokens]
        else:
            t5 = np.zeros((1, 4096, 1, 77), dtype=np.float32)
        return np.concatenate([states, t5], axis=3), np.concatenate([pooled_1, pooled_2], axis=1)

    (positive, pooled), (negative, negative_pooled) = encode(prompt), encode("")
    hidden = np.concatenate([positive, negative])  # the conditional row first
    pooled_states = np.concatenate([pooled, negative_pooled]).reshape(2, 2048, 1, 1)
    scheduler, latents = SwiftDiscreteFlow(steps), noise.copy()
    for t in scheduler.timesteps:
        output = graphs["transformer"](np.concatenate([latents, latents]), np.array([t, t], dtype=np.float32), hidden, pooled_states)
        guided = output[1:] + GUIDANCE * (output[:1] - output[1:])
        latents = scheduler.step(guided, t, latents)
    return graphs["decoder"](scheduler.denoised / SD3_CONTRACT.decoder_scale + SD3_CONTRACT.decoder_shift)[0]


def _our_sd3_loop(pipeline, prompt, noise, steps):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from edgegen.families.base import vae_decoder_module

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        encoded = [pipeline.encode_prompt(prompt=text, prompt_2=text, prompt_3=text, do_classifier_free_guidance=False, max_sequence_length=77) for text in (prompt, "")]
        hidden = torch.cat([each[0] for each in encoded])
        pooled = torch.cat([each[2] for each in encoded])
        latents = torch.from_numpy(noise)
        for t in scheduler.timesteps:
            output = pipeline.transformer(hidden_states=torch.cat([latents, latents]), timestep=t.expand(2), encoder_hidden_states=hidden, pooled_projections=pooled, return_dict=False)[0]
            guided = output[1:] + GUIDANCE * (output[:1] - output[1:])
            latents = scheduler.step(guided, t, latents).prev_sample
        return vae_decoder_module(pipeline.vae)(latents).numpy()[0]


@pytest.mark.parametrize("name", ["t5", "no-t5"])
def test_the_swift_sd3_loop_on_the_bundles_graphs_draws_what_our_loop_draws(name, sd3):

    from edgegen.bundling import apple_swift_sd3
    from edgegen.families import family_of
    from edgegen.families.loading import load_pipeline
    from edgegen.measure.metrics import psnr_db

    source, folder = sd3[name]
    pipeline = load_pipeline(source)
    modules = apple_swift_sd3.app_modules(pipeline, apple_swift_sd3.fit(source, family_of(source).name))

    graphs = {role: on_numpy(module) for role, module in modules.items()}
    assert ("encoder_3" in graphs) == (name == "t5")
    vocab = json.loads((folder / "vocab.json").read_text())
    for seed, prompt in enumerate(PROMPTS):
        noise = np.random.default_rng(seed).standard_normal((1, 4, 32, 32)).astype(np.float32)
        ours, theirs = _our_sd3_loop(pipeline, prompt, noise, STEPS), _swift_sd3_loop(graphs, pipeline, prompt, noise, STEPS, vocab)
        assert ours.std() > 0.05, "a flat image would match anything"
        assert psnr_db(ours, theirs) >= 30, (name, prompt, psnr_db(ours, theirs))
    # The port's sigmas are diffusers' FlowMatchEuler ones at shift 3 (both shift the low end twice).
    from diffusers import FlowMatchEulerDiscreteScheduler

    reference = FlowMatchEulerDiscreteScheduler(shift=3.0)
    reference.set_timesteps(28)
    assert np.allclose(apple_swift_sd3.SwiftDiscreteFlow(28).sigmas, reference.sigmas[:-1].numpy(), atol=1e-5)


def test_sd3_is_not_chunked(sd3, tmp_path):
    source, _ = sd3["no-t5"]
    result = CliRunner().invoke(app, ["bundle", str(source), "--format", "apple-swift", "-o", str(tmp_path / "out"), "--chunk-unet"])
    assert result.exit_code == 2 and "loads its MultiModalDiffusionTransformer whole" in result.stderr
    assert not (tmp_path / "out").exists()
