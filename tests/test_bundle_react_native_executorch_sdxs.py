"""``edgegen bundle --format react-native-executorch-sdxs``: the one ``.pte`` (methods encode,
denoise, decode) and tokenizer.json of react-native-executorch's rewrite.

The method schemas its loader checks are read back from the program's method metadata, and its
TypeScript loop (``sdxsTextToImage.ts``: pad the ids with 49407 to 77, encode, one denoise at
timestep 999, the fixed update, decode, scale by 255) runs on the bundle and must draw what
diffusers' DDIMScheduler draws with the few-step student from the same prompt and noise.
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from edgegen.cli import app

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle at the top left", "a small blue square"]
FLOAT, LONG = 6, 4  # ExecuTorch's ScalarType codes in method metadata: float32, int64


@pytest.fixture(scope="module")
def fewstep_dir(pipeline_dir, tmp_path_factory):
    from edgegen.embedded.builders import build_embedded_student

    return build_embedded_student(pipeline_dir, tmp_path_factory.mktemp("sdxs") / "fewstep", "few-step")


@pytest.fixture(scope="module")
def bundle(fewstep_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxs-bundle") / "bundle"
    result = CliRunner().invoke(app, ["bundle", str(fewstep_dir), "--format", "react-native-executorch-sdxs", "-o", str(folder)])
    assert result.exit_code == 0, result.output
    return folder


def test_the_program_has_the_method_schemas_the_app_checks_at_load(bundle):
    from executorch.runtime import Runtime

    from edgegen.artifact import sha256_file
    from edgegen.bundling.react_native_executorch_sdxs import CONTRACT
    from edgegen.schema.bundle import read_bundle_manifest

    manifest = read_bundle_manifest(bundle)
    assert manifest.format == "react-native-executorch-sdxs" and manifest.image_size == 512
    assert {f.role: f.path for f in manifest.files} == CONTRACT.files
    for entry in manifest.files:
        assert sha256_file(bundle / entry.path) == entry.sha256
    assert next(f for f in manifest.files if f.role == "model").parity_psnr_db >= 60
    program = Runtime.get().load_program(bundle / CONTRACT.files["model"])
    assert program.method_names == {"encode", "denoise", "decode"}
    expected = {  # validateModelSchema in sdxsTextToImage.ts
        "encode": ([([1, 77], LONG)], [1, 77, 768]),
        "denoise": ([([1, 4, 64, 64], FLOAT), ([1], LONG), ([1, 77, 768], FLOAT)], [1, 4, 64, 64]),
        "decode": ([([1, 4, 64, 64], FLOAT)], [1, 3, 512, 512]),
    }
    for name, (inputs, output) in expected.items():
        meta = program.load_method(name).metadata
        assert [(list(meta.input_tensor_meta(i).sizes()), meta.input_tensor_meta(i).dtype()) for i in range(meta.num_inputs())] == inputs, name
        assert meta.num_outputs() == 1 and list(meta.output_tensor_meta(0).sizes()) == output and meta.output_tensor_meta(0).dtype() == FLOAT, name
    # The embedded student lacks the app's padding id: the manifest says how it is read.
    assert any(line.startswith("ids: this vocabulary has") for line in manifest.adaptations)


def _app_loop(folder, prompt, noise, tokenization):
    """sdxsTextToImage.ts in Python, on the bundle's files. Its tokenizer passes no start or end
    token (tokenizer.cpp: encode(text, 0, 0)); whether the JSON's padding applies is not in its
    source, so both are run, and the post-processor's specials too, in case the runtime applies them."""
    import torch
    from executorch.runtime import Runtime
    from tokenizers import Tokenizer

    from edgegen.bundling.react_native_executorch_sdxs import CONTRACT

    tokenizer = Tokenizer.from_file(str(folder / CONTRACT.files["tokenizer"]))
    if tokenization == "unpadded":
        tokenizer.no_padding()
    ids = tokenizer.encode(prompt, add_special_tokens=tokenization == "with specials").ids
    tokens = torch.tensor([[ids[i] if i < len(ids) else CONTRACT.pad_id for i in range(CONTRACT.tokens)]], dtype=torch.int64)
    program = Runtime.get().load_program(folder / CONTRACT.files["model"])
    embeddings = program.load_method("encode").execute([tokens])[0]
    latents = torch.from_numpy(noise)
    output = program.load_method("denoise").execute([latents, torch.tensor([CONTRACT.timestep], dtype=torch.int64), embeddings])[0]
    # JavaScript numbers are float64; the Float32Array stores float32.
    latents = (CONTRACT.sample_coeff * noise.astype(np.float64) + CONTRACT.noise_coeff * output.numpy().astype(np.float64)).astype(np.float32)
    image = program.load_method("decode").execute([torch.from_numpy(latents)])[0].numpy()[0]
    return np.clip(np.rint(image * 255.0), 0, 255)  # normalize to uint8, alpha 255 (saturating)


def _our_loop(source, prompt, noise):
    """The few-step student through diffusers' own DDIMScheduler (its scheduler, at its few-step
    timesteps) around the pipeline's eager modules, decoding the last step's predicted original
    sample, on the pipeline's own tokenization and the app's noise at the student's latent size
    (block means times the block: standard normal again); its image repeated to 512 px."""
    import torch
    from diffusers import DDIMScheduler

    from edgegen.families.base import vae_decoder_module
    from edgegen.families.loading import load_pipeline
    from edgegen.models.checkpoint import read_student_manifest

    pipeline = load_pipeline(source)
    timesteps = [int(t) for t in read_student_manifest(source).sampling.timesteps]
    scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    scheduler.set_timesteps(len(timesteps))
    assert scheduler.timesteps.tolist() == timesteps
    size = pipeline.unet.config.sample_size
    block = noise.shape[-1] // size
    length = min(pipeline.tokenizer.model_max_length, pipeline.text_encoder.config.max_position_embeddings)
    with torch.no_grad():
        ids = pipeline.tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        states = pipeline.text_encoder(ids)[0]
        latents = torch.nn.functional.avg_pool2d(torch.from_numpy(noise), block) * block
        assert abs(float(latents.std()) - 1) < 0.15 and abs(float(latents.mean())) < 0.15
        for t in scheduler.timesteps:
            step = scheduler.step(pipeline.unet(latents, t, encoder_hidden_states=states).sample, t, latents)
            latents = step.prev_sample
        image = vae_decoder_module(pipeline.vae)(step.pred_original_sample)
    image = image.repeat_interleave(512 // image.shape[-1], 2).repeat_interleave(512 // image.shape[-1], 3)
    return np.round(((image / 2 + 0.5).clamp(0, 1) * 255).numpy()[0])


def test_the_apps_loop_on_the_bundle_draws_what_diffusers_draws_with_the_student(fewstep_dir, bundle):
    from edgegen.measure.metrics import psnr_db

    for seed, prompt in enumerate(PROMPTS):
        noise = np.random.default_rng(seed).standard_normal((1, 4, 64, 64)).astype(np.float32)
        ours = _our_loop(fewstep_dir, prompt, noise)
        assert ours.shape == (3, 512, 512) and ours.std() > 1, "a flat image would match anything"
        for tokenization in ("padded", "unpadded", "with specials"):
            theirs = _app_loop(bundle, prompt, noise, tokenization)
            assert psnr_db(ours, theirs) >= 30, (prompt, tokenization, psnr_db(ours, theirs))
    # Another prompt draws another image: the text reaches the graph.
    noise = np.random.default_rng(0).standard_normal((1, 4, 64, 64)).astype(np.float32)
    assert psnr_db(_app_loop(bundle, PROMPTS[0], noise, "padded"), _app_loop(bundle, "a big green triangle", noise, "padded")) < 30


def test_a_model_the_loop_cannot_take_is_refused_in_one_line(pipeline_dir, tmp_path):
    result = CliRunner().invoke(app, ["bundle", str(pipeline_dir), "--format", "react-native-executorch-sdxs", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "calls denoise once" in result.stderr and "is not a student" in result.stderr
    assert not (tmp_path / "out").exists()
