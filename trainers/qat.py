"""Quantization-aware training of a student denoiser (``qat=true`` on distill and adversarial).

The student's denoiser is exported and prepared with PT2E int8 fake-quant (``edgegen.exporting.quantize``), at
the training batch size, and trained as that graph. torchao's ``move_exported_model_to_train``
is not called: it rewrites dropout and batch-norm patterns, and a diffusers UNet has neither in a
form that needs it (it broke dropout in a spike here). The saved student carries the trained
float weights in its denoiser's subfolder as usual and the whole fake-quant state beside them
(``<subfolder>/qat.safetensors``), declared in its manifest's ``qat`` field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _denoiser_component(student: Any, student_dir: Path, batch_size: int) -> Any:
    from edgegen.families import components_with_role, family_of

    family = family_of(student_dir)
    return family.build_component(student, components_with_role(family, "denoiser")[0].name, batch_size=batch_size)


def prepare_qat_denoiser(student: Any, student_dir: Path, batch_size: int) -> Any:
    from edgegen.exporting.quantize import prepare_fake_quant

    component = _denoiser_component(student, student_dir, batch_size)
    return prepare_fake_quant(component.module, component.example_args())


def save_qat_student(student: Any, prepared: Any, parent_dir: Path, folder: Path, summary: dict[str, Any], details: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from edgegen.exporting.quantize import QAT_STATE_FILENAME
    from edgegen.families import networks_of
    from edgegen.trainers.outputs import save_trained_pipeline

    component = _denoiser_component(student, parent_dir, 1)
    # The graph's parameters are the denoiser's, under its component wrapper's attribute name.
    prefix = next(name for name, _ in component.module.named_children()) + "."
    state = {key: value.detach().clone() for key, value in prepared.state_dict().items()}
    weights = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    nets = networks_of(parent_dir, student)
    nets.denoiser.load_state_dict(weights, strict=False)
    state_file = f"{nets.subfolders['denoiser']}/{QAT_STATE_FILENAME}"
    qat = {"component": component.name, "scheme": "int8", "quantizer": "XNNPACKQuantizer symmetric, per-channel weights, QAT", "state": state_file}
    save_trained_pipeline(student, parent_dir, folder, summary, {**details, "qat": qat})
    save_file(state, str(folder / state_file))
