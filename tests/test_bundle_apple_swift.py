"""``edgegen bundle --format apple-swift``: the resources folder of ml-stable-diffusion's Swift pipeline.

The contract is read back from the written packages' specs (coremltools reads a spec without
loading the model) and the tokenizer files as BPETokenizer parses them. The Swift loop (PNDM from
Scheduler.swift, epsilon, guidance with the unconditional half first, the last step's predicted
original sample decoded from ``x0 / 0.18215``), ported to Python, runs the bundle's graphs and must
draw what our own loop draws (diffusers' PNDMScheduler around the pipeline's eager modules, on the
epsilons the Swift schedulers combine). Core ML predicts only on macOS: there the loop runs the packages
themselves; elsewhere it runs the graphs the packages were converted from, and the Core ML loop is
skipped with the reason.
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
STEPS = 5
GUIDANCE = 7.5


@pytest.fixture(scope="module")
def sources(pipeline_dir, tmp_path_factory):
    from edgegen.embedded.builders import build_embedded_student
    from tests.dummy_pipelines import stable_diffusion

    root = tmp_path_factory.mktemp("apple")
    # The embedded student: v-prediction, zero terminal SNR, 40 tokens. diffusers' test SD: epsilon, 77.
    return {"distilled": build_embedded_student(pipeline_dir, root / "distilled", "distilled"), "sd": stable_diffusion.build(root / "sd")}


@pytest.fixture(scope="module")
def bundles(sources, tmp_path_factory):
    root, written = tmp_path_factory.mktemp("apple-bundles"), {}
    # The UNet in two chunks, as for the Neural Engine on iOS (by default only above 1 GB of weights).
    for name, source, options in [*((name, source, []) for name, source in sources.items()), ("distilled-chunked", sources["distilled"], ["--chunk-unet"])]:
        result = CliRunner().invoke(app, ["bundle", str(source), "--format", "apple-swift", "-o", str(root / name), *options])
        assert result.exit_code == 0, result.output
        written[name] = root / name
    return written


def _unet_models(folder):
    from edgegen.bundling.apple_swift import UNET_CHUNKS

    chunked = any((folder / f"{UNET_CHUNKS[0]}{suffix}").exists() for suffix in (".mlpackage", ".mlmodelc"))
    return list(UNET_CHUNKS) if chunked else ["Unet"]


@pytest.mark.parametrize("name", ["distilled", "sd", "distilled-chunked"])
def test_the_resources_folder_meets_the_contract_read_back_from_its_specs(name, bundles, sources):
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    from edgegen.bundling.apple_swift import CONTRACT
    from edgegen.families.loading import load_pipeline
    from edgegen.schema.bundle import read_bundle_manifest

    folder = bundles[name]
    manifest = read_bundle_manifest(folder)
    compiled = platform.system() == "Darwin"
    suffix = ".mlmodelc" if compiled else ".mlpackage"
    models = ["TextEncoder", "VAEDecoder", "VAEEncoder", *_unet_models(folder)]
    assert _unet_models(folder) == (["UnetChunk1", "UnetChunk2"] if name.endswith("chunked") else ["Unet"])
    assert {f.path for f in manifest.files} == {f"{m}{suffix}" for m in models} | set(CONTRACT.tokenizer_files)
    if not compiled:
        assert all(any(f"xcrun coremlcompiler compile {m}.mlpackage ." in line for line in manifest.next_steps) for m in models)
        assert "not compiled: written as .mlpackage on a host without Xcode" in manifest.adaptations
    pipeline = load_pipeline(sources[name.removesuffix("-chunked")])
    hidden, latent = pipeline.unet.config.cross_attention_dim, pipeline.unet.config.sample_size
    expected = {
        "encoder": ({"input_ids": [1, 77]}, "last_hidden_state"),
        "unet": ({"sample": [2, 4, latent, latent], "timestep": [2], "encoder_hidden_states": [2, hidden, 1, 77]}, "noise_pred"),
        "decoder": ({"z": [1, 4, latent, latent]}, "image"),
        # Optional, for image-to-image: Encoder.swift checks the image against this input's shape.
        "image_encoder": ({"x": [1, 3, manifest.image_size, manifest.image_size]}, "latent"),
    }
    names = {**CONTRACT.models, "image_encoder": "VAEEncoder"}
    for role, (inputs, output) in expected.items():
        if compiled:
            continue  # a compiled model has no spec to read; the loop test runs it
        if role == "unet" and name.endswith("chunked"):
            first, second = (ct.utils.load_spec(str(folder / f"{m}.mlpackage")).description for m in _unet_models(folder))
            # Chunk 1 takes the app's inputs (Swift reads the latent shape from its "sample");
            # chunk 2 reads chunk 1's outputs by name, and ends in the one output.
            assert {i.name: list(i.type.multiArrayType.shape) for i in first.input} == inputs
            handed = {o.name for o in first.output}
            assert handed and {i.name for i in second.input} <= handed | set(inputs)
            assert [o.name for o in second.output] == [output]
            assert any(line.startswith("unet: split into UnetChunk1 and UnetChunk2") for line in manifest.adaptations)
            continue
        spec = ct.utils.load_spec(str(folder / f"{names[role]}.mlpackage"))
        declared = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
        assert declared == inputs, role
        # Every input a float32 multiarray: the Swift side sends Float32 MLMultiArrays.
        assert {i.type.multiArrayType.dataType for i in spec.description.input} == {ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32}
        assert [o.name for o in spec.description.output] == [output], role  # exactly one: Swift takes the first
        # Float16 ML programs, as ml-stable-diffusion's converter writes them for the Neural Engine.
        function = spec.mlProgram.functions["main"]
        computed = {MIL_pb2.DataType.Name(o.outputs[0].type.tensorType.dataType) for o in function.block_specializations[function.opset].operations if o.outputs}
        assert "FLOAT16" in computed, role  # a float32 program has no float16 tensor at all
    # BPETokenizer: vocab.json is {token: id}; merges.txt a version line, then two tokens a line, each ending in a newline.
    vocab = json.loads((folder / "vocab.json").read_text())
    assert vocab["<|startoftext|>"] == pipeline.tokenizer.bos_token_id and vocab["<|endoftext|>"] == pipeline.tokenizer.eos_token_id
    merges = (folder / "merges.txt").read_text()
    assert merges.startswith("#version") and merges.endswith("\n")
    assert all(len(line.split(" ")) == 2 for line in merges.splitlines()[1:])


def _swift_ids(tokenizer, prompt, pad_id=None):
    """BPETokenizer.tokenize: lowercased, <|startoftext|> ... <|endoftext|>, padded to 77 with
    <|endoftext|> (or the pad token it was made with: "!" for SDXL's second encoder)."""
    ids = tokenizer(prompt.strip().lower(), add_special_tokens=True).input_ids[:77]
    return ids + [tokenizer.eos_token_id if pad_id is None else pad_id] * (77 - len(ids))


def _swift_denoise(unet, embeddings, noise, steps, scheduler_name):
    """The Swift pipelines' loop: batch 2 (negative first), guidance, the Swift scheduler; the x0
    the pipeline decodes. ``unet(latents, timesteps)`` runs the bundle's UNet."""
    from edgegen.bundling.apple_swift import SWIFT_SCHEDULERS

    scheduler, latents = SWIFT_SCHEDULERS[scheduler_name](steps), noise.copy()
    for t in scheduler.timesteps:
        output = unet(np.concatenate([latents, latents]), np.array([t, t], dtype=np.float32))
        guided = output[:1] + GUIDANCE * (output[1:] - output[:1])
        latents = scheduler.step(guided, t, latents)
    return scheduler.denoised


def _swift_loop(graphs, pipeline, prompt, noise, steps, scheduler_name):
    """StableDiffusionPipeline.generateImages for one image, with ``graphs`` (role -> callable on numpy)."""
    from edgegen.bundling.apple_swift import CONTRACT

    def states(text):
        hidden = graphs["encoder"](np.array([_swift_ids(pipeline.tokenizer, text)], dtype=np.float32))  # [1, 77, D]
        return hidden.transpose(0, 2, 1)[:, :, None, :]  # Swift's manual transpose to [1, D, 1, 77]

    embeddings = np.concatenate([states(""), states(prompt)])  # the negative prompt first
    denoised = _swift_denoise(lambda x, t: graphs["unet"](x, t, embeddings), embeddings, noise, steps, scheduler_name)
    return graphs["decoder"](denoised / CONTRACT.latents_scale)[0]


def _swift_xl_loop(graphs, pipeline, prompt, noise, steps, scheduler_name, vocab):
    """StableDiffusionXLPipeline.generateImages for one image: both encoders' states concatenated
    on the feature axis, the second's pooled output, the configuration's default geometry."""
    from edgegen.bundling.apple_swift_xl import XL_CONTRACT

    def encode(text):
        hidden, _ = graphs["encoder"](np.array([_swift_ids(pipeline.tokenizer, text)], dtype=np.float32))
        hidden_2, pooled = graphs["encoder_2"](np.array([_swift_ids(pipeline.tokenizer_2, text, vocab["!"])], dtype=np.float32))
        return np.concatenate([hidden, hidden_2], axis=2), pooled

    (negative, negative_pooled), (positive, pooled) = encode(""), encode(prompt)
    embeddings = np.concatenate([negative, positive]).transpose(0, 2, 1)[:, :, None, :]
    text_embeds = np.concatenate([negative_pooled, pooled])
    geometry = np.array([XL_CONTRACT.default_geometry] * 2, dtype=np.float32)
    denoised = _swift_denoise(lambda x, t: graphs["unet"](x, t, embeddings, text_embeds, geometry), embeddings, noise, steps, scheduler_name)
    return graphs["decoder"](denoised / XL_CONTRACT.latents_scale)[0]


def _diffusers_denoise(pipeline, unet, noise, steps, scheduler_name):
    """diffusers' PNDMScheduler or DPMSolverMultistepScheduler (DPM-Solver++, second order,
    midpoint, as the Swift one) around ``unet(latents, model_timesteps)`` (the pipeline's eager
    UNet at the model timestep of each app timestep's noise level), on epsilons; the x0 decoded."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, PNDMScheduler

    from edgegen.bundling.apple_swift import CONTRACT, swift_alphas_cumprod
    from edgegen.bundling.fitting import model_alphas_cumprod, noise_level_timesteps

    prediction = pipeline.scheduler.config.prediction_type
    schedule = {"beta_start": CONTRACT.beta_start, "beta_end": CONTRACT.beta_end, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon"}
    combined = []
    if scheduler_name == "pndm":
        scheduler = PNDMScheduler(**schedule, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
        # The pipeline decodes convertModelOutput of the last PLMS-combined output, at that step's
        # timestep and sample: what diffusers hands its _get_prev_sample.
        get_prev_sample = scheduler._get_prev_sample

        def remember(sample, timestep, prev_timestep, model_output):
            combined[:] = [sample, int(timestep), model_output]
            return get_prev_sample(sample, timestep, prev_timestep, model_output)

        scheduler._get_prev_sample = remember
    else:
        # Its last step goes to sigma 0, which is the last x0: what the Swift pipeline decodes.
        scheduler = DPMSolverMultistepScheduler(
            **schedule, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
            timestep_spacing="linspace", final_sigmas_type="zero",
        )
    scheduler.set_timesteps(steps)
    table = noise_level_timesteps(model_alphas_cumprod(pipeline.scheduler), swift_alphas_cumprod())
    alphas = swift_alphas_cumprod()
    with torch.no_grad():
        latents = torch.from_numpy(noise)
        for t in scheduler.timesteps:
            output = unet(torch.cat([latents, latents]), torch.tensor([float(table[int(t)])] * 2))
            guided = output[:1] + GUIDANCE * (output[1:] - output[:1])
            a = float(alphas[int(t)])
            if prediction == "v_prediction":
                # The Swift schedulers combine epsilons (PLMS): each call's v becomes epsilon at its
                # own sample, before the combination (diffusers' v-prediction PNDM converts after).
                guided = a**0.5 * guided + (1 - a) ** 0.5 * latents
            if scheduler_name == "dpmpp" and scheduler.step_index == len(scheduler.timesteps) - 2 and steps < 15:
                # DPMSolverMultistepScheduler.swift also steps first-order at the second-to-last
                # timestep below 15 steps (lowerOrderSecond); diffusers only at the last. The
                # bundle cannot change the app's scheduler: our loop takes the app's order there.
                scheduler.lower_order_nums = 0
            latents = scheduler.step(guided, t, latents).prev_sample
        if combined:
            sample, timestep, output = combined
            a = float(alphas[timestep])
            latents = (sample - (1 - a) ** 0.5 * output) / a**0.5
    return latents


def _our_loop(pipeline, prompt, noise, steps, scheduler_name):
    import torch

    from edgegen.families.base import vae_decoder_module

    length = min(pipeline.tokenizer.model_max_length, pipeline.text_encoder.config.max_position_embeddings)
    with torch.no_grad():
        ids = [pipeline.tokenizer(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids for text in ("", prompt)]
        embeddings = torch.cat([pipeline.text_encoder(each)[0] for each in ids])
        latents = _diffusers_denoise(pipeline, lambda x, t: pipeline.unet(x, t, encoder_hidden_states=embeddings).sample, noise, steps, scheduler_name)
        return vae_decoder_module(pipeline.vae)(latents).numpy()[0]


def _our_xl_loop(pipeline, prompt, noise, steps, scheduler_name):
    """SDXL's eager modules, conditioned as the Swift XL pipeline conditions (the empty negative
    prompt encoded, the default geometry), through diffusers' schedulers."""
    import torch

    from edgegen.bundling.apple_swift_xl import XL_CONTRACT
    from edgegen.families.base import vae_decoder_module

    def encode(text):
        states = []
        for tokenizer, encoder in ((pipeline.tokenizer, pipeline.text_encoder), (pipeline.tokenizer_2, pipeline.text_encoder_2)):
            length = min(tokenizer.model_max_length, encoder.config.max_position_embeddings)
            ids = tokenizer(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
            outputs = encoder(ids, output_hidden_states=True)
            states.append(outputs.hidden_states[-2])
        return torch.cat(states, dim=-1), outputs.text_embeds

    with torch.no_grad():
        (negative, negative_pooled), (positive, pooled) = encode(""), encode(prompt)
        conditioning = {"text_embeds": torch.cat([negative_pooled, pooled]), "time_ids": torch.tensor([XL_CONTRACT.default_geometry] * 2)}
        embeddings = torch.cat([negative, positive])
        latents = _diffusers_denoise(
            pipeline, lambda x, t: pipeline.unet(x, t, encoder_hidden_states=embeddings, added_cond_kwargs=conditioning).sample, noise, steps, scheduler_name
        )
        return vae_decoder_module(pipeline.vae)(latents).numpy()[0]


def _check_loops(graphs, pipeline):
    from edgegen.measure.metrics import psnr_db

    latent = pipeline.unet.config.sample_size
    for scheduler_name in ("pndm", "dpmpp"):
        for seed, prompt in enumerate(PROMPTS):
            noise = np.random.default_rng(seed).standard_normal((1, 4, latent, latent)).astype(np.float32)
            ours = _our_loop(pipeline, prompt, noise, STEPS, scheduler_name)
            theirs = _swift_loop(graphs, pipeline, prompt, noise, STEPS, scheduler_name)
            assert ours.std() > 0.05, "a flat image would match anything"
            assert psnr_db(ours, theirs) >= 30, (scheduler_name, prompt, psnr_db(ours, theirs))


@pytest.mark.parametrize("name", ["distilled", "sd"])
def test_the_swift_loop_on_the_bundles_graphs_draws_what_our_loop_draws(name, sources):

    from edgegen.bundling import apple_swift
    from edgegen.families import family_of
    from edgegen.families.loading import load_pipeline

    pipeline = load_pipeline(sources[name])
    modules = apple_swift.app_modules(pipeline, apple_swift.fit(sources[name], family_of(sources[name]).name))

    _check_loops({role: on_numpy(module) for role, module in modules.items()}, pipeline)
    # The port's schedule is Scheduler.swift's: n + 1 UNet calls, the second-to-last timestep repeated.
    assert apple_swift.swift_pndm_timesteps(5) == [801, 601, 601, 401, 201, 1]
    assert apple_swift.swift_dpm_timesteps(5) == [999, 799, 599, 400, 200]  # 399.6 and 199.8 rounded
    assert 499 in apple_swift.swift_dpm_timesteps(14)  # 7 * Float(999 / 14) is 499.49997 in float32


@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML prediction needs macOS; the graphs the packages hold are checked by the loop test above")
@pytest.mark.parametrize("name", ["distilled", "sd", "distilled-chunked"])
def test_the_swift_loop_on_the_compiled_bundle_draws_what_our_loop_draws(name, bundles, sources):  # pragma: no cover - macOS
    import coremltools as ct

    from edgegen.bundling.apple_swift import CONTRACT
    from edgegen.families.loading import load_pipeline

    def run(role):
        names = _unet_models(bundles[name]) if role == "unet" else [CONTRACT.models[role]]
        models = [ct.models.CompiledMLModel(str(bundles[name] / f"{each}.mlmodelc"), ct.ComputeUnit.CPU_ONLY) for each in names]

        def call(*arrays):
            given = dict(zip(CONTRACT.inputs[role], arrays, strict=True))
            for model in models:  # ManagedMLModel's chunks: each next one gets the outputs merged over the inputs
                given = {**given, **model.predict(given)}
            return given[CONTRACT.outputs[role]]
        return call

    _check_loops({role: run(role) for role in CONTRACT.models}, load_pipeline(sources[name.removesuffix("-chunked")]))


@pytest.mark.parametrize("name", ["distilled", "sd"])
def test_the_swift_encoder_on_the_vae_encoder_graph_gives_the_models_scaled_latents(name, sources):
    """Encoder.swift: mean and log-variance from the first output, the log-variance clamped to
    [-30, 20], one normal draw, times encoderScaleFactor (0.18215): the model's scaled latents."""
    import torch

    from edgegen.bundling import apple_swift
    from edgegen.families import family_of
    from edgegen.families.loading import load_pipeline

    source = sources[name]
    pipeline = load_pipeline(source)
    fitted = apple_swift.fit(source, family_of(source).name)
    graphs = apple_swift.add_image_encoder(apple_swift.sd_graphs(pipeline, source, fitted, 0, 1, None), pipeline.vae)
    image = graphs.examples["image_encoder"][0]
    noise = torch.randn((1, 4) + tuple(s // (image.shape[-1] // fitted.latent_size) for s in image.shape[-2:]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        output = graphs.modules["image_encoder"](image)
        mean, logvar = output[:, :4], output[:, 4:].clamp(-30, 20)
        theirs = (mean + torch.exp(0.5 * logvar) * noise) * apple_swift.CONTRACT.latents_scale
        posterior = pipeline.vae.encode(image).latent_dist
        ours = (posterior.mean + posterior.std * noise) * pipeline.vae.config.scaling_factor
    assert ours.abs().max() > 0.1 and torch.allclose(theirs, ours, atol=1e-4), (theirs - ours).abs().max()


def test_a_vae_the_swift_encoder_cannot_take_gets_no_vae_encoder(pipeline_dir, tmp_path):
    """A decoder student's AutoencoderTiny encodes the latent itself (no mean and log-variance)."""
    from edgegen.bundling import apple_swift
    from edgegen.embedded.builders import build_embedded_decoder_student, build_embedded_student
    from edgegen.families import family_of
    from edgegen.families.loading import load_pipeline

    source = build_embedded_decoder_student(build_embedded_student(pipeline_dir, tmp_path / "fewstep", "few-step"), tmp_path / "tiny")
    pipeline = load_pipeline(source)
    fitted = apple_swift.fit(source, family_of(source).name)
    graphs = apple_swift.add_image_encoder(apple_swift.sd_graphs(pipeline, source, fitted, 0, 1, None), pipeline.vae)
    assert "image_encoder" not in graphs.models
    assert any(line.startswith("no VAEEncoder") and "AutoencoderTiny" in line for line in graphs.adaptations)


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    """diffusers' test SDXL (two 32-wide encoders, 32 latents) and its bundle."""
    from tests.dummy_pipelines import stable_diffusion_xl

    root = tmp_path_factory.mktemp("apple-xl")
    source = stable_diffusion_xl.build(root / "sdxl")
    result = CliRunner().invoke(app, ["bundle", str(source), "--format", "apple-swift", "-o", str(root / "bundle")])
    assert result.exit_code == 0, result.output
    return source, root / "bundle"


def test_the_xl_resources_folder_meets_the_xl_pipelines_contract(xl):
    import coremltools as ct

    from edgegen.bundling.apple_swift_xl import XL_CONTRACT
    from edgegen.schema.bundle import read_bundle_manifest

    _, folder = xl
    manifest = read_bundle_manifest(folder)
    if platform.system() == "Darwin":  # pragma: no cover - compiled: no spec to read; the loop test runs it
        assert {f.path for f in manifest.files} >= {f"{m}.mlmodelc" for m in XL_CONTRACT.models.values()}
        return
    assert {f.path for f in manifest.files} == {f"{m}.mlpackage" for m in XL_CONTRACT.models.values()} | {"VAEEncoder.mlpackage", "vocab.json", "merges.txt"}
    assert any("StableDiffusionXLPipeline(resourcesAt:" in line and "decoderScaleFactor = 0.13025" in line for line in manifest.next_steps)
    expected = {  # TextEncoderXL.swift reads both outputs by name; Unet.swift sends text_embeds and time_ids
        "encoder": ({"input_ids": [1, 77]}, {"hidden_embeds": [1, 77, 32], "pooled_outputs": [1, 32]}),
        "encoder_2": ({"input_ids": [1, 77]}, {"hidden_embeds": [1, 77, 32], "pooled_outputs": [1, 32]}),
        "unet": (
            {"sample": [2, 4, 32, 32], "timestep": [2], "encoder_hidden_states": [2, 64, 1, 77], "text_embeds": [2, 32], "time_ids": [2, 6]},
            {"noise_pred": [2, 4, 32, 32]},
        ),
        "decoder": ({"z": [1, 4, 32, 32]}, {"image": [1, 3, 64, 64]}),
        "image_encoder": ({"x": [1, 3, 64, 64]}, {"latent": [1, 8, 32, 32]}),
    }
    for role, (inputs, outputs) in expected.items():
        description = ct.utils.load_spec(str(folder / f"{({**XL_CONTRACT.models, 'image_encoder': 'VAEEncoder'})[role]}.mlpackage")).description
        assert {i.name: list(i.type.multiArrayType.shape) for i in description.input} == inputs, role
        assert {o.name for o in description.output} == set(outputs), role
        assert {i.type.multiArrayType.dataType for i in description.input} == {ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32}, role


def test_the_swift_xl_loop_on_the_bundles_graphs_draws_what_our_loop_draws(xl):

    from edgegen.bundling import apple_swift_xl
    from edgegen.families import family_of
    from edgegen.families.loading import load_pipeline
    from edgegen.measure.metrics import psnr_db

    source, folder = xl
    pipeline = load_pipeline(source)
    modules = apple_swift_xl.app_modules(pipeline, apple_swift_xl.fit(source, family_of(source).name))

    graphs = {role: on_numpy(module) for role, module in modules.items()}
    vocab = json.loads((folder / "vocab.json").read_text())
    assert vocab["!"] != pipeline.tokenizer_2.pad_token_id  # the app's second padding is not the model's: fitted in the graph
    for scheduler_name in ("pndm", "dpmpp"):
        for seed, prompt in enumerate(PROMPTS):
            noise = np.random.default_rng(seed).standard_normal((1, 4, 32, 32)).astype(np.float32)
            ours = _our_xl_loop(pipeline, prompt, noise, STEPS, scheduler_name)
            theirs = _swift_xl_loop(graphs, pipeline, prompt, noise, STEPS, scheduler_name, vocab)
            assert ours.std() > 0.05, "a flat image would match anything"
            assert psnr_db(ours, theirs) >= 30, (scheduler_name, prompt, psnr_db(ours, theirs))


def test_another_family_is_refused_in_one_line(tmp_path):
    from tests.dummy_pipelines import pixart

    folder = pixart.build(tmp_path / "pixart")
    result = CliRunner().invoke(app, ["bundle", str(folder), "--format", "apple-swift", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "the Swift package has pipelines for Stable Diffusion 1.x/2.x, SDXL and SD3; this is a pixart pipeline" in result.stderr
    assert not (tmp_path / "out").exists()
