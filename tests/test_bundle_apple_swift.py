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
    models = ["TextEncoder", "VAEDecoder", *_unet_models(folder)]
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
    }
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
        spec = ct.utils.load_spec(str(folder / f"{CONTRACT.models[role]}.mlpackage"))
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


def _swift_ids(pipeline, prompt):
    """BPETokenizer.tokenize: lowercased, <|startoftext|> ... <|endoftext|>, padded with <|endoftext|> to 77."""
    ids = pipeline.tokenizer(prompt.strip().lower(), add_special_tokens=True).input_ids[:77]
    return ids + [pipeline.tokenizer.eos_token_id] * (77 - len(ids))


def _swift_loop(graphs, pipeline, prompt, noise, steps, scheduler_name):
    """StableDiffusionPipeline.generateImages for one image, with ``graphs`` (role -> callable on numpy)."""
    from edgegen.bundling.apple_swift import CONTRACT, SWIFT_SCHEDULERS

    def states(text):
        hidden = graphs["encoder"](np.array([_swift_ids(pipeline, text)], dtype=np.float32))  # [1, 77, D]
        return hidden.transpose(0, 2, 1)[:, :, None, :]  # Swift's manual transpose to [1, D, 1, 77]

    embeddings = np.concatenate([states(""), states(prompt)])  # the negative prompt first
    scheduler, latents = SWIFT_SCHEDULERS[scheduler_name](steps), noise.copy()
    for t in scheduler.timesteps:
        output = graphs["unet"](np.concatenate([latents, latents]), np.array([t, t], dtype=np.float32), embeddings)
        guided = output[:1] + GUIDANCE * (output[1:] - output[:1])
        latents = scheduler.step(guided, t, latents)
    return graphs["decoder"](scheduler.denoised / CONTRACT.latents_scale)[0]


def _our_loop(pipeline, prompt, noise, steps, scheduler_name):
    """diffusers' PNDMScheduler or DPMSolverMultistepScheduler (DPM-Solver++, second order,
    midpoint, as the Swift one) around the pipeline's eager modules, on epsilons."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, PNDMScheduler

    from edgegen.bundling.apple_swift import CONTRACT, swift_alphas_cumprod
    from edgegen.bundling.fitting import model_alphas_cumprod, noise_level_timesteps
    from edgegen.families.base import vae_decoder_module

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
    length = min(pipeline.tokenizer.model_max_length, pipeline.text_encoder.config.max_position_embeddings)
    with torch.no_grad():
        ids = [pipeline.tokenizer(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids for text in ("", prompt)]
        embeddings = torch.cat([pipeline.text_encoder(each)[0] for each in ids])
        latents = torch.from_numpy(noise)
        for t in scheduler.timesteps:
            output = pipeline.unet(torch.cat([latents, latents]), torch.tensor([float(table[int(t)])] * 2), encoder_hidden_states=embeddings).sample
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
    import torch

    from edgegen.bundling import apple_swift
    from edgegen.families import family_of
    from edgegen.families.loading import load_pipeline

    pipeline = load_pipeline(sources[name])
    modules = apple_swift.app_modules(pipeline, apple_swift.fit(sources[name], family_of(sources[name]).name))

    def run(module):
        def call(*arrays):
            with torch.no_grad():
                return module(*(torch.from_numpy(np.asarray(a)) for a in arrays)).numpy()
        return call

    _check_loops({role: run(module) for role, module in modules.items()}, pipeline)
    # The port's schedule is Scheduler.swift's: n + 1 UNet calls, the second-to-last timestep repeated.
    assert apple_swift.swift_pndm_timesteps(5) == [801, 601, 601, 401, 201, 1]
    assert apple_swift.swift_dpm_timesteps(5) == [999, 799, 599, 400, 200]  # 399.6 and 199.8 rounded


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


def test_another_family_is_refused_in_one_line(tmp_path):
    from tests.dummy_pipelines import stable_diffusion_xl

    folder = stable_diffusion_xl.build(tmp_path / "sdxl")
    result = CliRunner().invoke(app, ["bundle", str(folder), "--format", "apple-swift", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "a stable-diffusion-xl pipeline needs its own Swift pipeline" in result.stderr and not (tmp_path / "out").exists()
