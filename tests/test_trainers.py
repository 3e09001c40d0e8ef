"""Training recipes end to end on the embedded default: losses fall, runs resume exactly, configs fail in one line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgegen.cli import app

SMALL_DATA = "data=builtin:shapes?count=64"


@pytest.fixture(scope="module")
def untrained_dir(tmp_path_factory) -> Path:
    from edgegen.embedded.builders import build_embedded_default

    return build_embedded_default(tmp_path_factory.mktemp("untrained") / "pipeline", weights="random")


def train(*args: str) -> None:
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output


def weights_hash(folder: Path) -> str:
    import hashlib

    return hashlib.sha256((folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()


def losses(output: Path) -> list[float]:
    from edgegen.trainers.loop import read_metrics

    return [row["loss"] for row in read_metrics(output)]


def held_out_loss(pipeline_dir: Path) -> float:
    """The denoising loss on 32 shapes the run never saw, with fixed noise and evenly spread timesteps.

    The training log's per-batch loss is too noisy to compare a few rows (each batch draws its
    own timesteps), so learning is judged here on the same inputs before and after.
    """
    import torch

    from edgegen.data.shapes import ShapesDataset
    from edgegen.families.loading import load_pipeline
    from edgegen.trainers.denoising import encode_images, encode_text, noisy_latents, predict, prediction_target

    pipeline = load_pipeline(pipeline_dir)
    items = [ShapesDataset(32, seed=99)[i] for i in range(32)]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = encode_images(pipeline.vae, torch.stack([item["pixel_values"] for item in items]), generator)
        embeddings = encode_text(pipeline.tokenizer, pipeline.text_encoder, [item["caption"] for item in items])
        timesteps = torch.linspace(0, pipeline.scheduler.config.num_train_timesteps - 1, len(items)).long()
        noisy, timesteps, noise = noisy_latents(pipeline.scheduler, latents, generator, timesteps)
        prediction = predict(pipeline.unet, noisy, timesteps, embeddings)
        return torch.nn.functional.mse_loss(prediction, prediction_target(pipeline.scheduler, latents, noise, timesteps)).item()


@pytest.mark.slow
def test_finetune_loss_falls_and_writes_a_loadable_pipeline(untrained_dir, tmp_path):
    from edgegen.schema.base import load_strict_json
    from edgegen.schema.training import TRAINING_MANIFEST_FILENAME, TRAINING_SCHEMA_VERSION, TrainingManifest
    from edgegen.families.loading import load_pipeline

    out = tmp_path / "ft"
    train("finetune", f"teacher={untrained_dir}", f"output={out}", "steps=40", "batch_size=16", "learning_rate=1e-3", "log_every=4", SMALL_DATA)
    assert losses(out) and all(math.isfinite(value) for value in losses(out))
    before, after = held_out_loss(untrained_dir), held_out_loss(out / "pipeline")
    assert after < 0.8 * before, (before, after)  # a random UNet learns the shapes fast; measured 0.52 -> 0.25
    manifest = load_strict_json(out / "pipeline" / TRAINING_MANIFEST_FILENAME, TrainingManifest, TRAINING_SCHEMA_VERSION, "m")
    assert manifest.recipe == "finetune" and manifest.steps == 40 and manifest.ranks_in_sync
    assert (out / "config.yaml").read_text().startswith("# edgegen train finetune")
    assert any((out / "tb").iterdir())
    load_pipeline(out / "pipeline")


def test_resumed_run_ends_with_the_same_weights(untrained_dir, tmp_path):
    import shutil

    common = [f"teacher={untrained_dir}", "batch_size=4", "steps=4", "checkpoint_every=2", "log_every=1", SMALL_DATA]
    train("finetune", f"output={tmp_path / 'straight'}", *common)
    crashed = tmp_path / "crashed"
    train("finetune", f"output={crashed}", *common)
    # A crash after step 3: only the step-2 checkpoint and the log so far survive.
    shutil.rmtree(crashed / "checkpoints" / "step-000004")
    shutil.rmtree(crashed / "pipeline")
    train("finetune", f"output={crashed}", "--resume", *common)
    assert weights_hash(tmp_path / "straight" / "pipeline") == weights_hash(crashed / "pipeline")
    assert losses(crashed) == losses(tmp_path / "straight")
    manifest = json.loads((crashed / "pipeline" / "edgegen_training.json").read_text())
    assert manifest["resumed_from_step"] == 2


def test_resume_refuses_another_config(untrained_dir, tmp_path):
    common = [f"teacher={untrained_dir}", "batch_size=2", "steps=2", f"output={tmp_path}", SMALL_DATA]
    train("finetune", *common)
    result = CliRunner().invoke(app, ["train", "finetune", *common, "learning_rate=0.5", "--resume"])
    assert result.exit_code == 2 and "trained with other learning_rate" in result.stderr
    result = CliRunner().invoke(app, ["train", "finetune", *common])
    assert result.exit_code == 2 and "pass --resume" in result.stderr


def test_resume_from_a_corrupt_checkpoint_names_it_and_offers_the_previous_one(untrained_dir, tmp_path):
    common = [f"teacher={untrained_dir}", "batch_size=2", "steps=4", "checkpoint_every=2", "keep_checkpoints=2", f"output={tmp_path}", SMALL_DATA]
    train("finetune", *common)
    latest = tmp_path / "checkpoints" / "step-000004"
    weights = latest / "weights.safetensors"
    assert weights.is_file()
    weights.write_bytes(weights.read_bytes()[:100])  # cut short, as a full disk or a kill would
    result = CliRunner().invoke(app, ["train", "finetune", *common, "--resume"])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "\n" not in message and "step-000004" in message and "corrupt" in message
    assert "previous checkpoint step-000002 is there" in message
    latest.rename(tmp_path / "corrupt-step-000004")  # what the message says to do
    train("finetune", *common, "--resume")
    manifest = json.loads((tmp_path / "pipeline" / "edgegen_training.json").read_text())
    assert manifest["resumed_from_step"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["finetune", "output=x", "stepz=3"], "unknown key 'stepz'"),
        (["finetune", "output=x", "teacher=t", "steps=many"], "steps: Input should be a valid integer"),
        (["finetune", "output=x"], "'teacher' is required"),
        (["finetune", "output=x", "teacher=/absent/folder"], "pipeline folder not found"),
        (["nope"], "unknown training recipe 'nope'"),
        (["finetune", "missing.yaml"], "config file not found"),
        (["finetune", "output=x", "teacher=t", "data=/absent/data"], "dataset not found"),
    ],
)
def test_bad_configs_fail_in_one_line_before_training(args, message, tmp_path):
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_yaml_config_with_overrides(tmp_path):
    from edgegen.trainers.config import resolve_config
    from edgegen.trainers.lora import LoraConfig

    path = tmp_path / "lora.yaml"
    path.write_text("teacher: t\noutput: o\nrank: 8\n")
    config = resolve_config(LoraConfig, path, ["rank=2", "target_convs=true"])
    assert (config.rank, config.target_convs, config.steps) == (2, True, 100)


def test_every_example_config_resolves():
    from edgegen.registry import RECIPES
    from edgegen.trainers.config import resolve_config

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert {c.stem for c in configs} >= {"finetune", "lora", "distill", "adversarial"}
    for path in configs:
        assert path.read_text().startswith("# edgegen train ")
        resolve_config(RECIPES.get(path.stem).config_type, path)


@pytest.mark.slow
def test_lora_adapter_reloads_through_diffusers_and_the_fused_pipeline_exports(untrained_dir, tmp_path):
    import torch

    from edgegen.families.stable_diffusion import build_component
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.families.loading import load_pipeline

    out = tmp_path / "lora"
    train("lora", f"teacher={untrained_dir}", f"output={out}", "steps=6", "batch_size=4", "rank=2", SMALL_DATA)
    details = json.loads((out / "pipeline" / "edgegen_training.json").read_text())["details"]
    assert 0 < details["trainable_fraction"] < 0.05
    fused = load_pipeline(out / "pipeline")
    with_adapter = load_pipeline(untrained_dir)
    with_adapter.load_lora_weights(str(out / "adapter"))
    plain = load_pipeline(untrained_dir)
    component = build_component(fused, "denoiser")
    inputs = component.example_args()
    with torch.no_grad():
        fused_out = fused.unet(*inputs[:2], encoder_hidden_states=inputs[2]).sample
        adapter_out = with_adapter.unet(*inputs[:2], encoder_hidden_states=inputs[2]).sample
        plain_out = plain.unet(*inputs[:2], encoder_hidden_states=inputs[2]).sample
    assert torch.allclose(fused_out, adapter_out, atol=1e-5)  # fusing changes nothing but speed
    assert not torch.allclose(fused_out, plain_out, atol=1e-5)  # and the adapter did learn something
    artifact = export_component(fused, out / "pipeline", "denoiser", "onnx", tmp_path / "artifacts", ExportOptions())
    assert artifact.manifest.parity.psnr_db > 60


@pytest.mark.slow
def test_two_processes_end_with_identical_weights(untrained_dir, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "edgegen.cli",
        "train", "finetune", f"teacher={untrained_dir}", f"output={out}", "steps=3", "batch_size=2", SMALL_DATA,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    manifest = json.loads((out / "pipeline" / "edgegen_training.json").read_text())
    # Each rank fingerprints its weights after the last step; training refuses to write on a mismatch.
    assert manifest["world_size"] == 2 and manifest["ranks_in_sync"] is True
    assert len(list((out / "checkpoints").iterdir())) == 1
