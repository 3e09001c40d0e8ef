"""Loading options of `edgegen export`: LoRA adapters fused and recorded, weight variants, and their refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.dummy_pipelines import stable_diffusion

LORA_SCALE = 0.5


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return stable_diffusion.build(tmp_path_factory.mktemp("sd") / "pipeline")


@pytest.fixture(scope="module")
def lora_file(sd_dir, tmp_path_factory) -> Path:
    """A diffusers-format LoRA of the UNet's attention projections, with non-zero up weights."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipeline = StableDiffusionPipeline.from_pretrained(str(sd_dir), local_files_only=True)
    torch.manual_seed(1)
    pipeline.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False))
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipeline.unet), safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


def _export(*args: str):
    from edgegen.cli import app

    return CliRunner().invoke(app, ["export", *args])


def test_a_lora_is_fused_with_its_scale_and_recorded(tmp_path, sd_dir, lora_file):
    from safetensors.torch import load_file

    from edgegen.artifact import load_artifact
    from edgegen.families import family_of
    from edgegen.families.adapters import LoraRequest
    from edgegen.families.loading import LoadOptions, load_pipeline
    from edgegen.session import open_artifact

    result = _export(str(sd_dir), "-o", str(tmp_path), "--component", "denoiser", "--lora", str(lora_file), "--lora-scale", str(LORA_SCALE))
    assert result.exit_code == 0, result.output
    artifact = load_artifact(tmp_path / "denoiser-onnx")
    [adapter] = artifact.manifest.source.adapters
    assert (adapter.file, adapter.scale) == ("pytorch_lora_weights.safetensors", LORA_SCALE)
    assert len(adapter.sha256) == 64

    # The fused weights are W + scale * B @ A, layer by layer (alpha = r: the file stores no alpha).
    base = load_pipeline(sd_dir)
    adapted = load_pipeline(sd_dir, LoadOptions(loras=(LoraRequest(lora_file, LORA_SCALE),)))
    lora = load_file(str(lora_file))
    key = next(k for k in lora if k.endswith("attn1.to_q.lora_A.weight"))
    layer = key.removeprefix("unet.").removesuffix(".lora_A.weight")
    delta = lora[key.replace("lora_A", "lora_B")] @ lora[key]
    fused, original = adapted.unet.get_submodule(layer).weight, base.unet.get_submodule(layer).weight
    assert torch.allclose(fused - original, LORA_SCALE * delta, atol=1e-5)
    assert not any("lora" in name for name, _ in adapted.unet.named_parameters()), "adapter layers left in the graph"

    # The artifact is the adapted model, measurably not the base one.
    family = family_of(sd_dir)
    want = family.build_component(adapted, "denoiser").run_eager()["noise_pred"].numpy()
    plain = family.build_component(base, "denoiser").run_eager()["noise_pred"].numpy()
    reference, _ = artifact.reference_tensors()
    got = open_artifact(artifact).run(reference)["noise_pred"]
    assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()
    assert np.abs(want - plain).max() > 1e-2 * np.abs(plain).max(), "the LoRA does not change the model"


def test_a_lora_beside_the_weights_that_was_not_asked_for_is_named(tmp_path, sd_dir, lora_file):
    folder = tmp_path / "with-lora"
    shutil.copytree(sd_dir, folder)
    shutil.copy(lora_file, folder / "pytorch_lora_weights.safetensors")
    result = _export(str(folder), "-o", str(tmp_path / "out"), "--component", "text_encoder")
    assert result.exit_code == 0, result.output
    assert f"warning: {folder / 'pytorch_lora_weights.safetensors'} looks like a LoRA adapter and is not applied" in result.stderr


def test_an_adapter_for_another_model_is_refused_and_nothing_is_written(tmp_path, sd_dir, lora_file):
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other_lora.safetensors"
    save_file({k.replace("down_blocks", "mid_blocks"): v for k, v in load_file(str(lora_file)).items()}, str(other))
    result = _export(str(sd_dir), "-o", str(tmp_path / "out"), "--component", "denoiser", "--lora", str(other))
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "\n" not in message and "does not fit StableDiffusionPipeline" in message and "match no layer" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "make, args, expected",
    [
        (lambda d: d / "a.bin", [], "reads .safetensors adapters only"),
        (lambda d: d / "missing.safetensors", [], "LoRA adapter not found"),
        (lambda d: d / "plain.safetensors", [], "holds no LoRA layers"),
        (lambda d: d / "junk.safetensors", [], "is not a readable safetensors file"),
        (None, ["--lora-scale", "0.5"], "--lora-scale needs a --lora adapter"),
        (lambda d: d / "plain.safetensors", ["--lora-scale", "0.5", "--lora-scale", "1"], "give one --lora-scale per --lora"),
    ],
)
def test_bad_lora_options_are_one_line_before_loading(tmp_path, sd_dir, make, args, expected):
    from safetensors.torch import save_file

    (tmp_path / "a.bin").write_bytes(b"\x80\x04not a pickle you want")
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    lora = ["--lora", str(make(tmp_path))] if make else []
    result = _export(str(sd_dir), "-o", str(tmp_path / "out"), "--component", "text_encoder", *lora, *args)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def fp16_dir(sd_dir, tmp_path_factory):
    """The dummy pipeline saved as diffusers saves fp16 variants: only *.fp16.safetensors weights."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(str(sd_dir), local_files_only=True, torch_dtype=torch.float16)
    folder = tmp_path_factory.mktemp("fp16") / "pipeline"
    pipeline.save_pretrained(folder, safe_serialization=True, variant="fp16")
    return folder


def test_a_variant_folder_loads_with_variant_and_says_so_without(tmp_path, fp16_dir):
    from edgegen.artifact import load_artifact

    result = _export(str(fp16_dir), "-o", str(tmp_path / "a"), "--component", "text_encoder")
    assert result.exit_code == 2 and "holds only fp16 variant weights; pass --variant fp16" in result.stderr, result.output
    result = _export(str(fp16_dir), "-o", str(tmp_path / "b"), "--component", "text_encoder", "--variant", "int4")
    assert result.exit_code == 2 and "has no int4 variant weights (variants it has: fp16)" in result.stderr, result.output
    result = _export(str(fp16_dir), "-o", str(tmp_path / "c"), "--component", "text_encoder", "--variant", "fp16")
    assert result.exit_code == 0, result.output
    manifest = load_artifact(tmp_path / "c" / "text_encoder-onnx").manifest
    assert manifest.source.variant == "fp16" and manifest.inputs[0].name == "input_ids"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_older_manifests_still_load(tmp_path, sd_dir):
    from edgegen.artifact import load_artifact
    from edgegen.schema.manifest import MANIFEST_FILENAME

    assert _export(str(sd_dir), "-o", str(tmp_path), "--component", "text_encoder").exit_code == 0
    path = tmp_path / "text_encoder-onnx" / MANIFEST_FILENAME
    data = json.loads(path.read_text())
    data["schema_version"] = 1
    del data["source"]["variant"], data["source"]["adapters"], data["source"]["dtype"]
    path.write_text(json.dumps(data))
    manifest = load_artifact(tmp_path / "text_encoder-onnx").manifest
    assert manifest.schema_version == 4 and manifest.source.adapters == [] and manifest.source.variant is None
    assert manifest.source.dtype == "float32"
