"""KD-MMG, HDG-MMS and QAT on the embedded default: losses fall, students load, export and sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgegen.cli import app

SMALL_DATA = "data=builtin:shapes?count=64"


@pytest.fixture(scope="module")
def student_dir(pipeline_dir, tmp_path_factory) -> Path:
    from edgegen.models.student import make_student

    return make_student(pipeline_dir, "tiny", tmp_path_factory.mktemp("student") / "tiny")


def train(*args: str) -> None:
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output


def metric(output: Path, name: str) -> list[float]:
    from edgegen.trainers.loop import read_metrics

    return [row[name] for row in read_metrics(output)]


@pytest.mark.slow
def test_distill_losses_fall_and_the_student_exports(pipeline, pipeline_dir, student_dir, tmp_path):
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.families.loading import load_pipeline

    out = tmp_path / "kd"
    train("distill", f"teacher={pipeline_dir}", f"student={student_dir}", f"output={out}", "steps=30", "batch_size=8",
          "learning_rate=5e-4", "log_every=3", SMALL_DATA)
    for name in ("loss", "feature_kd"):
        values = metric(out, name)
        assert sum(values[-3:]) < sum(values[:3]), name  # the student moves towards the teacher
    manifest = json.loads((out / "pipeline" / "edgegen_student.json").read_text())
    assert manifest["recipe"]["name"] == "distill" and manifest["recipe"]["feature_blocks"]
    assert manifest["scman"] is not None  # SCMAN survives training
    student = load_pipeline(out / "pipeline")
    artifact = export_component(student, out / "pipeline", "denoiser", "onnx", tmp_path / "artifacts", ExportOptions())
    assert artifact.manifest.parity.psnr_db > 60


def test_conditioning_mismatch_is_refused_before_training(pipeline_dir, student_dir, tmp_path):
    import shutil

    from diffusers import UNet2DConditionModel

    from edgegen.families.loading import load_pipeline

    # A student that loads (its UNet's weights fit its config) but cross-attends to 48-wide
    # embeddings, where the teacher's text encoder makes wider ones.
    other = tmp_path / "other"
    shutil.copytree(student_dir, other)
    config = UNet2DConditionModel.load_config(other / "unet")
    assert config["cross_attention_dim"] != 48
    shutil.rmtree(other / "unet")
    UNet2DConditionModel.from_config({**config, "cross_attention_dim": 48}).save_pretrained(other / "unet")
    assert load_pipeline(other).unet.config.cross_attention_dim == 48

    result = CliRunner().invoke(app, ["train", "distill", f"teacher={pipeline_dir}", f"student={other}", f"output={tmp_path / 'x'}", SMALL_DATA])
    assert result.exit_code == 2
    assert "conditioning do not match" in result.stderr and "cross_attention_dim" in result.stderr
    assert not (tmp_path / "x").exists()


def test_a_teacher_folder_is_not_a_student(pipeline_dir, tmp_path):
    result = CliRunner().invoke(app, ["train", "distill", f"teacher={pipeline_dir}", f"student={pipeline_dir}", f"output={tmp_path}", SMALL_DATA])
    assert result.exit_code == 2 and "not a student folder" in result.stderr


def two_step_gap(teacher_dir: Path, student_dir: Path) -> float:
    """Latent MSE between a student's two-step samples and the teacher's 4-step DDIM samples."""
    import torch

    from edgegen.families.loading import load_pipeline
    from edgegen.trainers.adversarial import few_step_estimates, teacher_sample
    from edgegen.trainers.denoising import encode_text, predict

    teacher, student = load_pipeline(teacher_dir), load_pipeline(student_dir)
    captions = ["a red circle at the top left", "a blue square at the bottom right", "a green triangle at the top right", ""] * 2
    with torch.no_grad():
        embeddings = encode_text(teacher.tokenizer, teacher.text_encoder, captions)
        noise = torch.randn(len(captions), 4, 8, 8, generator=torch.Generator().manual_seed(1234))
        target = teacher_sample(teacher.unet, teacher.scheduler.config, noise, embeddings, 4)
        def denoise(x, t, e):
            return predict(student.unet, x, t, e)
        output = few_step_estimates(denoise, teacher.scheduler, noise, embeddings, [999, 499])[-1]
    return torch.nn.functional.mse_loss(output, target).item()


def test_a_student_distilled_from_a_few_step_student_keeps_its_schedule(pipeline_dir, student_dir, tmp_path):
    from edgegen.embedded.builders import build_embedded_student
    from edgegen.models.checkpoint import read_student_manifest

    few_step = build_embedded_student(pipeline_dir, tmp_path / "few-step", "few-step")
    out = tmp_path / "kd"
    train("distill", f"teacher={few_step}", f"student={student_dir}", f"output={out}", "steps=2", "batch_size=4", "log_every=1", SMALL_DATA)
    assert read_student_manifest(out / "pipeline").sampling == read_student_manifest(few_step).sampling
    assert read_student_manifest(out / "pipeline").sampling.timesteps == [999, 499]
    plain = tmp_path / "kd-from-teacher"  # a teacher without a few-step schedule gives none
    train("distill", f"teacher={pipeline_dir}", f"student={student_dir}", f"output={plain}", "steps=1", "batch_size=4", "log_every=1", SMALL_DATA)
    assert read_student_manifest(plain / "pipeline").sampling is None


@pytest.mark.slow
def test_adversarial_student_records_its_schedule_and_samples_in_two_steps(pipeline_dir, student_dir, tmp_path):
    import numpy as np

    from edgegen.sampling.loop import initial_latents, load_case, sampling_plan

    out = tmp_path / "hdg"
    train("adversarial", f"teacher={pipeline_dir}", f"student={student_dir}", f"output={out}", "steps=40", "batch_size=8",
          "learning_rate=1e-3", "teacher_steps=4", "sampling_steps=2", "log_every=2", SMALL_DATA)
    assert all(np.isfinite(metric(out, "distill"))) and all(np.isfinite(metric(out, "discriminator")))
    # On held-out noise, the two-step output moves towards the teacher's sample from the same noise.
    before, after = two_step_gap(pipeline_dir, student_dir), two_step_gap(pipeline_dir, out / "pipeline")
    assert after < 0.85 * before, (before, after)  # measured: 1.17 -> 0.79
    sampling = json.loads((out / "pipeline" / "edgegen_student.json").read_text())["sampling"]
    assert sampling["steps"] == 2 and sampling["timesteps"] == [999, 499]
    plan = sampling_plan(out / "pipeline", steps=20, guidance_scale=1.0)
    assert plan.steps == 2 and plan.few_step_timesteps == (999, 499)
    case = load_case(out / "pipeline", None, plan)
    generation = case.generate("a red circle at the top left", initial_latents(case.latent_shape, 0), 0)
    assert len(generation.call_ms["denoiser"]) == 2 and np.isfinite(generation.image).all()


@pytest.fixture(scope="module")
def qat_student(pipeline_dir, student_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qat")
    train("distill", f"teacher={pipeline_dir}", f"student={student_dir}", f"output={out}", "steps=4", "batch_size=4",
          "learning_rate=1e-5", "qat=true", SMALL_DATA)
    return out / "pipeline"


# ExecuTorch and ONNX lower the learned scales; LiteRT refuses the XNNPACK QAT graph's
# concatenations and calibrates its own, so it only has to stay close to what was trained.
@pytest.mark.slow
@pytest.mark.parametrize("target, learned, min_db", [("executorch", True, 30), ("onnx", True, 30), ("tflite", False, 20)])
def test_qat_student_int8_exports_answer_to_the_fake_quant_model(qat_student, tmp_path, target, learned, min_db):
    import torch

    from edgegen.families.stable_diffusion import build_component
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.measure.metrics import psnr_db
    from edgegen.exporting.quantize import fake_quant_module
    from edgegen.models.checkpoint import learned_scales
    from edgegen.session import open_artifact
    from edgegen.families.loading import load_pipeline

    assert (qat_student / "unet" / "qat.safetensors").is_file()
    from edgegen.models.checkpoint import read_student_manifest

    assert [state.model_dump(exclude_none=True) for state in read_student_manifest(qat_student).qat] == [{"scheme": "pt2e-xnnpack-int8-qat", "component": "denoiser", "state_file": "unet/qat.safetensors"}]
    student = load_pipeline(qat_student)
    artifact = export_component(student, qat_student, "denoiser", target, tmp_path / "artifacts", ExportOptions(quantize="int8"))
    details = artifact.manifest.quantization.details
    if learned:
        assert details["source"] == "checkpoint (QAT)" and details["recalibrated"] is False
    else:
        assert details["qat_scales"].endswith("recalibrated") and details["calibration_sets"] > 0
    # Parity against the fake-quant model the student was trained as, on the reference inputs,
    # measured here independently of the exporter's own record of it.
    inputs, _ = artifact.reference_tensors()
    component = build_component(student, "denoiser")
    component.quantization_source = learned_scales(qat_student, "denoiser")  # what the manifest declares
    fake_quant = fake_quant_module(component)
    names = [spec.name for spec in component.inputs]
    with torch.no_grad():
        expected = fake_quant(*(torch.from_numpy(inputs[n].copy()) for n in names)).numpy()
    produced = open_artifact(artifact).run(inputs)["noise_pred"]
    measured = psnr_db(expected, produced)
    assert artifact.manifest.parity.vs_fake_quant.psnr_db == pytest.approx(measured, abs=0.05)
    assert measured > min_db  # learned scales: int8 kernels vs fake-quant arithmetic, rounding only
