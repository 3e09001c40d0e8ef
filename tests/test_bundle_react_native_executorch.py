"""``edgegen bundle --format react-native-executorch``: the five files its TextToImageModule loads.

The contract is read back from the written files (the ExecuTorch runtime's method metadata, the
tokenizer JSON through the tokenizers library), and the app's sampling loop, ported from its
C++ source (``AppPNDM``: PLMS steps, v-prediction, guidance 7.5, ``<|startoftext|>`` as the
unconditional prompt), runs the bundle's programs and must draw what our own loop draws from the
same prompt and noise: diffusers' PNDMScheduler around the pipeline's eager modules.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgegen.cli import app

pytestmark = pytest.mark.slow

PROMPTS = ["a red circle at the top left", "a small blue square"]
FLOAT, LONG = 6, 4  # ExecuTorch's ScalarType codes in method metadata: float32, int64
STEPS = 5  # 1000 / 5: the app's spacing and diffusers' "leading" one agree


@pytest.fixture(scope="module")
def distilled_dir(pipeline_dir, tmp_path_factory):
    from edgegen.embedded.builders import build_embedded_student

    return build_embedded_student(pipeline_dir, tmp_path_factory.mktemp("rne") / "distilled", "distilled")


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    from tests.dummy_pipelines import stable_diffusion

    return stable_diffusion.build(tmp_path_factory.mktemp("rne") / "sd")


def _bundle(source, folder):
    result = CliRunner().invoke(app, ["bundle", str(source), "--format", "react-native-executorch", "-o", str(folder)])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture(scope="module")
def bundles(distilled_dir, sd_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    # The embedded student: v-prediction on a zero-terminal-SNR schedule, 40 x 32 text states, a
    # 4x VAE. diffusers' test SD: epsilon, 77 x 32 text states, a 2x VAE.
    return {"distilled": (distilled_dir, _bundle(distilled_dir, root / "distilled")), "sd": (sd_dir, _bundle(sd_dir, root / "sd"))}


def _method(path):
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(path)
    return program, program.load_method("forward")


@pytest.mark.parametrize("name", ["distilled", "sd"])
def test_the_bundle_meets_the_contract_read_back_from_its_files(name, bundles):
    from tokenizers import Tokenizer

    from edgegen.artifact import sha256_file
    from edgegen.bundling.react_native_executorch import CONTRACT
    from edgegen.schema.bundle import read_bundle_manifest

    _, folder = bundles[name]
    manifest = read_bundle_manifest(folder)
    assert manifest.format == "react-native-executorch" and manifest.image_size % 32 == 0
    assert {f.role: f.path for f in manifest.files} == CONTRACT.files
    for entry in manifest.files:
        assert sha256_file(folder / entry.path) == entry.sha256
    latent = manifest.image_size // 8
    expected = {
        "encoder": ([([1, 77], LONG), ([1, 77], LONG)], [1, 77, 768]),
        "unet": ([([2, 4, latent, latent], FLOAT), ([1], LONG), ([2, 77, 768], FLOAT)], [2, 4, latent, latent]),
        "decoder": ([([1, 4, latent, latent], FLOAT)], [1, manifest.image_size, manifest.image_size, 3]),
    }
    for role, (inputs, output) in expected.items():
        program, method = _method(folder / CONTRACT.files[role])
        assert program.method_names == {"forward"}
        meta = method.metadata
        assert [(list(meta.input_tensor_meta(i).sizes()), meta.input_tensor_meta(i).dtype()) for i in range(meta.num_inputs())] == inputs, role
        assert list(meta.output_tensor_meta(0).sizes()) == output and meta.output_tensor_meta(0).dtype() == FLOAT, role
        assert next(f for f in manifest.files if f.role == role).parity_psnr_db >= 60
    # The app reads four numbers and pads nothing itself: the tokenizer file does.
    config = json.loads((folder / CONTRACT.files["scheduler"]).read_text())
    assert all(isinstance(config[key], (int, float)) for key in CONTRACT.scheduler_keys)
    tokenizer_json = json.loads((folder / CONTRACT.files["tokenizer"]).read_text())
    assert tokenizer_json["padding"]["strategy"] == {"Fixed": 77} and tokenizer_json["post_processor"]["type"] == "TemplateProcessing"
    tokenizer = Tokenizer.from_file(str(folder / CONTRACT.files["tokenizer"]))
    for text in ["a red circle", "word " * 200, CONTRACT.unconditional_prompt]:
        assert len(tokenizer.encode(text).ids) == 77
    assert tokenizer.encode("word " * 200).ids[tokenizer_json["truncation"]["max_length"] - 1] == tokenizer.token_to_id("<|endoftext|>")


def _app_loop(folder, prompt, noise, steps, version="main"):
    """react-native-executorch's TextToImage::generate, in Python, on the bundle's files. Its
    tokenizer applies the JSON's post-processor on main (encodeWithSpecialTokens) and not in the
    v0.9 releases (encode with no start or end token)."""
    import torch
    from tokenizers import Tokenizer

    from edgegen.bundling.react_native_executorch import CONTRACT, AppPNDM

    tokenizer = Tokenizer.from_file(str(folder / CONTRACT.files["tokenizer"]))
    encoder, unet, decoder = (_method(folder / CONTRACT.files[role])[1] for role in ("encoder", "unet", "decoder"))

    def embed(text):
        ids = torch.tensor([tokenizer.encode(text, add_special_tokens=version == "main").ids], dtype=torch.int64)
        return encoder.execute([ids, (ids != 0).to(torch.int64)])[0]

    embeddings = torch.cat([embed(CONTRACT.unconditional_prompt), embed(prompt)])  # uncond first
    scheduler = AppPNDM(json.loads((folder / CONTRACT.files["scheduler"]).read_text()))
    latents = noise.copy()
    for t in scheduler.set_timesteps(steps):
        output = unet.execute([torch.from_numpy(np.concatenate([latents, latents])), torch.tensor([t], dtype=torch.int64), embeddings])[0].numpy()
        guided = output[:1] * (1 - CONTRACT.guidance_scale) + output[1:] * CONTRACT.guidance_scale
        latents = scheduler.step(guided, t, latents)
    return decoder.execute([torch.from_numpy(latents / CONTRACT.latents_scale)])[0].numpy()[0]


def _our_loop(source, folder, prompt, noise, steps):
    """The same generation through diffusers' PNDMScheduler and the pipeline's eager modules, at
    the model's timestep of each app timestep's noise level; an epsilon model stays epsilon."""
    import torch
    from diffusers import PNDMScheduler

    from edgegen.bundling.fitting import model_alphas_cumprod, noise_level_timesteps
    from edgegen.bundling.react_native_executorch import CONTRACT, app_alphas_cumprod
    from edgegen.families.base import vae_decoder_module
    from edgegen.families.loading import load_pipeline

    pipeline = load_pipeline(source)
    config = json.loads((folder / CONTRACT.files["scheduler"]).read_text())
    prediction = pipeline.scheduler.config.prediction_type
    scheduler = PNDMScheduler.from_config({**config, "prediction_type": prediction})
    scheduler.set_timesteps(steps)
    table = noise_level_timesteps(model_alphas_cumprod(pipeline.scheduler), app_alphas_cumprod(config["beta_start"], config["beta_end"], config["num_train_timesteps"]))
    length = min(pipeline.tokenizer.model_max_length, pipeline.text_encoder.config.max_position_embeddings)
    with torch.no_grad():
        # The pipeline's own tokenizer, and its own unconditional prompt ("").
        ids = [pipeline.tokenizer(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids for text in ("", prompt)]
        states = [pipeline.text_encoder(each)[0] for each in ids]
        embeddings = torch.cat(states)
        latents = torch.from_numpy(noise)
        for t in scheduler.timesteps:
            model_t = torch.tensor([float(table[int(t)])] * 2)
            output = pipeline.unet(torch.cat([latents, latents]), model_t, encoder_hidden_states=embeddings).sample
            guided = output[:1] + CONTRACT.guidance_scale * (output[1:] - output[:1])
            latents = scheduler.step(guided, t, latents).prev_sample
        image = vae_decoder_module(pipeline.vae)(latents)
    repeat = CONTRACT.latent_downsample // 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    image = image.repeat_interleave(repeat, 2).repeat_interleave(repeat, 3)
    return ((image / 2 + 0.5).clamp(0, 1) * 255).permute(0, 2, 3, 1).numpy()[0]


@pytest.mark.parametrize("name,version", [("distilled", "main"), ("sd", "main"), ("distilled", "v0.9")])
def test_the_apps_sampling_loop_on_the_bundle_draws_what_our_loop_draws(name, version, bundles):
    from edgegen.bundling.react_native_executorch import AppPNDM, app_timesteps
    from edgegen.measure.metrics import psnr_db
    from edgegen.schema.bundle import read_bundle_manifest

    source, folder = bundles[name]
    manifest = read_bundle_manifest(folder)
    latent = manifest.image_size // 8
    for seed, prompt in enumerate(PROMPTS):
        noise = np.random.default_rng(seed).standard_normal((1, 4, latent, latent)).astype(np.float32)
        ours = _our_loop(source, folder, prompt, noise, STEPS)
        theirs = _app_loop(folder, prompt, noise, STEPS, version)
        assert theirs.shape == (manifest.image_size, manifest.image_size, 3) and theirs.min() >= 0 and theirs.max() < 256
        # The app writes static_cast<uint8_t> of each value (a truncation); our pipeline rounds.
        written, ours = np.floor(theirs), np.round(ours)
        assert ours.std() > 1, "a flat image would match anything"
        assert psnr_db(ours, written) >= 30, (name, version, prompt, psnr_db(ours, written))
    # The port's schedule is the app's: n + 1 UNet calls, the second-to-last timestep repeated.
    assert app_timesteps(5, 1000, 1) == [801, 601, 601, 401, 201, 1]
    assert app_timesteps(3, 1000, 1) == [668, 334, 334, 1]  # round(1000 / 3 * i): not diffusers' 1000 // 3
    assert 814 in app_timesteps(16, 1000, 1)  # 13 * 62.5 = 812.5: std::round takes halves away from zero
    assert len(AppPNDM({"beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000, "steps_offset": 1}).set_timesteps(20)) == 21


def test_a_model_the_app_cannot_take_is_refused_in_one_line(sd_dir, tmp_path):
    import shutil

    runner = CliRunner()
    # SD 2.x's 1024-wide text states: the app sizes its buffers for 768.
    wide = tmp_path / "wide"
    shutil.copytree(sd_dir, wide)
    config_path = wide / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["cross_attention_dim"] = 1024
    config_path.write_text(json.dumps(config))
    result = runner.invoke(app, ["bundle", str(wide), "--format", "react-native-executorch", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "fixes the text states at [2, 77, 768]; this UNet attends to 1024-wide states" in result.stderr
    assert not (tmp_path / "out").exists()
    result = runner.invoke(app, ["bundle", str(sd_dir), "--format", "android-app", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "unknown bundle format 'android-app'; choose one of: react-native-executorch" in result.stderr


def test_another_family_is_refused_in_one_line(tmp_path):
    from tests.dummy_pipelines import stable_diffusion_xl

    folder = stable_diffusion_xl.build(tmp_path / "sdxl")
    result = CliRunner().invoke(app, ["bundle", str(folder), "--format", "react-native-executorch", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "this is a stable-diffusion-xl pipeline" in result.stderr and not (tmp_path / "out").exists()


def test_the_ids_apps_send_become_the_ids_the_pipeline_tokenizes():
    import torch

    from edgegen.bundling.fitting import clip_ids_as_the_pipeline_tokenizes

    bos, eos, tokens = 49406, 49407, 6

    def fix(ids, pad=eos):
        return clip_ids_as_the_pipeline_tokenizes(torch.tensor([ids + [pad] * (8 - len(ids))]), tokens, bos, eos, pad)[0].tolist()

    assert fix([bos, 5, 6, eos]) == [bos, 5, 6, eos, eos, eos]  # main: already the pipeline's
    assert fix([bos, bos, eos]) == [bos, eos, eos, eos, eos, eos]  # main's unconditional "<|startoftext|>"
    assert fix([5, 6]) == [bos, 5, 6, eos, eos, eos]  # v0.9: no start or end token
    assert fix([bos]) == [bos, eos, eos, eos, eos, eos]  # v0.9's unconditional
    assert fix([5, 6, 7, 8, 9, 10, 11, 12]) == [bos, 5, 6, 7, 8, eos]  # cut at the encoder's length: the end token kept last
    assert fix([bos, 5, eos], pad=0) == [bos, 5, eos, 0, 0, 0]  # a model that pads with "!" (0)
    assert fix([bos, 5, 0, 6, 7, 8, 9, 10], pad=0) == [bos, 5, 0, 6, 7, eos]  # a "!" inside a cut prompt: still cut
    assert fix([bos, 5, eos], pad=0)[:3] == fix([bos, 5, eos, 0])[:3]  # the app's "!" padding after the end
    assert clip_ids_as_the_pipeline_tokenizes(torch.tensor([[bos, 5, eos, eos, eos, eos]]), tokens, bos, eos, 0)[0].tolist() == [bos, 5, eos, 0, 0, 0]


def test_app_timesteps_are_looked_up_by_noise_level_and_the_range_the_model_lacks_is_said():
    from edgegen.bundling.fitting import beyond_the_model, noise_level_timesteps, scaled_linear_alphas_cumprod

    app = scaled_linear_alphas_cumprod(0.00085, 0.012, 1000)
    assert abs(noise_level_timesteps(app, app) - range(1000)).max() < 1e-2  # the same schedule: the identity
    assert beyond_the_model(app, app) is None
    # A model trained on 500 timesteps of a gentler schedule: the app's t maps to where its noise
    # level is, and the app's noisiest steps lie beyond the model's last one.
    model = scaled_linear_alphas_cumprod(0.00085, 0.006, 500)
    table = noise_level_timesteps(model, app)
    assert (table <= 499).all() and (abs(np.interp(table, range(500), model) - app)[table < 499] < 2e-3).all()
    assert "of the app's timesteps are noisier than the model's last" in beyond_the_model(model, app)
