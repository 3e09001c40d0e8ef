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


class StudentComponent(str, Enum):
    denoiser = "denoiser"
    vae_decoder = "vae_decoder"


@student_app.command("init")
def init_command(
    teacher: Annotated[Path, typer.Option(help="The teacher's diffusers pipeline folder (for --component vae_decoder: any folder whose VAE the student learns, a few-step student's included).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Student pipeline folder to create.", callback=folder_output)],
    preset: Annotated[PresetName, typer.Option(help="Student size.")] = PresetName.small,
    component: Annotated[StudentComponent, typer.Option(help="denoiser: a compact SCMAN denoiser; vae_decoder: a tiny TAESD-like decoder in place of the VAE (train it with `edgegen train decoder`).")] = StudentComponent.denoiser,
    force: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
    attention_heads: Annotated[
        int | None,
        typer.Option(min=1, help="Heads per attention layer (default: the teacher's). One or two wide heads run faster than many narrow ones on mobile CPUs (XNNPACK, LiteRT); distil the student after changing them."),
    ] = None,
) -> None:
    """Create a student: fewer/narrower blocks, SCMAN cross-attention, teacher-initialised weights (or a tiny decoder)."""
    quiet()
    from edgegen.families import family_of
    from edgegen.models.checkpoint import read_student_manifest

    if component is StudentComponent.vae_decoder:
        from edgegen.models.decoder_student import make_decoder_student, read_decoder_manifest

        if attention_heads is not None:
            from edgegen.errors import EdgegenError

            raise EdgegenError("--attention-heads applies to denoiser students; a decoder student has no attention")

        make_decoder_student(teacher, preset.value, output, force=force)
        decoder = read_decoder_manifest(output)
        console.print(
            f"wrote decoder student '{preset.value}' to {output}: {decoder.student_parameters:,} decoder parameters "
            f"({decoder.student_parameters / decoder.teacher_parameters:.0%} of the teacher's); untrained: "
            f"`edgegen train decoder teacher={teacher} student={output} output=...`"
        )
        return
    family_of(teacher).make_student(teacher, output, preset.value, force=force, attention_heads=attention_heads)
    manifest = read_student_manifest(output)
    init = manifest.initialisation
    console.print(
        f"wrote student '{preset.value}' to {output}: {manifest.student_parameters:,} UNet parameters "
        f"({manifest.student_parameters / manifest.teacher_parameters:.0%} of the teacher's); "
        f"tensors from the teacher: {init.copied} whole, {init.sliced} sliced, {init.random} new"
    )
