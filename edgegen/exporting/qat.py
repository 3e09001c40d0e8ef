"""Quantization-aware students: the PT2E fake-quant graph of a student denoiser, saved and rebuilt.

A QAT student (``edgegen train distill qat=true``) trains its denoiser as a PT2E graph with
XNNPACK's symmetric int8 fake-quant (per-channel weights, per-tensor activations). Its folder
holds the trained float weights as usual plus ``unet/qat.safetensors``: the prepared graph's
whole state, learned scales and zero points included. ``quantized_denoiser`` rebuilds the same
graph (export -> prepare_qat_pt2e is deterministic for a given module), loads that state and
converts it, so the ExecuTorch exporter lowers the learned int8 scales without re-calibration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError

QAT_STATE_FILENAME = "qat.safetensors"  # inside unet/
# Quantization details of an export that lowered the checkpoint's own scales.
LEARNED_SCALES = {"source": "checkpoint (QAT)", "recalibrated": False}


def qat_quantizer() -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))


def prepare_fake_quant(module: Any, example_args: tuple) -> Any:
    """``module`` as a PT2E graph with int8 fake-quant inserted, ready to train."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from edgegen.exporting.pt2e import zero_uninitialised

    program = torch.export.export(module, example_args, strict=False)
    return prepare_qat_pt2e(zero_uninitialised(program.module()), qat_quantizer())


def qat_state_path(pipeline_dir: Path) -> Path:
    return Path(pipeline_dir) / "unet" / QAT_STATE_FILENAME


def fake_quant_denoiser(pipeline: Any, pipeline_dir: Path, batch_size: int = 1) -> Any:
    """The trained fake-quant graph of a QAT student, rebuilt from its folder (eval mode)."""
    import torch
    from safetensors.torch import load_file

    from edgegen.families.stable_diffusion import build_component

    path = qat_state_path(pipeline_dir)
    if not path.is_file():
        raise EdgegenError(f"{pipeline_dir} is not a QAT student: {path} is missing")
    component = build_component(pipeline, "denoiser", batch_size=batch_size)
    prepared = prepare_fake_quant(component.module, component.example_args())
    state = load_file(str(path))
    expected = set(prepared.state_dict())
    if set(state) != expected:
        raise EdgegenError(f"{path} does not match this student's fake-quant graph ({len(set(state) ^ expected)} keys differ)")
    prepared.load_state_dict(state, strict=True)
    for module in prepared.modules():  # observers would move the learned ranges at inference
        if hasattr(module, "disable_observer"):
            module.disable_observer()
    with torch.no_grad():
        prepared(*component.example_args())
    return prepared


def quantized_denoiser(pipeline: Any, pipeline_dir: Path, batch_size: int = 1, fake_quant: Any = None) -> Any:
    """The QAT student's denoiser converted to int8 quantize/dequantize form (PT2E convert).

    ``fake_quant``, when the caller already rebuilt it, is converted from a copy and left as it is.
    """
    import copy

    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if fake_quant is None:
        fake_quant = fake_quant_denoiser(pipeline, pipeline_dir, batch_size)
    return convert_pt2e(copy.deepcopy(fake_quant))
