"""Decoder students: a TAESD-like tiny decoder (diffusers' ``AutoencoderTiny``) in place of a
pipeline's VAE, to be distilled from that VAE's decoder by the ``decoder`` recipe.

In a few-step image the VAE decoder becomes the largest single cost; a few convolution blocks at
one width, trained to reproduce the teacher decoder's images from the same latents, cost a
fraction of it. The student has as many resolution levels as the teacher (so the same upsampling
factor) and decodes the sampler's latents directly, as TAESD does.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError


@dataclass(frozen=True)
class DecoderPreset:
    width_fraction: float  # of the teacher decoder's narrowest level
    blocks_per_level: int  # AutoencoderTiny blocks at each level but the last (which has 1)


# Families whose pipelines compare by the latent space a decoder manifest records.
DECODER_STUDENT_FAMILIES = ("stable-diffusion", "latent-consistency")

DECODER_PRESETS = {
    "tiny": DecoderPreset(0.5, 1),
    "small": DecoderPreset(1.0, 1),
    "base": DecoderPreset(1.0, 3),  # TAESD's own layout
}


def tiny_decoder_config(teacher_vae_config: dict[str, Any], preset: DecoderPreset) -> dict[str, Any]:
    levels = teacher_vae_config.get("block_out_channels")
    if not levels:
        raise EdgegenError(f"a decoder student needs an AutoencoderKL-like VAE (block_out_channels); this one is {teacher_vae_config.get('_class_name')}")
    width = max(8, int(round(min(levels) * preset.width_fraction / 8)) * 8)
    blocks = tuple([preset.blocks_per_level] * (len(levels) - 1) + [1])
    return {
        "in_channels": teacher_vae_config.get("in_channels", 3),
        "out_channels": teacher_vae_config.get("out_channels", 3),
        "encoder_block_out_channels": [width] * len(levels),
        "decoder_block_out_channels": [width] * len(levels),
        "num_encoder_blocks": [1] * len(levels),
        "num_decoder_blocks": list(blocks),
        "latent_channels": teacher_vae_config["latent_channels"],
        "upsampling_scaling_factor": 2,
        "act_fn": "relu",
        "scaling_factor": 1.0,  # takes the sampler's latents as they are
        "shift_factor": 0.0,
    }


def decoder_parameters(vae: Any) -> int:
    """The parameters an image decode runs through (the decoder, and a VAE's post-quant conv)."""
    modules = [vae.decoder] + ([vae.post_quant_conv] if getattr(vae, "post_quant_conv", None) is not None else [])
    return sum(p.numel() for module in modules for p in module.parameters())


def weights_sha256(module: Any) -> str:
    """A hash of a module's tensors (names, dtypes, shapes, values): equal for the same weights
    saved twice, where a folder hash also sees config bookkeeping (diffusers' version, paths)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def make_decoder_student(source_dir: Path, preset_name: str, output_dir: Path, force: bool = False, seed: int = 0) -> Path:
    """``source_dir`` (a teacher or a student) copied to ``output_dir`` with a fresh tiny decoder as its VAE."""
    import torch
    from diffusers import AutoencoderTiny

    from edgegen.artifact import atomic_folder
    from edgegen.models.checkpoint import forget_learned_scales
    from edgegen.families import family_of
    from edgegen.families.base import read_config
    from edgegen.schema.base import write_json
    from edgegen.schema.decoder_student import DECODER_MANIFEST_FILENAME, DecoderStudentManifest, LatentSpace
    from edgegen.versions import edgegen_version

    if preset_name not in DECODER_PRESETS:
        raise EdgegenError(f"unknown decoder preset '{preset_name}'; choose one of: {', '.join(DECODER_PRESETS)}")
    source_dir = Path(source_dir)
    family = family_of(source_dir)
    if family.name not in DECODER_STUDENT_FAMILIES:
        raise EdgegenError(f"decoder students are made for {', '.join(DECODER_STUDENT_FAMILIES)} pipelines so far, not {family.name}")
    if (source_dir / DECODER_MANIFEST_FILENAME).is_file():
        raise EdgegenError(f"{source_dir} already has a decoder student; make one from the folder whose VAE it should learn")
    vae_config = read_config(source_dir, "vae")
    if vae_config.get("_class_name") != "AutoencoderKL":
        raise EdgegenError(f"a decoder student is distilled from an AutoencoderKL; {source_dir}/vae is a {vae_config.get('_class_name')}")
    from diffusers import AutoencoderKL

    teacher_vae = AutoencoderKL.from_pretrained(source_dir / "vae")
    config = tiny_decoder_config(dict(teacher_vae.config), DECODER_PRESETS[preset_name])
    torch.manual_seed(seed)
    student_vae = AutoencoderTiny(**config).eval()
    teacher_count, student_count = decoder_parameters(teacher_vae), decoder_parameters(student_vae)
    if student_count >= teacher_count:
        raise EdgegenError(
            f"decoder preset '{preset_name}' would have {student_count:,} parameters, not fewer than the teacher decoder's {teacher_count:,}; choose a smaller preset"
        )
    manifest = DecoderStudentManifest(
        edgegen_version=edgegen_version(),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        preset=preset_name,
        source_dir=str(source_dir.resolve()),
        teacher_vae_sha256=weights_sha256(teacher_vae),
        latent_space=LatentSpace(
            latent_channels=vae_config["latent_channels"], scaling_factor=vae_config["scaling_factor"], shift_factor=vae_config.get("shift_factor")
        ),
        teacher_parameters=teacher_count,
        student_parameters=student_count,
        architecture=config,
    )
    with atomic_folder(Path(output_dir), force=force) as staging:
        shutil.copytree(source_dir, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("vae"))
        student_vae.save_pretrained(staging / "vae", safe_serialization=True)
        forget_learned_scales(staging, "vae")
        _point_model_index_at(staging, "AutoencoderTiny")
        write_json(staging / DECODER_MANIFEST_FILENAME, manifest)
    return Path(output_dir)


def _point_model_index_at(folder: Path, vae_class: str) -> None:
    import json

    path = folder / "model_index.json"
    index = json.loads(path.read_text(encoding="utf-8"))
    index["vae"] = ["diffusers", vae_class]
    path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def read_decoder_manifest(folder: Path):
    from edgegen.schema.base import load_strict_json
    from edgegen.schema.decoder_student import DECODER_MANIFEST_FILENAME, DECODER_SCHEMA_VERSION, DecoderStudentManifest

    path = Path(folder) / DECODER_MANIFEST_FILENAME
    if not path.is_file():
        return None
    return load_strict_json(path, DecoderStudentManifest, DECODER_SCHEMA_VERSION, "decoder student manifest")
