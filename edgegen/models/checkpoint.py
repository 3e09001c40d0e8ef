"""Read and write student checkpoint folders: a diffusers pipeline plus edgegen_student.json.

diffusers saves the denoiser's config and weights but not its attention processors, so SCMAN's
configuration lives in the manifest and its learned parameters (if any) in
``<denoiser subfolder>/scman.safetensors``; ``restore_student`` puts both back after
``from_pretrained``. Which sub-model is the denoiser is the family's knowledge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError, first_line
from edgegen.schema.base import load_strict_json, write_json
from edgegen.schema.checkpoint import (
    CHECKPOINT_SCHEMA_VERSION,
    SCMAN_WEIGHTS_FILENAME,
    STUDENT_MANIFEST_FILENAME,
    StudentManifest,
    STUDENT_MIGRATIONS,
)


def _scman_state(denoiser: Any) -> dict[str, Any]:
    return {name: tensor for name, tensor in denoiser.state_dict().items() if ".processor." in name}


def _denoiser(pipeline: Any, folder: Path) -> tuple[Any, str]:
    from edgegen.families import denoiser_model, family_of

    family = family_of(folder)
    return denoiser_model(family, pipeline)


def write_student(pipeline: Any, manifest: StudentManifest, folder: Path) -> None:
    from safetensors.torch import save_file

    pipeline.save_pretrained(folder, safe_serialization=True)
    denoiser, subfolder = _denoiser(pipeline, folder)
    extra = _scman_state(denoiser)
    if extra:
        save_file({k: v.contiguous() for k, v in extra.items()}, str(Path(folder) / subfolder / SCMAN_WEIGHTS_FILENAME))
    write_json(Path(folder) / STUDENT_MANIFEST_FILENAME, manifest)


def read_student_manifest(folder: Path) -> StudentManifest | None:
    path = Path(folder) / STUDENT_MANIFEST_FILENAME
    if not path.exists():
        return None
    return load_strict_json(path, StudentManifest, CHECKPOINT_SCHEMA_VERSION, "student manifest", migrations=STUDENT_MIGRATIONS)


def restore_student(pipeline: Any, folder: Path) -> StudentManifest | None:
    """Re-install SCMAN (and its learned weights) on a student loaded with from_pretrained."""
    manifest = read_student_manifest(folder)
    if manifest is None or manifest.scman is None:
        return manifest
    from edgegen.models.scman import SCMANConfig, install_scman

    denoiser, subfolder = _denoiser(pipeline, folder)
    dtype = next((p.dtype for p in denoiser.parameters() if p.is_floating_point()), None)
    install_scman(denoiser, SCMANConfig(**manifest.scman.model_dump()))
    weights = Path(folder) / subfolder / SCMAN_WEIGHTS_FILENAME
    if weights.exists():
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights))
        except Exception as error:  # safetensors raises several types for corrupt files
            raise EdgegenError(f"cannot read the SCMAN weights {weights}: {first_line(error)}") from None
        missing = set(_scman_state(denoiser)) - set(state)
        if missing:
            raise EdgegenError(f"{weights} lacks SCMAN parameters: {', '.join(sorted(missing)[:3])}")
        denoiser.load_state_dict(state, strict=False)
    if dtype is not None:
        # SCMAN's summaries are made in float32; a student loaded in float16 computes in float16
        # throughout (the exporters refuse a graph of mixed float types).
        denoiser.to(dtype)
    return manifest


def learned_scales(folder: Path, component: str) -> Any:
    """The declared quantization source of a QAT student's ``component`` (None if it has none)."""
    manifest = read_student_manifest(folder)
    state = next((state for state in manifest.qat if state.component == component), None) if manifest is not None else None
    if state is None:
        return None
    from edgegen.exporting.quantize import LearnedScales

    return LearnedScales(scheme=state.scheme, state_path=Path(folder) / state.state_file, timesteps=state.timesteps, guidance_scale=state.guidance_scale)


def forget_learned_scales(folder: Path, subfolder: str) -> None:
    """Drop from ``folder``'s student manifest (if any), and from the folder, every QAT state kept
    in ``subfolder`` and the one-call program's (it holds every component): those weights were
    replaced, so their learned scales no longer describe them."""
    from edgegen.exporting.one_call import PIPELINE_COMPONENT

    manifest = read_student_manifest(folder)
    if manifest is None:
        return
    kept = [state for state in manifest.qat if not state.state_file.startswith(f"{subfolder}/") and state.component != PIPELINE_COMPONENT]
    if len(kept) != len(manifest.qat):
        for stale in {state.state_file for state in manifest.qat} - {state.state_file for state in kept}:
            (Path(folder) / stale).unlink(missing_ok=True)
        write_json(Path(folder) / STUDENT_MANIFEST_FILENAME, manifest.model_copy(update={"qat": kept}))
