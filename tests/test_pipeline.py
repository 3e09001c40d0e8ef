"""The edge pipeline runner: exported artifacts reproduce the eager pipeline from the same latents."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgegen.registry import EXPORTERS
from tests.helpers import require_export, require_runtime

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
    from edgegen.sampling.loop import SamplingPlan, initial_latents, load_case

    case = load_case(pipeline_dir, None, SamplingPlan(STEPS, GUIDANCE))
    latents = initial_latents(case.latent_shape, SEED)
    return case, latents, case.generate(PROMPT, latents, SEED)


def _artifact_dirs(exported, target):
    from edgegen.families.stable_diffusion import COMPONENT_NAMES

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
    from edgegen.sampling.loop import initial_latents

    case, latents, generation = eager_generation
    again = case.generate(PROMPT, latents, SEED)
    np.testing.assert_array_equal(again.image, generation.image)
    other = case.generate(PROMPT, initial_latents(case.latent_shape, SEED + 1), SEED)
    assert np.abs(other.image - generation.image).max() > 1e-3


@pytest.mark.slow  # exports all three components per target (shared with other test files)
@pytest.mark.parametrize("target", EXPORTERS.names())
def test_exported_pipeline_matches_eager_with_same_latents(target, pipeline_dir, exported, eager_generation):
    require_runtime(target)
    from edgegen.sampling.loop import SamplingPlan, load_case
    from edgegen.measure.quality import image_psnr_db

    _, latents, reference = eager_generation
    case = load_case(pipeline_dir, _artifact_dirs(exported, target), SamplingPlan(STEPS, GUIDANCE))
    generation = case.generate(PROMPT, latents, SEED)
    for step, (want, got) in enumerate(zip(reference.step_latents, generation.step_latents, strict=True)):
        error = float(np.abs(want - got).max())
        assert error < MAX_FLOAT_LATENT_ABS_ERROR, f"step {step}: latent max abs error {error:.3g}"
    psnr = image_psnr_db(reference.image, generation.image)
    assert psnr > MIN_FLOAT_IMAGE_PSNR_DB, f"{target}: image PSNR {psnr:.1f} dB"


def test_few_step_schedule_from_the_student_manifest(pipeline_dir, tmp_path):
    from edgegen.errors import EdgegenError
    from edgegen.models.checkpoint import read_student_manifest
    from edgegen.sampling.loop import initial_latents, load_case, sampling_plan
    from edgegen.schema.base import write_json
    from edgegen.schema.checkpoint import STUDENT_MANIFEST_FILENAME, FewStepSchedule, Initialisation, StudentManifest

    folder = tmp_path / "few-step"
    shutil.copytree(pipeline_dir, folder)
    assert sampling_plan(folder, 7, 1.0).steps == 7  # no manifest: the --steps option
    manifest = StudentManifest(
        edgegen_version="test", created_at="now", preset="base", teacher_dir=str(pipeline_dir),
        teacher_unet_sha256="0", teacher_parameters=1, student_parameters=1, architecture={}, scman=None,
        initialisation=Initialisation(copied=0, sliced=0, random=0),
        recipe={"name": "adversarial"}, sampling=FewStepSchedule(steps=2, timesteps=[999, 499]),
    )
    write_json(folder / STUDENT_MANIFEST_FILENAME, manifest)
    assert read_student_manifest(folder) is not None
    plan = sampling_plan(folder, 7, 1.0)
    assert plan.steps == 2 and plan.few_step_timesteps == (999, 499) and plan.calls_per_step == 1
    # A schema-1 manifest kept the schedule inside "recipe": it is read and lifted to the typed field.
    old = json.loads(manifest.model_dump_json(exclude={"sampling"}))
    old.update(schema_version=1, recipe={"name": "adversarial", "sampling": {"steps": 2, "timesteps": [999, 499]}})
    (folder / STUDENT_MANIFEST_FILENAME).write_text(json.dumps(old))
    assert read_student_manifest(folder).sampling == FewStepSchedule(steps=2, timesteps=[999, 499])
    plan = sampling_plan(folder, 7, 1.0)
    assert plan.steps == 2 and plan.few_step_timesteps == (999, 499) and plan.calls_per_step == 1
    assert sampling_plan(folder, 7, 1.0, use_student_schedule=False).steps == 7
    case = load_case(folder, None, plan)
    generation = case.generate(PROMPT, initial_latents(case.latent_shape, SEED), SEED)
    assert len(generation.step_latents) == 2 and len(generation.call_ms["denoiser"]) == 2
    assert np.isfinite(generation.image).all()
    # Fewer steps than it was trained for: the first timesteps of its schedule, the last
    # prediction decoded; more: one line.
    one_step = sampling_plan(folder, 7, 1.0, few_steps=1)
    assert one_step.steps == 1 and one_step.few_step_timesteps == (999,)
    single = load_case(folder, None, one_step).generate(PROMPT, initial_latents(case.latent_shape, SEED), SEED)
    assert len(single.call_ms["denoiser"]) == 1
    assert np.isfinite(single.image).all() and not np.allclose(single.image, generation.image)
    with pytest.raises(EdgegenError, match="2-step student .* runs in at most 2 steps"):
        sampling_plan(folder, 7, 1.0, few_steps=3)


def test_artifacts_of_another_pipeline_are_refused(pipeline_dir, exported, tmp_path):
    from safetensors.numpy import load_file, save_file

    from edgegen.errors import EdgegenError
    from edgegen.sampling.loop import check_artifacts

    target = "onnx"  # the quickest export; check_artifacts reads manifests only
    require_export(target)
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

    from edgegen.sampling.loop import pipeline_family

    copy = tmp_path / "family"
    shutil.copytree(pipeline_dir, copy)
    assert pipeline_family(copy) == pipeline_family(pipeline_dir)
    config_path = copy / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config["latent_channels"] = config["latent_channels"] + 4
    config_path.write_text(json.dumps(config))
    assert pipeline_family(copy) != pipeline_family(pipeline_dir)


# ---------------------------------------------------------------------------------------------
# edgegen compare --prompts


@pytest.fixture(scope="module")
def student_setup(pipeline_dir, tmp_path_factory):
    """A SCMAN student of the embedded default and its three ONNX artifacts, plus a prompt file."""
    from edgegen.exporting.orchestration import export_pipeline
    from edgegen.models.student import make_student

    root = tmp_path_factory.mktemp("compare")
    student = make_student(pipeline_dir, "tiny", root / "student")
    export_pipeline(student, "onnx", root / "student-artifacts")
    prompts = root / "prompts.txt"
    prompts.write_text("# shapes\na red circle at the top left\n\na blue square at the bottom right\n")
    return student, root / "student-artifacts", prompts


def _compare(pipeline_dir, student_setup, output, *extra):
    from typer.testing import CliRunner

    from edgegen.cli import app

    student, artifacts, prompts = student_setup
    arguments = ["compare", "--prompts", str(prompts), "--teacher", str(pipeline_dir), "--student", str(student),
                 "--artifacts", str(artifacts), "-o", str(output), "--steps", "2", "--runs", "0", *extra]
    return CliRunner().invoke(app, arguments)


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _results(path):
    from edgegen.schema.pipeline import PipelineResult

    return [PipelineResult.model_validate_json(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # exports the student to ONNX once for the module
def test_compare_pipelines_writes_fidelity_gap_images_and_skips_finished_cases(pipeline_dir, student_setup, tmp_path):
    output = tmp_path / "results.jsonl"
    result = _compare(pipeline_dir, student_setup, output, "--min-psnr", "40")
    assert result.exit_code == 0, result.output
    results = {r.case_id: r for r in _results(output)}
    assert sorted(results) == ["student/eager/2-steps", "student/onnx/2-steps", "teacher/eager/2-steps"]
    exported = results["student/onnx/2-steps"]
    assert exported.export_fidelity is not None and exported.export_fidelity.image_psnr_db > 40.0
    assert len(exported.export_fidelity.latent_psnr_db_per_step) == 2
    assert exported.distillation_gap is not None and exported.distillation_gap.image_ssim < 1.0
    assert [b.passed for b in exported.budgets] == [True]
    assert results["student/eager/2-steps"].export_fidelity is None  # no export, no export fidelity
    assert len({r.pipeline_family for r in results.values()}) == 1
    for r in results.values():
        assert sorted(p.name for p in (tmp_path / r.images_dir).iterdir()) == ["0.png", "1.png"]
        assert r.prompts == ["a red circle at the top left", "a blue square at the bottom right"]
    before = output.read_text()
    again = _compare(pipeline_dir, student_setup, output)
    assert again.exit_code == 0, again.output
    assert output.read_text() == before  # every case already there: nothing re-run or appended


@pytest.mark.slow
def test_compare_interrupted_run_keeps_finished_cases(pipeline_dir, student_setup, tmp_path, monkeypatch):
    import edgegen.measure.pipeline_fidelity as pipeline_compare

    output = tmp_path / "results.jsonl"
    real = pipeline_compare.generate_all
    calls = []

    def interrupted(case, *args, **kwargs):
        calls.append(case.case_id)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the third case
        return real(case, *args, **kwargs)

    monkeypatch.setattr(pipeline_compare, "generate_all", interrupted)
    result = _compare(pipeline_dir, student_setup, output)
    assert result.exit_code != 0
    finished = output.read_text().splitlines()
    assert [r.case_id for r in _results(output)] == ["teacher/eager/2-steps", "student/eager/2-steps"]
    monkeypatch.setattr(pipeline_compare, "generate_all", real)
    resumed = _compare(pipeline_dir, student_setup, output)
    assert resumed.exit_code == 0, resumed.output
    lines = output.read_text().splitlines()
    assert lines[:2] == finished and len(lines) == 3
    assert _results(output)[2].case_id == "student/onnx/2-steps"


@pytest.mark.slow
def test_compare_budgets_fail_with_one_line_each(pipeline_dir, student_setup, tmp_path):
    result = _compare(pipeline_dir, student_setup, tmp_path / "results.jsonl", "--min-psnr", "1000", "--min-ssim", "1.5")
    assert result.exit_code == 1, result.output
    failed = [line for line in result.output.splitlines() if line.startswith("budget failed")]
    assert len(failed) == 2 and all("student/onnx/2-steps" in line for line in failed)
    assert {r.case_id: [b.passed for b in r.budgets] for r in _results(tmp_path / "results.jsonl")}["student/onnx/2-steps"] == [False, False]


@pytest.mark.slow  # exports the teacher to ONNX (shared with other test files)
def test_compare_bad_inputs_exit_2_with_one_line(pipeline_dir, student_setup, exported, tmp_path):
    from edgegen.families.stable_diffusion import COMPONENT_NAMES

    student, artifacts, prompts = student_setup
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    assert "no prompts" in _error_line(_compare(pipeline_dir, (student, artifacts, empty), tmp_path / "a.jsonl"))
    missing = _compare(pipeline_dir, (student, artifacts, tmp_path / "missing.txt"), tmp_path / "b.jsonl")
    assert "prompt file not found" in _error_line(missing)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    assert "cannot read prompt file" in _error_line(_compare(pipeline_dir, (student, artifacts, binary), tmp_path / "c.jsonl"))

    # The teacher's artifacts handed over as the student's: different pipelines mixed.
    teacher_artifacts = tmp_path / "teacher-artifacts"
    teacher_artifacts.mkdir()
    for name in COMPONENT_NAMES:
        (teacher_artifacts / exported(name, "onnx").folder.name).symlink_to(exported(name, "onnx").folder)
    mixed = _compare(pipeline_dir, (student, teacher_artifacts, prompts), tmp_path / "d.jsonl")
    assert "mixed" in _error_line(mixed)
    assert not (tmp_path / "d.jsonl").exists()  # refused before generating anything

    corrupt = tmp_path / "features.onnx"
    corrupt.write_bytes(b"not onnx")
    bad_extractor = _compare(pipeline_dir, student_setup, tmp_path / "e.jsonl", "--feature-extractor", str(corrupt))
    assert "feature extractor" in _error_line(bad_extractor)
    assert not (tmp_path / "e.jsonl").exists()  # refused before any case ran


def test_compare_refuses_a_budget_it_cannot_measure(pipeline_dir, student_setup, tmp_path):
    result = _compare(pipeline_dir, student_setup, tmp_path / "results.jsonl", "--max-fid-gap", "5")
    assert "--max-fid-gap needs --feature-extractor" in _error_line(result)
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.slow
def test_compare_cuts_a_half_written_line_and_records_the_scman_budget(pipeline_dir, student_setup, tmp_path):
    output = tmp_path / "results.jsonl"
    assert _compare(pipeline_dir, student_setup, output).exit_code == 0
    lines = output.read_text().splitlines(keepends=True)
    output.write_text(lines[0] + lines[1] + lines[2][:40])  # the third case was being written
    resumed = _compare(pipeline_dir, student_setup, output)
    assert resumed.exit_code == 0, resumed.output
    results = _results(output)  # every line parses: the cut line is gone, the case re-ran
    assert [r.case_id for r in results] == ["teacher/eager/2-steps", "student/eager/2-steps", "student/onnx/2-steps"]
    assert results[2].scman_summary_tokens == 4  # the "tiny" preset's budget
    assert results[0].scman_summary_tokens is None


@pytest.mark.slow  # a fresh profiling process
def test_pipeline_profile_follows_the_latency_schema_in_a_fresh_process(pipeline_dir):
    from edgegen.sampling.loop import SamplingPlan
    from edgegen.measure.pipeline_profile import profile_pipeline

    latency, memory = profile_pipeline(pipeline_dir, None, SamplingPlan(2, GUIDANCE), warmup=1, runs=3)
    calls = {timing.component: timing for timing in latency.per_component}
    assert (latency.steps, latency.calls_per_step, latency.timed_runs, latency.warmup_runs) == (2, 2, 3, 1)
    assert calls["denoiser"].calls_per_image == 2 * 2  # guidance on a batch-1 denoiser: two calls per step
    assert calls["text_encoder"].calls_per_image == 2 and calls["vae_decoder"].calls_per_image == 1
    assert all(0 < t.p50_ms <= t.p90_ms for t in latency.per_component)
    inside = sum(t.p50_ms * t.calls_per_image for t in latency.per_component)
    assert 0 <= latency.host_overhead_p50_ms < latency.total_p50_ms <= latency.total_p90_ms
    assert inside < latency.total_p50_ms * 1.5  # the parts cannot add up to much more than the whole
    assert latency.per_step_p50_ms >= calls["denoiser"].p50_ms * 2 * 0.5
    assert latency.cold_load_ms > 0 and latency.warm_load_ms > 0
    assert memory.peak_rss_mb >= memory.baseline_rss_mb and memory.added_mb > 1.0  # ~4 MB of weights, twice


@pytest.mark.slow  # a fresh profiling process
def test_pipeline_profile_errors_are_one_line(pipeline_dir, tmp_path):
    from edgegen.errors import EdgegenError
    from edgegen.sampling.loop import SamplingPlan
    from edgegen.measure.pipeline_profile import profile_pipeline

    with pytest.raises(EdgegenError, match="--runs must be at least 1"):
        profile_pipeline(pipeline_dir, None, SamplingPlan(1, 1.0), runs=0)
    with pytest.raises(EdgegenError, match="not found|no model_index|not a diffusers") as error:
        profile_pipeline(tmp_path / "nowhere", None, SamplingPlan(1, 1.0), runs=1)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_compare_with_user_extractors_fills_the_distillation_gap(pipeline_dir, student_setup, tmp_path):
    from edgegen.embedded.probe import save_probe, train_probe
    from tests.test_quality import write_feature_extractor, write_tiny_clip

    features = write_feature_extractor(tmp_path / "features.onnx")
    clip = write_tiny_clip(tmp_path / "clip")
    probe = save_probe(train_probe(steps=3, batch_size=8), tmp_path / "probe")  # plumbing, not a good probe
    output = tmp_path / "results.jsonl"
    result = _compare(
        pipeline_dir, student_setup, output, "--feature-extractor", str(features), "--clip", str(clip), "--probe", str(probe),
        "--max-fid-gap", "1e9", "--max-kid-gap", "1e9", "--min-clip-score", "-1e9", "--min-faithfulness", "0",
    )
    assert result.exit_code == 0, result.output
    gap = {r.case_id: r for r in _results(output)}["student/onnx/2-steps"].distillation_gap
    assert gap.fid is not None and gap.fid >= 0 and gap.kid is not None and gap.clip_score is not None
    assert 0 <= gap.faithfulness <= 1 and 0 <= gap.reference_faithfulness <= 1
    assert gap.feature_extractor == str(features.resolve())
    budgets = {r.case_id: r.budgets for r in _results(output)}["student/onnx/2-steps"]
    assert sorted(b.name for b in budgets) == ["max_fid_gap", "max_kid_gap", "min_clip_score", "min_faithfulness"]
    assert all(b.passed for b in budgets)


def test_the_few_step_move_is_diffusers_ddim_with_eta_zero(pipeline_dir):
    import torch
    from diffusers import DDIMScheduler

    from edgegen.sampling.schedules import few_step_update, predicted_clean

    scheduler = DDIMScheduler.from_pretrained(pipeline_dir / "scheduler")
    scheduler.set_timesteps(2)
    assert scheduler.timesteps.tolist() == [999, 499]
    x, prediction = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).unbind(0)
    x, prediction = x[None], prediction[None]
    expected = scheduler.step(prediction, 999, x).prev_sample
    clean = predicted_clean(scheduler, x, prediction, torch.tensor([999]))
    torch.testing.assert_close(few_step_update(scheduler, x, clean, 999, 499), expected, atol=1e-6, rtol=0)
