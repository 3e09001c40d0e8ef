"""``edgegen default-pipeline``: write the embedded default teacher as a diffusers folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgegen.cli.bounds import folder_output
from edgegen.terminal import console, quiet


def default_pipeline_command(
    output: Annotated[Path, typer.Argument(help="Folder to create.", callback=folder_output)],
    force: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
    untrained: Annotated[bool, typer.Option(help="Keep the seeded random initialisation (what training starts from).")] = False,
    student: Annotated[Path | None, typer.Option(help="Also write the distilled (KD-MMG) student here.", show_default=False, callback=folder_output)] = None,
    few_step_student: Annotated[Path | None, typer.Option(help="Also write the few-step (HDG-MMS) student here.", show_default=False, callback=folder_output)] = None,
) -> None:
    """Write the embedded default text-to-image pipeline (trained on the built-in shapes) to OUTPUT."""
    quiet()
    from edgegen.artifact import atomic_folder
    from edgegen.errors import EdgegenError
    from edgegen.embedded.builders import build_embedded_default, build_embedded_student

    if untrained and (student or few_step_student):
        raise EdgegenError("the committed students belong to the trained teacher; drop --untrained")
    for folder in (student, few_step_student):
        if folder is not None and folder.exists() and not force:
            raise EdgegenError(f"{folder} already exists; pass --force to replace it")
    with atomic_folder(output, force=force) as staging:
        build_embedded_default(staging, weights="random" if untrained else "trained")
    console.print(f"wrote the embedded default pipeline to {output}")
    for folder, kind in ((student, "distilled"), (few_step_student, "few-step")):
        if folder is not None:
            build_embedded_student(output, folder, kind)
            console.print(f"wrote its {kind} student to {folder}")
