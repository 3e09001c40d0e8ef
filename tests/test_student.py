"""Students: made from the teacher's config and weights, saved and reloaded with SCMAN, exported."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgegen.cli import app
from edgegen.errors import EdgegenError


@pytest.fixture(scope="session")
def student_dir(pipeline_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("student") / "tiny"
    result = CliRunner().invoke(app, ["student", "init", "--teacher", str(pipeline_dir), "-o", str(out), "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    return out


def test_student_is_smaller_and_teacher_initialised(student_dir):
    manifest = json.loads((student_dir / "edgegen_student.json").read_text())
    assert manifest["student_parameters"] < manifest["teacher_parameters"] / 3
    assert manifest["initialisation"]["copied"] + manifest["initialisation"]["sliced"] > 0
    assert manifest["architecture"]["mid_block"] == [True, False]
    config = json.loads((student_dir / "unet" / "config.json").read_text())
    assert config["mid_block_type"] is None and config["block_out_channels"] == [16, 32]


def test_student_reloads_with_scman_and_from_teacher_slices(student_dir, pipeline):
    import torch
    from diffusers import DiffusionPipeline

    from edgegen.models.scman import SCMANConfig, SCMANProcessor, install_scman
    from edgegen.families.loading import load_pipeline

    student = load_pipeline(student_dir)
    cross = {n: p for n, p in student.unet.attn_processors.items() if "attn2" in n}
    assert cross and all(isinstance(p, SCMANProcessor) for p in cross.values())

    # The same folder through plain diffusers has standard attention; SCMAN changes the output.
    plain = DiffusionPipeline.from_pretrained(str(student_dir)).unet.eval()
    inputs = (torch.randn(1, 4, 8, 8), torch.tensor([500.0]), torch.randn(1, 40, 32))
    with torch.no_grad():
        restored = student.unet(*inputs, return_dict=False)[0]
        standard = plain(*inputs, return_dict=False)[0]
        manifest = json.loads((student_dir / "edgegen_student.json").read_text())
        install_scman(plain, SCMANConfig(**manifest["scman"]))
        reinstalled = plain(*inputs, return_dict=False)[0]
    assert not torch.allclose(restored, standard)
    torch.testing.assert_close(restored, reinstalled)

    # Leading slices of the teacher's tensors.
    teacher_kernel = pipeline.unet.conv_in.weight
    assert torch.equal(student.unet.conv_in.weight, teacher_kernel[:16])


def test_presets_keep_shapes_delegate_friendly(pipeline_dir, tmp_path):
    from edgegen.models.student import PRESETS, student_unet_config
    from edgegen.families.loading import load_pipeline

    teacher_config = dict(load_pipeline(pipeline_dir).unet.config)
    for name, preset in PRESETS.items():
        config, _ = student_unet_config(teacher_config, preset)
        for channels in config["block_out_channels"]:
            assert channels % config["norm_num_groups"] == 0, name


def test_unknown_preset_and_missing_teacher(tmp_path, pipeline_dir):
    from edgegen.models.student import make_student

    with pytest.raises(EdgegenError, match="unknown preset 'huge'"):
        make_student(pipeline_dir, "huge", tmp_path / "s")
    result = CliRunner().invoke(app, ["student", "init", "--teacher", str(tmp_path / "none"), "-o", str(tmp_path / "s")])
    assert result.exit_code == 2 and "pipeline folder not found" in result.stderr
    assert not (tmp_path / "s").exists()


def test_a_student_not_smaller_than_its_teacher_is_refused_in_one_line(tmp_path):
    """diffusers' test SD UNet is so narrow that rounding its channels up to the GroupNorm and
    head multiples outweighs the removed blocks: every preset would be larger (112%)."""
    from tests.dummy_pipelines import stable_diffusion

    teacher = stable_diffusion.build(tmp_path / "sd")
    result = CliRunner().invoke(app, ["student", "init", "--teacher", str(teacher), "-o", str(tmp_path / "s"), "--preset", "tiny"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "preset 'tiny' would make a UNet of" in result.stderr and "more than the teacher's" in result.stderr
    assert not (tmp_path / "s").exists()


def test_attention_heads_make_wide_heads_on_the_teachers_weights(pipeline_dir, tmp_path):
    """--attention-heads 1: one head per layer over the same weights (what mobile CPU kernels run
    fastest), recorded in the manifest; a decoder student has no attention to change."""
    import torch

    from edgegen.families.loading import load_pipeline
    from edgegen.models.checkpoint import read_student_manifest

    out = tmp_path / "one-head"
    result = CliRunner().invoke(app, ["student", "init", "--teacher", str(pipeline_dir), "-o", str(out), "--attention-heads", "1"])
    assert result.exit_code == 0, result.output
    assert read_student_manifest(out).architecture["attention_heads"] == [8, 1]
    student = load_pipeline(out)
    heads = {m.heads for m in student.unet.modules() if type(m).__name__ == "Attention"}
    assert heads == {1}
    reference = tmp_path / "eight-heads"
    assert CliRunner().invoke(app, ["student", "init", "--teacher", str(pipeline_dir), "-o", str(reference)]).exit_code == 0
    eight = load_pipeline(reference)
    assert {m.heads for m in eight.unet.modules() if type(m).__name__ == "Attention"} == {8}
    # The same tensors, initialised from the same teacher: only the split into heads differs.
    assert all(torch.equal(a, b) for a, b in zip(student.unet.state_dict().values(), eight.unet.state_dict().values(), strict=True))
    result = CliRunner().invoke(app, ["student", "init", "--teacher", str(pipeline_dir), "-o", str(tmp_path / "d"), "--component", "vae_decoder", "--attention-heads", "1"])
    assert result.exit_code == 2 and "--attention-heads applies to denoiser students" in result.stderr


def test_added_and_class_embeddings_are_named_as_what_they_are(pipeline_dir):
    from edgegen.models.student import PRESETS, student_unet_config

    teacher = json.loads((pipeline_dir / "unet" / "config.json").read_text())
    with pytest.raises(EdgegenError, match="added text_time conditioning \\(SDXL-style\\)"):
        student_unet_config({**teacher, "addition_embed_type": "text_time"}, PRESETS["small"])
    with pytest.raises(EdgegenError, match="simple_projection class embeddings \\(AudioLDM-style\\)"):
        student_unet_config({**teacher, "class_embed_type": "simple_projection"}, PRESETS["small"])


def test_corrupt_student_manifest_is_one_line(student_dir, tmp_path):
    import shutil

    from edgegen.families.loading import load_pipeline

    copy = tmp_path / "student"
    shutil.copytree(student_dir, copy)
    manifest = json.loads((copy / "edgegen_student.json").read_text())
    manifest["surprise"] = True
    (copy / "edgegen_student.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgegenError, match="unknown key 'surprise'"):
        load_pipeline(copy)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnx", "executorch", "tflite", "coreml"])
def test_student_denoiser_exports_to_every_target(student_dir, tmp_path, target):
    from edgegen.exporting.orchestration import export_pipeline

    [artifact] = export_pipeline(student_dir, target, tmp_path, components=["denoiser"])
    manifest = artifact.manifest
    if manifest.parity.measured:
        assert manifest.parity.psnr_db >= manifest.parity.min_psnr_db
    else:
        assert "macOS" in manifest.parity.reason
    assert manifest.delegation.delegated_nodes > 0


def test_a_student_loaded_in_float16_exports_in_float16(student_dir, tmp_path):
    """SCMAN is installed after the load; its summaries must follow the weights' dtype, or the
    exporters meet a graph of mixed float types (ONNX and ExecuTorch refused it)."""
    import torch

    from edgegen.exporting.orchestration import ExportOptions, export_pipeline
    from edgegen.families.loading import LoadOptions, load_pipeline

    student = load_pipeline(student_dir, LoadOptions(dtype="float16"))
    assert {p.dtype for p in student.unet.parameters()} == {torch.float16}
    [artifact] = export_pipeline(student_dir, "onnx", tmp_path, components=["denoiser"], options=ExportOptions(load=LoadOptions(dtype="float16")))
    assert artifact.manifest.precision == "float16" and artifact.folder.name == "denoiser-onnx-float16"
    assert artifact.manifest.parity.psnr_db >= artifact.manifest.parity.min_psnr_db


def test_corrupt_scman_weights_are_named_in_one_line(student_dir, tmp_path):
    import shutil

    from edgegen.errors import EdgegenError
    from edgegen.families.loading import load_pipeline

    copy = tmp_path / "student"
    shutil.copytree(student_dir, copy)
    weights = copy / "unet" / "scman.safetensors"
    weights.write_bytes(b"\x00" * 16)  # not a safetensors file
    with pytest.raises(EdgegenError, match=r"cannot read the SCMAN weights .*unet/scman.safetensors") as caught:
        load_pipeline(copy)
    assert "\n" not in str(caught.value)
