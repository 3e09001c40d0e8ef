"""Whether an export fits this machine's memory, decided from the weights' headers before loading.

An export that runs out of memory is killed after many minutes and says nothing useful, so the
peak is estimated first: the loaded pipeline, plus the component being converted times what its
target's converter was measured to need per byte of weights (``benchmarks/scale.py``, the peak
resident memory of ``edgegen export --component denoiser`` over the denoiser's weight bytes).
An export that would not fit is refused in one line naming the estimate, the memory available
and what would fit instead; ``--no-memory-check`` tries anyway.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.families.loading import variant_weight_files

GIB = 2**30

# Peak resident memory of an export over the bytes of the converted component's weights, as
# loaded, per target and load dtype (benchmarks/scale.py on this 2-core host: the peak resident
# memory of `edgegen export --component denoiser` of a real-size configuration).
PEAK_PER_WEIGHT_BYTE = {
    # SD 1.5's UNet (0.86 B) in float32: 9.2 GiB for 3.2 GiB (module, ONNX initializers, onnxruntime's copy).
    ("onnx", "float32"): 2.9,
    # SDXL's UNet (2.6 B) in float16: 20.8 GiB for 4.8 GiB. onnxruntime's CPU provider upcasts
    # float16 weights to float32 for its kernels, and the eager reference runs in float32.
    ("onnx", "float16"): 4.3,
    # SD 1.5's UNet in float32: 10.5 GiB peak resident, parity's runtime included (ExecuTorch
    # 1.5.1, 2.8 min; 17.0 GiB before the exporter shared the pipeline's weights and forgot its
    # lowered graphs).
    ("executorch", "float32"): 3.0,
    # SD 1.5's UNet in float16: 11.9 GiB for 1.6 GiB. Lowering needs 2.4x the weights (the
    # delegate's serialized copy among them), and parity's runtime, loading the weight file and
    # packing it for XNNPACK, 2.8x on top of what the export leaves.
    ("executorch", "float16"): 6.7,
    # SD 1.5's UNet in float32: 11.9 GiB (litert-torch 0.10, 2.1 min).
    ("tflite", "float32"): 3.4,
    # PixArt-Sigma's transformer (0.6 B) in float32: 5.5 GiB for 2.27 GiB, converted from
    # torch.export's program (TorchScript tracing, which held every activation, and the
    # attention's materialized zero-weighted input were killed out of memory at 21 GiB).
    ("coreml", "float32"): 2.0,
    # Both convert a float32 copy (twice the float16 bytes), at their float32 overhead.
    ("tflite", "float16"): 1 + 2 * 3.4,
    ("coreml", "float16"): 1 + 2 * 2.0,
}
TARGETS = tuple(dict.fromkeys(target for target, _ in PEAK_PER_WEIGHT_BYTE))
# int8: the whole export's peak per byte of float32 weights, per target; not float's figure plus
# a margin, since the int8 program is a quarter of the float one and lowering it, and loading it
# for parity, need that much less (SD 1.5's UNet, `edgegen export --quantize int8`, 2026-12-07).
INT8_PEAK_PER_WEIGHT_BYTE = {
    # 6.95 GiB peak resident in 8.5 min: the prepared (observed) and converted programs.
    "executorch": 1.9,
    # 10.2 GiB in 7.6 min.
    "tflite": 2.9,
    # onnxruntime's quantizer after the float export: the float model, its preprocessed copy, the
    # calibration's augmented model and its session. Killed for memory at 24 GiB twice, where
    # float's figure plus 2 estimated 16.7 GiB: a lower bound.
    "onnx": 2.9 + 4.0,
    # Core ML's int8 is of the weights only (coremltools' linear_quantize_weights on the float program).
    "coreml": 2.0 + 2.0,
}
BASELINE_BYTES = 1 * GIB  # the interpreter with torch, diffusers and a toolchain imported
MEMORY_LIMIT_ENV = "EDGEGEN_MEMORY_LIMIT_GIB"  # overrides the memory counted as available

_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_OTHER_DTYPE_BYTES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def loaded_bytes(pipeline_dir: Path, subfolder: str, variant: str | None, dtype: str) -> int:
    """The bytes ``subfolder``'s weights take once loaded in ``dtype``, from the files' headers
    (safetensors reads shapes and dtypes without reading the tensors)."""
    from safetensors import SafetensorError, safe_open

    width = 2 if dtype == "float16" else 4
    total = 0
    for path in variant_weight_files(Path(pipeline_dir) / subfolder, variant):
        try:
            with safe_open(str(path), framework="numpy") as weights:
                for key in weights.keys():
                    tensor = weights.get_slice(key)
                    kind = tensor.get_dtype()
                    total += math.prod(tensor.get_shape()) * (width if kind in _FLOAT_DTYPES else _OTHER_DTYPE_BYTES.get(kind, 8))
        except (OSError, SafetensorError) as error:
            raise EdgegenError(f"cannot read the header of {path}: {error}") from None
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


def estimated_peak(component_bytes: dict[str, int], target: str, quantize: str, dtype: str = "float32") -> int:
    """The peak of exporting every component in ``component_bytes`` (loaded in ``dtype``) in one process."""
    if quantize == "none":
        factor = PEAK_PER_WEIGHT_BYTE[target, dtype]
    else:
        factor = INT8_PEAK_PER_WEIGHT_BYTE[target]
        if dtype == "float16":  # quantized from a float32 copy, twice the float16 bytes
            factor = 1 + 2 * factor
    loaded = sum(component_bytes.values())
    return int(BASELINE_BYTES + loaded + (factor - 1) * max(component_bytes.values(), default=0))


def check_fits(pipeline_dir: Path, subfolders: dict[str, str], target: str, quantize: str, variant: str | None, dtype: str) -> None:
    """Refuse, in one line, an export whose estimated peak exceeds the memory available.

    ``subfolders`` maps each component to export to the folder holding its weights.
    """
    dtypes = (dtype, "float16") if dtype == "float32" and quantize == "none" else (dtype,)
    sizes = {each: {name: loaded_bytes(pipeline_dir, folder, variant, each) for name, folder in subfolders.items()} for each in dtypes}

    def peak(target: str, dtype: str) -> int:
        return estimated_peak(sizes[dtype], target, quantize, dtype)

    need, have = peak(target, dtype), available_bytes()
    if need <= have:
        return
    largest = max(sizes[dtype], key=sizes[dtype].get)
    # The same target in float16 first, then other targets (in float16 where only that fits).
    options = [(target, each) for each in dtypes[1:]]
    for other in TARGETS:
        if other != target:
            options += [(other, each) for each in dtypes]
    alternatives, placed = [], set()
    for other, other_dtype in options:
        if other in placed or peak(other, other_dtype) > have:
            continue
        placed.add(other)
        flags = ([] if other == target else [f"--target {other}"]) + ([] if other_dtype == dtype else [f"--dtype {other_dtype}"])
        alternatives.append(f"{' '.join(flags)} (about {peak(other, other_dtype) / GIB:.1f} GiB)")
    instead = "; what fits: " + ", ".join(alternatives) if alternatives else "; nothing fits on this machine"
    raise EdgegenError(
        f"exporting {largest} ({sizes[dtype][largest] / GIB:.1f} GiB of {dtype} weights) "
        f"to {target} needs about {need / GIB:.1f} GiB of memory and {have / GIB:.1f} GiB is available{instead} "
        "(or --no-memory-check to try anyway); nothing was written"
    )
