"""``edgegen student``: make compact students of a teacher pipeline."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgegen.cli.bounds import folder_output
from edgegen.terminal import console, quiet

student_app = typer.Typer(help="Make compact SCMAN students of a teacher pipeline.", no_args_is_help=True)


class PresetName(str, Enum):
    tiny = "tiny"
    small = "small"
    base = "base"


@student_app.command("init")
def init_command(
    teacher: Annotated[Path, typer.Option(help="The teacher's diffusers pipeline folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Student pipeline folder to create.", callback=folder_output)],
    preset: Annotated[PresetName, typer.Option(help="Student size.")] = PresetName.small,
    force: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Create a student: fewer/narrower blocks, SCMAN cross-attention, teacher-initialised weights."""
    quiet()
    from edgegen.families import family_of
    from edgegen.models.checkpoint import read_student_manifest

    family_of(teacher).make_student(teacher, output, preset.value, force=force)
    manifest = read_student_manifest(output)
    init = manifest.initialisation
    console.print(
        f"wrote student '{preset.value}' to {output}: {manifest.student_parameters:,} UNet parameters "
        f"({manifest.student_parameters / manifest.teacher_parameters:.0%} of the teacher's); "
        f"tensors from the teacher: {init.copied} whole, {init.sliced} sliced, {init.random} new"
    )
