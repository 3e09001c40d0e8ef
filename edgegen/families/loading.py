"""Load a teacher: any diffusers pipeline saved in a local folder, never from a hub."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError, first_line
from edgegen.families.adapters import LoraRequest

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")
# Weights in these formats are pickles: loading one runs whatever code the file carries.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
ALLOW_PICKLE_ENV = "EDGEGEN_ALLOW_PICKLE"
# The libraries a model_index.json entry may name: a custom module beside the weights is code too.
_COMPONENT_LIBRARIES = ("diffusers", "transformers")


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
    check_component_classes(pipeline_dir)
    return pipeline_dir


def parse_model_index(index_file: Path) -> dict[str, Any]:
    """``model_index.json`` as a dict, or one line saying why it cannot be read."""
    try:
        index = json.loads(Path(index_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EdgegenError(f"cannot read {index_file}: {first_line(error)}") from None
    if not isinstance(index, dict):
        raise EdgegenError(f"{index_file} is not a JSON object")
    return index


def check_component_classes(pipeline_dir: Path) -> None:
    """Every component model_index.json names is a class its library has: refused before loading.

    The pipeline class itself is the families registry's to judge (``family_of``).
    """
    import importlib

    index_file = Path(pipeline_dir) / "model_index.json"
    index = parse_model_index(index_file)
    quiet_toolchains()
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list):
            continue  # metadata and flags such as requires_safety_checker
        if entry == [None, None]:
            continue  # an optional component left out (a safety checker, an image encoder)
        library, class_name = entry if len(entry) == 2 else (None, None)
        if library not in _COMPONENT_LIBRARIES or not isinstance(class_name, str):
            raise EdgegenError(
                f"{index_file}: component '{name}' names {json.dumps(entry)}; edgegen loads classes of "
                f"{' or '.join(_COMPONENT_LIBRARIES)} only"
            )
        if not hasattr(importlib.import_module(library), class_name):
            raise EdgegenError(f"{index_file}: component '{name}' names {library}.{class_name}, which {library} does not have")


def check_no_pickle_weights(pipeline_dir: Path) -> None:
    """Refuse pickled weights (code that runs on load) unless EDGEGEN_ALLOW_PICKLE=1 trusts the folder."""
    if os.environ.get(ALLOW_PICKLE_ENV) == "1":
        return
    pickles = sorted(p for p in Path(pipeline_dir).rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        names = ", ".join(p.relative_to(pipeline_dir).as_posix() for p in pickles[:3]) + (", ..." if len(pickles) > 3 else "")
        raise EdgegenError(
            f"{pipeline_dir} holds pickle weights ({names}); edgegen loads safetensors only: "
            f"convert them, or set {ALLOW_PICKLE_ENV}=1 to trust this folder"
        )


@dataclass(frozen=True)
class LoadOptions:
    """How a teacher folder is loaded, as diffusers offers it: a weight variant and LoRA adapters."""

    variant: str | None = None  # "fp16": diffusion_pytorch_model.fp16.safetensors
    loras: tuple[LoraRequest, ...] = ()
    # The dtype the weights are loaded and computed in (diffusers' torch_dtype): float16 halves
    # the weights' memory while loading and converting, and the artifact computes in float16.
    dtype: str = "float32"


LOAD_DTYPES = ("float32", "float16")


def check_dtype(dtype: str) -> None:
    if dtype not in LOAD_DTYPES:
        raise EdgegenError(f"--dtype {dtype}: edgegen loads weights as {' or '.join(LOAD_DTYPES)}")


# <weights>.<variant>.safetensors, or a shard of it: <weights>.<variant>-00001-of-00002.safetensors
_VARIANT_FILE = re.compile(r"^(?:diffusion_pytorch_model|model)\.([A-Za-z0-9_]+)(?:-\d+-of-\d+)?\.safetensors$")
_PLAIN_FILE = re.compile(r"^(?:diffusion_pytorch_model|model)(?:-\d+-of-\d+)?\.safetensors$")


def weight_variants(pipeline_dir: Path) -> tuple[set[str], bool]:
    """The weight variants a folder holds (``{"fp16"}``) and whether it holds plain weights too."""
    variants, plain = set(), False
    for path in Path(pipeline_dir).glob("*/*.safetensors"):
        match = _VARIANT_FILE.match(path.name)
        if match:
            variants.add(match.group(1))
        elif _PLAIN_FILE.match(path.name):
            plain = True
    return variants, plain


def variant_weight_files(folder: Path, variant: str | None) -> list[Path]:
    """The .safetensors files diffusers reads from one component folder for ``variant`` (None: the plain ones)."""
    files = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        match = _VARIANT_FILE.match(path.name)
        if (match and match.group(1) == variant) or (variant is None and _PLAIN_FILE.match(path.name)):
            files.append(path)
    return files


def check_variant(pipeline_dir: Path, variant: str | None) -> None:
    """Refuse, in one line, a variant the folder lacks, or a variant-only folder loaded without one."""
    variants, plain = weight_variants(pipeline_dir)
    if variant is None:
        if variants and not plain:
            choices = " or ".join(f"--variant {name}" for name in sorted(variants))
            raise EdgegenError(f"{pipeline_dir} holds only {'/'.join(sorted(variants))} variant weights; pass {choices}")
        return
    if not re.fullmatch(r"[A-Za-z0-9_]+", variant):
        raise EdgegenError(f"--variant {variant!r}: a variant is a name such as fp16 (letters, digits, _)")
    if variant not in variants:
        have = ", ".join(sorted(variants)) or "none"
        raise EdgegenError(f"{pipeline_dir} has no {variant} variant weights (variants it has: {have})")


def check_load_options(pipeline_dir: Path, options: LoadOptions) -> None:
    """Everything about the folder and the options that can be refused before loading: one line."""
    from edgegen.families.adapters import check_adapter_file

    check_no_pickle_weights(pipeline_dir)
    check_variant(pipeline_dir, options.variant)
    check_dtype(options.dtype)
    for request in options.loras:
        check_adapter_file(request.path)


def load_pipeline(pipeline_dir: Path, options: LoadOptions = LoadOptions()) -> Any:
    """``DiffusionPipeline.from_pretrained`` on a local folder, on the CPU, in ``options.dtype``.

    An unsupported pipeline class, a component class its library lacks, pickled weights (unless
    EDGEGEN_ALLOW_PICKLE=1), a variant the folder lacks and an unreadable LoRA adapter are refused
    (one line) before any weights are read; LoRA adapters are fused after loading.
    """
    from edgegen.families import family_of
    from edgegen.families.adapters import fuse_loras, warn_unrequested

    pipeline_dir = check_pipeline_dir(pipeline_dir)
    family_of(pipeline_dir)
    check_load_options(pipeline_dir, options)
    warn_unrequested(pipeline_dir, options.loras)
    quiet_toolchains()
    import torch
    from diffusers import DiffusionPipeline

    allow_pickle = os.environ.get(ALLOW_PICKLE_ENV) == "1"
    # A sub-model saved as left out (SD3 without its T5 encoder) is passed as None: diffusers
    # refuses to load a folder lacking a component its pipeline does not list as optional.
    index = parse_model_index(pipeline_dir / "model_index.json")
    left_out = {name: None for name, entry in index.items() if not name.startswith("_") and entry == [None, None]}
    try:
        pipeline = DiffusionPipeline.from_pretrained(
            str(pipeline_dir), local_files_only=True, dtype=getattr(torch, options.dtype),
            use_safetensors=None if allow_pickle else True,  # None: safetensors first, then the pickle
            variant=options.variant,
            **left_out,
        )
    except Exception as error:  # diffusers raises many types for broken folders
        raise EdgegenError(f"cannot load pipeline {pipeline_dir}: {first_line(error)}") from None
    from edgegen.models.checkpoint import restore_student

    restore_student(pipeline, pipeline_dir)  # a student's SCMAN, which diffusers does not save
    fuse_loras(pipeline, options.loras)
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
