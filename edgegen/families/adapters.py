"""LoRA adapters: found, checked, hashed and fused into a loaded pipeline before export.

Adapters are diffusers-format LoRA files (``save_lora_weights``, Kohya and the other formats
``load_lora_weights`` converts). Each is fused with its scale, so an artifact is the adapted model
with no adapter code at run time, and the manifest records every adapter (file hash, scale). An
adapter whose layers do not all exist in the pipeline is refused in one line: diffusers only
warns and would export the base model. A LoRA file lying in the pipeline folder that was not asked
for is named in a warning, never silently ignored.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError, first_line

# diffusers' default adapter file name, and what other trainers call theirs.
_ADAPTER_NAME = re.compile(r"(^|[_.-])lora([_.-]|$)", re.IGNORECASE)
# One key per adapted layer: its down (A) projection, in each format load_lora_weights reads.
_LAYER_KEY = re.compile(r"(lora_A|lora_down|lora\.down|lora_linear_layer\.down)(\.[\w-]+)?\.weight$")


@dataclass(frozen=True)
class LoraRequest:
    path: Path
    scale: float = 1.0


@dataclass(frozen=True)
class AdapterRecord:
    file: str  # the file name as given (its folder is the user's, not the artifact's)
    sha256: str
    scale: float


def lora_requests(paths: list[Path] | None, scales: list[float] | None) -> tuple[LoraRequest, ...]:
    """``--lora`` / ``--lora-scale`` pairs: scales default to 1, or one per adapter, in order."""
    paths, scales = list(paths or []), list(scales or [])
    if scales and not paths:
        raise EdgegenError("--lora-scale needs a --lora adapter to scale")
    if scales and len(scales) != len(paths):
        raise EdgegenError(f"give one --lora-scale per --lora ({len(paths)} adapters, {len(scales)} scales), or none for 1.0 each")
    for scale in scales:
        if not math.isfinite(scale):
            raise EdgegenError(f"--lora-scale {scale} is not a finite number")
    return tuple(LoraRequest(Path(path), scales[index] if scales else 1.0) for index, path in enumerate(paths))


def check_adapter_file(path: Path) -> dict[str, Any]:
    """The adapter's tensors (safetensors only: a pickle runs code on load), or one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise EdgegenError(f"LoRA adapter not found: {path}" if not path.exists() else f"LoRA adapter {path} is not a file")
    if path.suffix != ".safetensors":
        raise EdgegenError(f"LoRA adapter {path}: edgegen reads .safetensors adapters only (a pickle runs code when loaded)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise EdgegenError(f"LoRA adapter {path} is not a readable safetensors file: {first_line(error)}") from None
    if not any(_LAYER_KEY.search(key) for key in tensors):
        raise EdgegenError(f"{path} holds no LoRA layers (no lora_A / lora_down weights): it is not a LoRA adapter")
    return tensors


def adapter_records(requests: tuple[LoraRequest, ...]) -> list[AdapterRecord]:
    records = []
    for request in requests:
        digest = hashlib.sha256(Path(request.path).read_bytes()).hexdigest()
        records.append(AdapterRecord(file=Path(request.path).name, sha256=digest, scale=request.scale))
    return records


def unrequested_adapters(pipeline_dir: Path, requests: tuple[LoraRequest, ...]) -> list[Path]:
    """LoRA-looking safetensors files inside the pipeline folder that no --lora names."""
    asked = {Path(request.path).resolve() for request in requests}
    found = [
        path for path in sorted(Path(pipeline_dir).rglob("*.safetensors"))
        if _ADAPTER_NAME.search(path.stem) and path.resolve() not in asked
    ]
    return found


def warn_unrequested(pipeline_dir: Path, requests: tuple[LoraRequest, ...]) -> None:
    for path in unrequested_adapters(pipeline_dir, requests):
        print(f"warning: {path} looks like a LoRA adapter and is not applied; pass --lora {path} to fuse it", file=sys.stderr)


def _adapted_layers(pipeline: Any, adapter: str) -> int:
    import torch

    count = 0
    for component in pipeline.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for module in component.modules():
            lora_a = getattr(module, "lora_A", None)
            if isinstance(lora_a, torch.nn.ModuleDict) and adapter in lora_a:
                count += 1
    return count


def fuse_loras(pipeline: Any, requests: tuple[LoraRequest, ...]) -> None:
    """Load, check and fuse each adapter into ``pipeline``'s weights, then drop the adapter layers."""
    if not requests:
        return
    try:
        import peft  # noqa: F401  (diffusers' LoRA loading needs it)
    except ImportError:
        raise EdgegenError("fusing LoRA adapters needs peft: pip install 'edgegen[train]'") from None
    if not hasattr(pipeline, "load_lora_weights"):
        raise EdgegenError(f"{type(pipeline).__name__} takes no LoRA adapters")
    names = []
    for index, request in enumerate(requests):
        tensors = check_adapter_file(request.path)
        expected = sum(1 for key in tensors if _LAYER_KEY.search(key))
        name = f"edgegen_lora_{index}"
        try:
            pipeline.load_lora_weights(str(request.path), adapter_name=name)
        except Exception as error:  # shape mismatches and unknown formats surface as many types
            raise EdgegenError(f"LoRA adapter {request.path} does not fit {type(pipeline).__name__}: {first_line(error)}") from None
        found = _adapted_layers(pipeline, name)
        if found < expected:
            raise EdgegenError(
                f"LoRA adapter {request.path} does not fit {type(pipeline).__name__}: {expected - found} of its "
                f"{expected} layers match no layer of this pipeline (an adapter for another model?)"
            )
        names.append(name)
    pipeline.set_adapters(names, adapter_weights=[request.scale for request in requests])
    pipeline.fuse_lora(adapter_names=names)
    pipeline.unload_lora_weights()
