"""The student checkpoint manifest: how a student was made, so a loader can rebuild it exactly.

It sits beside the diffusers pipeline folder of a student (``edgegen_student.json``): the
architecture (the student UNet's config is in ``unet/config.json`` as usual; SCMAN's config,
which diffusers does not know, is here), where its weights came from, and how it was made.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from edgegen.schema.base import StrictModel

# 2: the few-step schedule, the QAT state and SCMAN's config are typed fields (v1 kept the first
# two inside the free-form ``recipe`` and SCMAN as a dict); v1 files are read and lifted.
CHECKPOINT_SCHEMA_VERSION = 3
STUDENT_MANIFEST_FILENAME = "edgegen_student.json"
SCMAN_WEIGHTS_FILENAME = "scman.safetensors"  # learned SCMAN parameters, inside unet/


class Initialisation(StrictModel):
    copied: int  # tensors copied whole from the teacher
    sliced: int  # tensors copied from a slice of a wider teacher tensor
    random: int  # tensors with no teacher counterpart


class SCMANSettings(StrictModel):
    """edgegen.models.scman.SCMANConfig as saved (diffusers does not save attention processors)."""

    mode: str = "sparse"
    window: int = 4
    global_tokens: int = 1
    summary_tokens: int = 4
    summary: str = "pooled"
    context_length: int | None = None
    self_attention: bool = False
    layout: str = "bhld"


class FewStepSchedule(StrictModel):
    """A few-step student's own sampler (``edgegen train adversarial``): what the runner follows."""

    steps: int
    timesteps: list[int]
    prediction: str = "x0 from the model output, moved to the next timestep by DDIM (eta 0)"


# What a fake-quant graph was trained as: XNNPACK's int8 (ExecuTorch, ONNX Runtime lower it), or
# LiteRT's, whose scales are shared across concatenation and pad inputs as its converter requires.
QAT_SCHEMES = {"xnnpack": "pt2e-xnnpack-int8-qat", "litert": "pt2e-litert-int8-qat"}  # the name `edgegen train qat scheme=` takes


class QatState(StrictModel):
    """Where a quantization-aware-trained component keeps its fake-quant state (learned scales)."""

    scheme: Literal["pt2e-xnnpack-int8-qat", "pt2e-litert-int8-qat"] = "pt2e-xnnpack-int8-qat"
    component: str  # the artifact component whose export lowers these scales ("pipeline": the one-call program)
    state_file: str  # relative to the student folder, inside that component's subfolder
    # A one-call program's scales hold for the program they were learned in: its timesteps and
    # guidance (None for a single component).
    timesteps: list[int] | None = None
    guidance_scale: float | None = None


def lift_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A v1 manifest (or a v1-style ``recipe``) with the schedule and QAT flag as typed fields."""
    data = dict(data)
    recipe = dict(data.get("recipe") or {})
    if "sampling" in recipe and "sampling" not in data:
        sampling = recipe.pop("sampling")
        data["sampling"] = {key: sampling[key] for key in ("steps", "timesteps", "prediction") if key in sampling}
    qat = recipe.pop("qat", False)
    if qat and "qat" not in data:
        # Schema 1 students were Stable Diffusion ones, whose trainers kept the state beside the UNet.
        state_file = qat["state"] if isinstance(qat, dict) and "state" in qat else "unet/qat.safetensors"
        data["qat"] = {"component": "denoiser", "state_file": state_file}
    data["recipe"] = recipe
    data["schema_version"] = 2
    return data


def lift_v2(data: dict[str, Any]) -> dict[str, Any]:
    """A v2 manifest with its one QAT state (a denoiser's, or none) as the list v3 keeps per component."""
    data = dict(data)
    qat = data.get("qat")
    data["qat"] = [] if qat is None else qat if isinstance(qat, list) else [qat]  # a v3 provenance passes through
    data["schema_version"] = 3
    return data


STUDENT_MIGRATIONS = {1: lift_v1, 2: lift_v2}


class StudentManifest(StrictModel):
    schema_version: int = CHECKPOINT_SCHEMA_VERSION
    kind: Literal["edgegen.student"] = "edgegen.student"
    edgegen_version: str
    created_at: str
    preset: str
    teacher_dir: str
    teacher_unet_sha256: str
    teacher_parameters: int
    student_parameters: int
    architecture: dict[str, Any]  # what changed from the teacher's UNet config
    scman: SCMANSettings | None  # None: standard attention
    initialisation: Initialisation
    recipe: dict[str, Any] = {}  # the trainer's name and resolved config, once a trainer has run
    sampling: FewStepSchedule | None = None  # a few-step student's schedule; None: any scheduler steps
    qat: list[QatState] = []  # each quantization-aware-trained component's learned int8 scales, one per component

    @field_validator("qat")
    @classmethod
    def _one_state_per_component(cls, states: list[QatState]) -> list[QatState]:
        components = [state.component for state in states]
        if len(set(components)) != len(components):
            raise ValueError(f"more than one QAT state for a component ({', '.join(components)})")
        return states
