"""One-call pipeline programs: a few-step student's text encoder, unrolled steps and decoder as one
exported program, against the component-by-component runner from the same token ids and noise."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from edgegen.cli import app
from tests.helpers import require_export, require_runtime

TIMESTEPS = [999, 499]
PROMPTS = ["a red circle at the top left", "a blue square at the bottom right"]
# Float32 programs differ from the runner only by op ordering (and where the host's scheduler
# arithmetic runs); int8 programs are held to the int8 export gate against the float runner.
MIN_FLOAT_PSNR_DB = 60.0
MIN_INT8_PSNR_DB = 25.0
RUNNABLE = ["executorch", "tflite", "onnx"]


def _few_step_folder(source, folder, scheduler: dict | None = None):
    """``source``'s weights as a 2-step student: what ``edgegen train adversarial`` records."""
    from edgegen.schema.base import write_json
    from edgegen.schema.checkpoint import STUDENT_MANIFEST_FILENAME, FewStepSchedule, Initialisation, StudentManifest

    shutil.copytree(source, folder)
    manifest = StudentManifest(
        edgegen_version="test", created_at="now", preset="base", teacher_dir=str(source),
        teacher_unet_sha256="0", teacher_parameters=1, student_parameters=1, architecture={}, scman=None,
        initialisation=Initialisation(copied=0, sliced=0, random=0),
        recipe={"name": "adversarial"}, sampling=FewStepSchedule(steps=len(TIMESTEPS), timesteps=TIMESTEPS),
    )
    write_json(folder / STUDENT_MANIFEST_FILENAME, manifest)
    if scheduler:
        path = folder / "scheduler" / "scheduler_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **scheduler}))
    return folder


@pytest.fixture(scope="module")
def few_step_dir(pipeline_dir, tmp_path_factory):
    # The embedded default is a v-prediction, zero-terminal-SNR model: alpha is exactly 0 at 999.
    return _few_step_folder(pipeline_dir, tmp_path_factory.mktemp("one-call") / "student")


@pytest.fixture(scope="module")
def programs(few_step_dir, tmp_path_factory):
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.families.loading import load_pipeline

    student, root, cache = load_pipeline(few_step_dir), tmp_path_factory.mktemp("programs"), {}

    def get(target: str, quantize: str = "none", steps: int | None = None):
        key = (target, quantize, steps)
        if key not in cache:
            options = ExportOptions(quantize=quantize, pipeline_steps=steps)
            cache[key] = export_component(student, few_step_dir, "pipeline", target, root / f"{target}-{quantize}-{steps}", options)
        return cache[key]

    return get


def _images(case, prompts=PROMPTS):
    from edgegen.sampling.loop import initial_latents

    return [case.generate(prompt, initial_latents(case.latent_shape, seed), seed).image for seed, prompt in enumerate(prompts)]


@pytest.mark.parametrize(("prediction", "guidance"), [("v_prediction", 1.0), ("v_prediction", 3.0), ("epsilon", 1.0)])
def test_the_program_computes_what_the_runner_does(pipeline_dir, tmp_path, prediction, guidance):
    """Eagerly: the unrolled steps, guidance inside the graph and each parameterisation."""
    import torch

    from edgegen.exporting.one_call import build_program
    from edgegen.families.loading import load_pipeline
    from edgegen.sampling.loop import initial_latents, load_case, sampling_plan

    scheduler = None if prediction == "v_prediction" else {"prediction_type": "epsilon", "rescale_betas_zero_snr": False}
    folder = _few_step_folder(pipeline_dir, tmp_path / "student", scheduler)
    program = build_program(load_pipeline(folder), folder, None, guidance)
    assert program.program.prediction_type == prediction and program.program.timesteps == TIMESTEPS
    assert program.program.guidance_scale == guidance
    runner = load_case(folder, None, sampling_plan(folder, 2, guidance))
    tokenizer = runner.tokenizers["tokenizer"]
    for seed, prompt in enumerate(PROMPTS):
        latents = initial_latents(runner.latent_shape, seed)
        ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            image = program.module(ids, torch.from_numpy(latents))[0].numpy()
        np.testing.assert_allclose(image, runner.generate(prompt, latents, seed).image, atol=2e-5, rtol=0)


@pytest.mark.parametrize("target", RUNNABLE)
def test_one_call_program_matches_the_component_runner(target, few_step_dir, programs, exported):
    from edgegen.measure.quality import image_psnr_db
    from edgegen.sampling.loop import OneCallPipeline, load_case, sampling_plan

    require_runtime(target)
    artifact = programs(target)
    manifest = artifact.manifest
    assert artifact.folder.name.endswith("-2-steps") and manifest.component == "pipeline"
    assert manifest.parity.measured and manifest.parity.psnr_db >= MIN_FLOAT_PSNR_DB
    assert manifest.program.timesteps == TIMESTEPS and manifest.program.alphas_cumprod[0] == 0.0
    assert [spec.name for spec in manifest.inputs] == ["input_ids", "latents"] and [spec.name for spec in manifest.outputs] == ["image"]
    assert set(manifest.program.components) == {"text_encoder", "denoiser", "vae_decoder"}
    assert (artifact.folder / manifest.program.tokenizer_folder / "tokenizer.json").is_file()
    plan = sampling_plan(few_step_dir, 2, 1.0)
    one_call = load_case(few_step_dir, {"pipeline": artifact.folder}, plan)
    assert isinstance(one_call, OneCallPipeline)
    # The component artifacts exported from the same weights (the teacher folder's: the hashes agree).
    runner = load_case(few_step_dir, {name: exported(name, target).folder for name in ("text_encoder", "denoiser", "vae_decoder")}, plan)
    for program_image, runner_image in zip(_images(one_call), _images(runner), strict=True):
        assert program_image.shape == (3, 32, 32) and np.abs(program_image).max() <= 1.0
        assert image_psnr_db(runner_image, program_image) >= MIN_FLOAT_PSNR_DB
    generation = one_call.generate(PROMPTS[0], np.zeros(one_call.latent_shape, np.float32), 0)
    assert list(generation.call_ms) == ["pipeline"] and generation.step_latents == []


def test_int8_one_step_program_keeps_the_float_runners_image(few_step_dir, programs):
    from edgegen.measure.quality import image_psnr_db
    from edgegen.sampling.loop import load_case, sampling_plan

    require_runtime("tflite")
    artifact = programs("tflite", "int8", steps=1)
    assert artifact.folder.name == "pipeline-tflite-int8-1-steps"
    assert artifact.manifest.program.timesteps == TIMESTEPS[:1]
    assert artifact.manifest.quantization.scheme == "int8" and artifact.manifest.quantization.details["calibration_sets"] > 0
    plan = sampling_plan(few_step_dir, 2, 1.0, few_steps=1)
    float_runner = load_case(few_step_dir, None, plan)
    program = load_case(few_step_dir, {"pipeline": artifact.folder}, plan)
    for expected, produced in zip(_images(float_runner), _images(program), strict=True):
        assert image_psnr_db(expected, produced) >= MIN_INT8_PSNR_DB


def test_core_ml_converts_the_program(programs):
    require_export("coreml")
    artifact = programs("coreml", steps=1)
    assert artifact.manifest.model_file.endswith(".mlpackage")
    parity = artifact.manifest.parity
    import platform

    if platform.system() != "Darwin":
        assert not parity.measured and "macOS" in parity.reason


def test_compare_runs_a_one_call_program_as_a_case(few_step_dir, pipeline_dir, programs, tmp_path):
    require_runtime("onnx")
    root = tmp_path / "artifacts"
    root.mkdir()
    shutil.copytree(programs("onnx").folder, root / programs("onnx").folder.name)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    out = tmp_path / "compare"
    result = CliRunner().invoke(app, ["compare", "--prompts", str(prompts), "--teacher", str(pipeline_dir), "--student", str(few_step_dir),
                                      "--artifacts", str(root), "--output", str(out / "results.jsonl"), "--steps", "2", "--runs", "1", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    case = next(row for row in rows if row["case_id"] == "student/onnx-one-call/2-steps")
    assert case["runtime"] == "onnx" and case["export_fidelity"]["image_psnr_db"] >= MIN_FLOAT_PSNR_DB
    assert [timing["component"] for timing in case["latency"]["per_component"]] == ["pipeline"]
    assert case["latency"]["per_component"][0]["calls_per_image"] == 1
    # Asked for another number of steps than the program runs: one line, before any case runs.
    again = CliRunner().invoke(app, ["compare", "--prompts", str(prompts), "--teacher", str(pipeline_dir), "--student", str(few_step_dir),
                                     "--artifacts", str(root), "--output", str(tmp_path / "again" / "results.jsonl"), "--student-steps", "1", "--runs", "1"])
    assert again.exit_code == 2 and "runs timesteps [999, 499] in one call; this case asks for timesteps [999]" in again.output
    assert not (tmp_path / "again" / "results.jsonl").exists()


def test_bad_requests_are_refused_in_one_line(pipeline_dir, few_step_dir, tmp_path):
    def export(*args):
        return CliRunner().invoke(app, ["export", *args, "-o", str(tmp_path / "out")])

    cases = [
        ((str(pipeline_dir), "--component", "pipeline"), "is not a student: a one-call pipeline unrolls a few-step student's fixed schedule"),
        ((str(few_step_dir), "--component", "pipeline", "--component", "denoiser"), "export it on its own"),
        ((str(few_step_dir), "--component", "pipeline", "--steps", "3"), "2-step student (timesteps [999, 499]); --steps must be 1..2"),
        ((str(few_step_dir), "--component", "denoiser", "--steps", "1"), "apply to --component pipeline"),
        ((str(few_step_dir), "--component", "pipeline", "--batch-size", "2"), "one image per call"),
    ]
    for args, message in cases:
        result = export(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_mixed_precision_budget_no_program_meets_is_refused(few_step_dir, tmp_path):
    """``--quantize auto`` picks the program's float layers as it does a component's; a budget the
    simulation cannot reach is one line naming the best, and nothing is written."""
    require_export("tflite")
    result = CliRunner().invoke(app, ["export", str(few_step_dir), "--component", "pipeline", "--steps", "1", "--target", "tflite",
                                      "--quantize", "auto", "--min-psnr", "200", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "no int8 mix of pipeline meets 200.0 dB: the best simulated is" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
