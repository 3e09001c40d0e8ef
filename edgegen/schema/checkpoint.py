"""The student checkpoint manifest: how a student was made, so a loader can rebuild it exactly.

It sits beside the diffusers pipeline folder of a student (``edgegen_student.json``): the
architecture (the student UNet's config is in ``unet/config.json`` as usual; SCMAN's config,
which diffusers does not know, is here), where its weights came from, and how it was made.
"""

from __future__ import annotations

from typing import Any, Literal

from edgegen.schema.base import StrictModel

CHECKPOINT_SCHEMA_VERSION = 1
STUDENT_MANIFEST_FILENAME = "edgegen_student.json"
SCMAN_WEIGHTS_FILENAME = "scman.safetensors"  # learned SCMAN parameters, inside unet/


class Initialisation(StrictModel):
    copied: int  # tensors copied whole from the teacher
    sliced: int  # tensors copied from a slice of a wider teacher tensor
    random: int  # tensors with no teacher counterpart


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
    scman: dict[str, Any] | None  # SCMANConfig fields, or None for standard attention
    initialisation: Initialisation
    recipe: dict[str, Any] = {}  # the trainer's resolved config, once a trainer has run
