"""Decoder students: a tiny TAESD-like decoder in place of the VAE, distilled by the ``decoder``
recipe, exported to every target and run in whole pipelines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgegen.cli import app

pytestmark = pytest.mark.slow


def image_psnr(expected, produced) -> float:
    expected, produced = np.asarray(expected, dtype=np.float64), np.asarray(produced, dtype=np.float64)
    return 10 * math.log10(4.0 / float(((expected - produced) ** 2).mean()))  # images in [-1, 1]


def decode(folder: Path, latents):
    import torch

    from edgegen.families.base import vae_decoder_module
    from edgegen.families.loading import load_pipeline

    with torch.no_grad():
        return vae_decoder_module(load_pipeline(folder).vae)(latents).numpy()


@pytest.fixture(scope="module")
def decoder_student(pipeline_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("decoder") / "init"
    result = CliRunner().invoke(app, ["student", "init", "--teacher", str(pipeline_dir), "-o", str(folder), "--component", "vae_decoder", "--preset", "small"])
    assert result.exit_code == 0 and "decoder parameters" in result.stdout, result.output
    return folder


@pytest.fixture(scope="module")
def trained(pipeline_dir, decoder_student, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("decoder") / "train"
    args = [f"teacher={pipeline_dir}", f"student={decoder_student}", f"output={out}", "steps=120", "batch_size=16", "log_every=10", "data=builtin:shapes?count=256"]
    result = CliRunner().invoke(app, ["train", "decoder", *args])
    assert result.exit_code == 0, result.output
    return out / "pipeline"


def test_made_in_place_of_the_vae_and_smaller(pipeline_dir, decoder_student):
    from edgegen.families.loading import checkpoint_sha256, load_pipeline
    from edgegen.models.decoder_student import read_decoder_manifest
    from edgegen.sampling.loop import pipeline_family

    manifest = read_decoder_manifest(decoder_student)
    assert manifest.student_parameters < manifest.teacher_parameters
    assert type(load_pipeline(decoder_student).vae).__name__ == "AutoencoderTiny"
    # The denoiser's latent space is the teacher's: the pipelines compare, the other components are the teacher's own.
    assert pipeline_family(decoder_student) == pipeline_family(pipeline_dir)
    for subfolder in ("unet", "text_encoder", "tokenizer"):
        assert checkpoint_sha256(decoder_student, subfolder) == checkpoint_sha256(pipeline_dir, subfolder)
    import torch

    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert decode(decoder_student, latents).shape == decode(pipeline_dir, latents).shape == (1, 3, 32, 32)


def test_bad_decoder_students_are_refused(pipeline_dir, decoder_student, tmp_path):
    import importlib

    runner = CliRunner()
    again = runner.invoke(app, ["student", "init", "--teacher", str(decoder_student), "-o", str(tmp_path / "a"), "--component", "vae_decoder"])
    assert again.exit_code == 2 and "already has a decoder student" in again.stderr
    pixart = importlib.import_module("tests.dummy_pipelines.pixart").build(tmp_path / "pixart")
    other = runner.invoke(app, ["student", "init", "--teacher", str(pixart), "-o", str(tmp_path / "b"), "--component", "vae_decoder"])
    assert other.exit_code == 2 and "decoder students are made for" in other.stderr
    # diffusers' own test SD pipeline: a 2-level, 32/64-wide VAE whose decoder 'base' would not undercut.
    diffusers_sd = importlib.import_module("tests.dummy_pipelines.stable_diffusion").build(tmp_path / "sd")
    results = {preset: runner.invoke(app, ["student", "init", "--teacher", str(diffusers_sd), "-o", str(tmp_path / preset), "--component", "vae_decoder", "--preset", preset]) for preset in ("tiny", "base")}
    assert results["tiny"].exit_code == 0, results["tiny"].output
    larger = results["base"]
    assert larger.exit_code == 0 or (larger.exit_code == 2 and "not fewer than the teacher decoder's" in larger.stderr)
    assert not (tmp_path / "b").exists() and not (tmp_path / "a").exists()
    training = runner.invoke(app, ["train", "decoder", f"teacher={pipeline_dir}", f"student={pipeline_dir}", f"output={tmp_path / 'c'}"])
    assert training.exit_code == 2 and "is not a decoder student" in training.stderr


def test_the_decoder_recipe_moves_the_student_to_the_teacher(pipeline_dir, decoder_student, trained):
    import torch

    from edgegen.families.loading import checkpoint_sha256
    from edgegen.trainers.loop import read_metrics

    from edgegen.data.shapes import attributes_of, render_shape, to_tensor
    from edgegen.families.loading import load_pipeline
    from edgegen.trainers.denoising import encode_images

    # Held-out shapes images (other seeds than the training data's), encoded by the teacher's VAE.
    rng = np.random.default_rng(123)
    images = torch.stack([to_tensor(render_shape(**attributes_of(index), rng=rng)) for index in range(8)])
    latents = encode_images(load_pipeline(pipeline_dir).vae, images, torch.Generator().manual_seed(1))
    expected = decode(pipeline_dir, latents)
    before, after = image_psnr(expected, decode(decoder_student, latents)), image_psnr(expected, decode(trained, latents))
    assert after > before + 3, (before, after)
    losses = [row["loss"] for row in read_metrics(trained.parent) if "loss" in row]
    assert sum(losses[-3:]) < sum(losses[:3])
    manifest = json.loads((trained / "edgegen_decoder.json").read_text())
    assert manifest["recipe"]["name"] == "decoder"
    assert checkpoint_sha256(trained, "unet") == checkpoint_sha256(pipeline_dir, "unet")  # only the decoder trained


def test_the_tiny_decoder_exports_to_every_target(trained, tmp_path):
    from edgegen.exporting.base import MIN_PSNR_DB_INT8
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.exporting.targets import int8_scheme
    from edgegen.families.loading import load_pipeline
    from edgegen.registry import EXPORTERS

    student = load_pipeline(trained)
    for target in EXPORTERS.names():
        for quantize in ("none", int8_scheme(target)):
            if quantize is None:
                continue
            artifact = export_component(student, trained, "vae_decoder", target, tmp_path, ExportOptions(quantize=quantize))
            parity = artifact.manifest.parity
            if target == "coreml" and not parity.measured:
                assert "macOS" in parity.reason
                continue
            assert parity.measured and parity.psnr_db >= (60 if quantize == "none" else MIN_PSNR_DB_INT8), (target, quantize, parity)


def test_a_pipeline_with_the_tiny_decoder_compares_with_the_teacher(pipeline_dir, trained, tmp_path):
    from edgegen.embedded.builders import PROBE_DIR
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.families.loading import load_pipeline
    from edgegen.measure.pipeline_fidelity import run_comparison

    student = load_pipeline(trained)
    for component in ("text_encoder", "denoiser", "vae_decoder"):
        export_component(student, trained, component, "onnx", tmp_path / "artifacts", ExportOptions())
    prompts = ["a red circle at the top left", "a blue square at the bottom right"]
    results = run_comparison(prompts, pipeline_dir, trained, [tmp_path / "artifacts"], tmp_path / "results.jsonl", steps=4, probe_dir=PROBE_DIR, runs=1)
    cases = {r.case_id: r for r in results}
    assert set(cases) == {"teacher/eager/4-steps", "student/eager/4-steps", "student/onnx/4-steps"}
    assert cases["student/onnx/4-steps"].export_fidelity.image_psnr_db > 40  # the exported tiny decoder against itself eagerly
    # The student differs from the teacher only by its decoder: images close, not equal.
    assert 12 < cases["student/eager/4-steps"].distillation_gap.image_psnr_db < float("inf")
