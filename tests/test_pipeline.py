"""The edge pipeline runner: exported artifacts reproduce the eager pipeline from the same latents."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.conftest import runnable_targets

STEPS = 3
GUIDANCE = 3.0
PROMPT = "a blue square at the bottom right"
SEED = 5
# Float32 conversions differ from eager only by op ordering; through 3 guided steps and the
# decoder that stays far below what a 40 dB image PSNR allows.
MIN_FLOAT_IMAGE_PSNR_DB = 40.0
MAX_FLOAT_LATENT_ABS_ERROR = 1e-3


@pytest.fixture(scope="module")
def eager_generation(pipeline_dir):
    from edgegen.pipeline import SamplingPlan, initial_latents, load_case

    case = load_case(pipeline_dir, None, SamplingPlan(STEPS, GUIDANCE))
    latents = initial_latents(case.latent_shape, SEED)
    return case, latents, case.generate(PROMPT, latents, SEED)


def _artifact_dirs(exported, target):
    from edgegen.components import COMPONENT_NAMES

    return {name: exported(name, target).folder for name in COMPONENT_NAMES}


def test_eager_runner_counts_calls_and_keeps_every_step(eager_generation):
    _, latents, generation = eager_generation
    assert generation.image.shape == (3, 32, 32)
    assert np.isfinite(generation.image).all() and np.abs(generation.image).max() <= 1.0
    assert len(generation.step_latents) == STEPS
    assert len(generation.call_ms["denoiser"]) == STEPS * 2  # classifier-free guidance, batch 1
    assert len(generation.call_ms["text_encoder"]) == 2  # prompt and empty prompt
    assert len(generation.call_ms["vae_decoder"]) == 1
    assert not np.allclose(generation.step_latents[-1], latents)


def test_eager_runner_is_deterministic_and_driven_by_the_latents(eager_generation):
    from edgegen.pipeline import initial_latents

    case, latents, generation = eager_generation
    again = case.generate(PROMPT, latents, SEED)
    np.testing.assert_array_equal(again.image, generation.image)
    other = case.generate(PROMPT, initial_latents(case.latent_shape, SEED + 1), SEED)
    assert np.abs(other.image - generation.image).max() > 1e-3


@pytest.mark.slow  # exports all three components per target (shared with other test files)
@pytest.mark.parametrize("target", runnable_targets())
def test_exported_pipeline_matches_eager_with_same_latents(target, pipeline_dir, exported, eager_generation):
    from edgegen.pipeline import SamplingPlan, load_case
    from edgegen.quality import image_psnr_db

    _, latents, reference = eager_generation
    case = load_case(pipeline_dir, _artifact_dirs(exported, target), SamplingPlan(STEPS, GUIDANCE))
    generation = case.generate(PROMPT, latents, SEED)
    for step, (want, got) in enumerate(zip(reference.step_latents, generation.step_latents, strict=True)):
        error = float(np.abs(want - got).max())
        assert error < MAX_FLOAT_LATENT_ABS_ERROR, f"step {step}: latent max abs error {error:.3g}"
    psnr = image_psnr_db(reference.image, generation.image)
    assert psnr > MIN_FLOAT_IMAGE_PSNR_DB, f"{target}: image PSNR {psnr:.1f} dB"


def test_few_step_schedule_from_the_student_manifest(pipeline_dir, tmp_path):
    from edgegen.checkpoint import read_student_manifest
    from edgegen.pipeline import initial_latents, load_case, sampling_plan
    from edgegen.schema.base import write_json
    from edgegen.schema.checkpoint import Initialisation, StudentManifest, STUDENT_MANIFEST_FILENAME

    folder = tmp_path / "few-step"
    shutil.copytree(pipeline_dir, folder)
    assert sampling_plan(folder, 7, 1.0).steps == 7  # no manifest: the --steps option
    manifest = StudentManifest(
        edgegen_version="test", created_at="now", preset="base", teacher_dir=str(pipeline_dir),
        teacher_unet_sha256="0", teacher_parameters=1, student_parameters=1, architecture={}, scman=None,
        initialisation=Initialisation(copied=0, sliced=0, random=0),
        recipe={"name": "adversarial", "sampling": {"steps": 2, "timesteps": [999, 499]}},
    )
    write_json(folder / STUDENT_MANIFEST_FILENAME, manifest)
    assert read_student_manifest(folder) is not None
    plan = sampling_plan(folder, 7, 1.0)
    assert plan.steps == 2 and plan.few_step_timesteps == (999, 499) and plan.calls_per_step == 1
    assert sampling_plan(folder, 7, 1.0, use_student_schedule=False).steps == 7
    case = load_case(folder, None, plan)
    generation = case.generate(PROMPT, initial_latents(case.latent_shape, SEED), SEED)
    assert len(generation.step_latents) == 2 and len(generation.call_ms["denoiser"]) == 2
    assert np.isfinite(generation.image).all()


def test_artifacts_of_another_pipeline_are_refused(pipeline_dir, exported, tmp_path):
    from safetensors.numpy import load_file, save_file

    from edgegen.errors import EdgegenError
    from edgegen.pipeline import check_artifacts

    target = runnable_targets()[0]
    other = tmp_path / "other"
    shutil.copytree(pipeline_dir, other)
    weights = next((other / "unet").glob("*.safetensors"))
    tensors = load_file(str(weights))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + np.float32(1e-3)
    save_file(tensors, str(weights))
    with pytest.raises(EdgegenError, match="mixed"):
        check_artifacts(other, _artifact_dirs(exported, target))
    dirs = _artifact_dirs(exported, target)
    dirs["denoiser"] = dirs["vae_decoder"]
    with pytest.raises(EdgegenError, match="not denoiser"):
        check_artifacts(pipeline_dir, dirs)
    with pytest.raises(EdgegenError, match="missing: vae_decoder"):
        check_artifacts(pipeline_dir, {k: v for k, v in _artifact_dirs(exported, target).items() if k != "vae_decoder"})


def test_pipeline_family_ignores_the_denoiser_weights(pipeline_dir, tmp_path):
    import json

    from edgegen.pipeline import pipeline_family

    copy = tmp_path / "family"
    shutil.copytree(pipeline_dir, copy)
    assert pipeline_family(copy) == pipeline_family(pipeline_dir)
    config_path = copy / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config["latent_channels"] = config["latent_channels"] + 4
    config_path.write_text(json.dumps(config))
    assert pipeline_family(copy) != pipeline_family(pipeline_dir)
