"""Whether an export fits this machine's memory, decided from the weights' headers before loading.

An export that runs out of memory is killed after many minutes and says nothing useful, so the
peak is estimated first: the loaded pipeline, plus the component being converted times what its
target's converter was measured to need per byte of weights (``benchmarks/scale.py``, the peak
resident memory of ``edgegen export --component denoiser`` over the denoiser's weight bytes).
An export that would not fit is refused in one line naming the estimate, the memory available
and what would fit instead; ``--no-memory-check`` tries anyway.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.families.loading import variant_weight_files

GIB = 2**30

# Peak resident memory of an export over the bytes of the converted component's weights, as
# loaded (SD 1.5's UNet, 0.86 B parameters in float32: benchmarks/scale.py on this 2-core host).
PEAK_PER_WEIGHT_BYTE = {
    "onnx": 2.9,  # 9.2 GiB for 3.2 GiB: the module, the ONNX graph's initializers, onnxruntime's copy
    "executorch": 5.3,  # 17.0 GiB: exported program, edge program, XNNPACK's packed weights, the .pte buffer
    "tflite": 5.3,
    "coreml": 5.3,
}
# int8 also holds the prepared (observed) module and the converted one.
INT8_EXTRA_PER_WEIGHT_BYTE = 2.0
BASELINE_BYTES = 1 * GIB  # the interpreter with torch, diffusers and a toolchain imported
MEMORY_LIMIT_ENV = "EDGEGEN_MEMORY_LIMIT_GIB"  # overrides the memory counted as available

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors_elements(path: Path) -> tuple[int, int]:
    """(floating-point elements, bytes of everything else) from a .safetensors header, without reading the tensors."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    floating, other = 0, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for size in entry["shape"]:
            count *= size
        if entry["dtype"] in ("F64", "F32", "F16", "BF16"):
            floating += count
        else:
            other += count * _DTYPE_BYTES.get(entry["dtype"], 8)
    return floating, other


def loaded_bytes(pipeline_dir: Path, subfolder: str, variant: str | None, dtype: str) -> int:
    """The bytes ``subfolder``'s weights take once loaded in ``dtype``."""
    width = 2 if dtype == "float16" else 4
    total = 0
    for path in variant_weight_files(Path(pipeline_dir) / subfolder, variant):
        try:
            floating, other = safetensors_elements(path)
        except (OSError, ValueError, KeyError, struct.error) as error:
            raise EdgegenError(f"cannot read the header of {path}: {error}") from None
        total += floating * width + other
    return total


def available_bytes() -> int:
    limit = os.environ.get(MEMORY_LIMIT_ENV)
    if limit:
        try:
            return int(float(limit) * GIB)
        except ValueError:
            raise EdgegenError(f"{MEMORY_LIMIT_ENV}={limit!r} is not a number of GiB") from None
    import psutil

    return psutil.virtual_memory().available


def estimated_peak(component_bytes: dict[str, int], target: str, quantize: str) -> int:
    """The peak of exporting every component in ``component_bytes`` in one process."""
    factor = PEAK_PER_WEIGHT_BYTE[target] + (INT8_EXTRA_PER_WEIGHT_BYTE if quantize != "none" else 0.0)
    loaded = sum(component_bytes.values())
    return int(BASELINE_BYTES + loaded + (factor - 1) * max(component_bytes.values(), default=0))


def check_fits(pipeline_dir: Path, subfolders: dict[str, str], target: str, quantize: str, variant: str | None, dtype: str) -> None:
    """Refuse, in one line, an export whose estimated peak exceeds the memory available.

    ``subfolders`` maps each component to export to the folder holding its weights.
    """
    def peak(target: str, dtype: str) -> int:
        sizes = {name: loaded_bytes(pipeline_dir, folder, variant, dtype) for name, folder in subfolders.items()}
        return estimated_peak(sizes, target, quantize)

    need, have = peak(target, dtype), available_bytes()
    if need <= have:
        return
    largest = max(subfolders, key=lambda name: loaded_bytes(pipeline_dir, subfolders[name], variant, dtype))
    alternatives = [
        f"--target {other} (about {peak(other, dtype) / GIB:.1f} GiB)"
        for other in PEAK_PER_WEIGHT_BYTE
        if other != target and peak(other, dtype) <= have
    ]
    if dtype == "float32" and quantize == "none" and peak(target, "float16") <= have:
        alternatives.insert(0, f"--dtype float16 (about {peak(target, 'float16') / GIB:.1f} GiB)")
    instead = "; what fits: " + ", ".join(alternatives) if alternatives else "; nothing fits on this machine"
    raise EdgegenError(
        f"exporting {largest} ({loaded_bytes(pipeline_dir, subfolders[largest], variant, dtype) / GIB:.1f} GiB of {dtype} weights) "
        f"to {target} needs about {need / GIB:.1f} GiB of memory and {have / GIB:.1f} GiB is available{instead} "
        "(or --no-memory-check to try anyway); nothing was written"
    )
