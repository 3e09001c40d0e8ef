"""Load a teacher: any diffusers pipeline saved in a local folder, never from a hub."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError, first_line

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")


def quiet_toolchains() -> None:
    """Silence progress bars and info logs that would bury edgegen's own output."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from diffusers.utils import logging as diffusers_logging

    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def check_pipeline_dir(pipeline_dir: Path) -> Path:
    pipeline_dir = Path(pipeline_dir)
    if not pipeline_dir.exists():
        raise EdgegenError(f"pipeline folder not found: {pipeline_dir}")
    if not pipeline_dir.is_dir():
        raise EdgegenError(f"{pipeline_dir} is a file, not a diffusers pipeline folder")
    if not (pipeline_dir / "model_index.json").is_file():
        raise EdgegenError(f"{pipeline_dir} is not a diffusers pipeline folder (no model_index.json)")
    return pipeline_dir


def load_pipeline(pipeline_dir: Path) -> Any:
    """``DiffusionPipeline.from_pretrained`` on a local folder, in float32 on the CPU.

    An unsupported pipeline class is refused (one line) before any weights are read.
    """
    from edgegen.families import family_of

    pipeline_dir = check_pipeline_dir(pipeline_dir)
    family_of(pipeline_dir)
    quiet_toolchains()
    import torch
    from diffusers import DiffusionPipeline

    try:
        pipeline = DiffusionPipeline.from_pretrained(
            str(pipeline_dir), local_files_only=True, dtype=torch.float32
        )
    except Exception as error:  # diffusers raises many types for broken folders
        raise EdgegenError(f"cannot load pipeline {pipeline_dir}: {first_line(error)}") from None
    from edgegen.models.checkpoint import restore_student

    restore_student(pipeline, pipeline_dir)  # a student's SCMAN, which diffusers does not save
    return pipeline


def checkpoint_sha256(pipeline_dir: Path, subfolder: str) -> str:
    """A hash over one component's config and weight files: which weights an artifact came from."""
    folder = Path(pipeline_dir) / subfolder
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        raise EdgegenError(f"{folder} holds no weights or config to hash")
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
