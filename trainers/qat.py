"""Quantization-aware training of a student denoiser (``qat=true`` on distill and adversarial).

The student's denoiser is exported and prepared with PT2E int8 fake-quant (``edgegen.exporting.qat``), at
the training batch size, and trained as that graph. torchao's ``move_exported_model_to_train``
is not called: it rewrites dropout and batch-norm patterns, and a diffusers UNet has neither in a
form that needs it (it broke dropout in a spike here). The saved student carries the trained
float weights in ``unet/`` and the whole fake-quant state in ``unet/qat.safetensors``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def prepare_qat_denoiser(student: Any, batch_size: int) -> Any:
    from edgegen.families.stable_diffusion import build_component
    from edgegen.exporting.qat import prepare_fake_quant

    component = build_component(student, "denoiser", batch_size=batch_size)
    return prepare_fake_quant(component.module, component.example_args())


def save_qat_student(student: Any, prepared: Any, parent_dir: Path, folder: Path, summary: dict[str, Any], details: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from edgegen.exporting.qat import QAT_STATE_FILENAME
    from edgegen.trainers.outputs import save_trained_pipeline

    state = {key: value.detach().clone() for key, value in prepared.state_dict().items()}
    # The graph's parameters are the student UNet's, under the Denoiser wrapper's "unet." prefix.
    weights = {key[len("unet."):]: value for key, value in state.items() if key.startswith("unet.")}
    student.unet.load_state_dict(weights, strict=False)
    qat = {"scheme": "int8", "quantizer": "XNNPACKQuantizer symmetric, per-channel weights, QAT", "state": f"unet/{QAT_STATE_FILENAME}"}
    save_trained_pipeline(student, parent_dir, folder, summary, {**details, "qat": qat})
    save_file(state, str(folder / "unet" / QAT_STATE_FILENAME))
