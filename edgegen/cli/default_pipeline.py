"""``edgegen default-pipeline``: write the embedded default teacher as a diffusers folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgegen.cli.output import console, quiet


def default_pipeline_command(
    output: Annotated[Path, typer.Argument(help="Folder to create.")],
    force: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Build the embedded default text-to-image pipeline (offline, seeded) and save it to OUTPUT."""
    quiet()
    from edgegen.artifact import atomic_folder
    from edgegen.models.tiny import build_embedded_default

    with atomic_folder(output, force=force) as staging:
        build_embedded_default(staging)
    console.print(f"wrote the embedded default pipeline to {output}")
