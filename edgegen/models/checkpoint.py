"""Read and write student checkpoint folders: a diffusers pipeline plus edgegen_student.json.

diffusers saves the UNet's config and weights but not its attention processors, so SCMAN's
configuration lives in the manifest and its learned parameters (if any) in
``unet/scman.safetensors``; ``restore_student`` puts both back after ``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.schema.base import load_strict_json, write_json
from edgegen.schema.checkpoint import (
    CHECKPOINT_SCHEMA_VERSION,
    SCMAN_WEIGHTS_FILENAME,
    STUDENT_MANIFEST_FILENAME,
    StudentManifest,
)


def _scman_state(unet: Any) -> dict[str, Any]:
    return {name: tensor for name, tensor in unet.state_dict().items() if ".processor." in name}


def write_student(pipeline: Any, manifest: StudentManifest, folder: Path) -> None:
    from safetensors.torch import save_file

    pipeline.save_pretrained(folder, safe_serialization=True)
    extra = _scman_state(pipeline.unet)
    if extra:
        save_file({k: v.contiguous() for k, v in extra.items()}, str(folder / "unet" / SCMAN_WEIGHTS_FILENAME))
    write_json(folder / STUDENT_MANIFEST_FILENAME, manifest)


def read_student_manifest(folder: Path) -> StudentManifest | None:
    path = Path(folder) / STUDENT_MANIFEST_FILENAME
    if not path.exists():
        return None
    return load_strict_json(path, StudentManifest, CHECKPOINT_SCHEMA_VERSION, "student manifest")


def restore_student(pipeline: Any, folder: Path) -> StudentManifest | None:
    """Re-install SCMAN (and its learned weights) on a student loaded with from_pretrained."""
    manifest = read_student_manifest(folder)
    if manifest is None:
        return manifest
    if manifest.recipe.get("qat"):
        pipeline._edgegen_qat_dir = Path(folder)  # edgegen.exporting.qat rebuilds the learned int8 denoiser from it
    if manifest.scman is None:
        return manifest
    from edgegen.models.scman import SCMANConfig, install_scman

    install_scman(pipeline.unet, SCMANConfig(**manifest.scman))
    weights = Path(folder) / "unet" / SCMAN_WEIGHTS_FILENAME
    if weights.exists():
        from safetensors.torch import load_file

        missing = set(_scman_state(pipeline.unet)) - set(load_file(str(weights)))
        if missing:
            raise EdgegenError(f"{weights} lacks SCMAN parameters: {', '.join(sorted(missing)[:3])}")
        pipeline.unet.load_state_dict(load_file(str(weights)), strict=False)
    return manifest
