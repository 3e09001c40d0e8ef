"""``edgegen compare``: an artifact's outputs vs the teacher's eager component, same inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgegen.cli.output import console, fmt_db, print_json, quiet


def compare_command(
    artifact_dir: Annotated[Path, typer.Argument(help="An artifact folder written by `edgegen export`.")],
    teacher: Annotated[Path, typer.Option(help="The teacher's diffusers pipeline folder.")],
    threads: Annotated[int, typer.Option(help="CPU threads for the runtime.")] = 1,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """PSNR, max abs error and cosine of ARTIFACT_DIR against the teacher on its reference inputs."""
    quiet()
    from edgegen.compare import compare_artifact

    result = compare_artifact(artifact_dir, teacher, threads)
    if json_output:
        print_json(result.model_dump(mode="json"))
        return
    quality = result.quality
    note = "" if quality.same_checkpoint else " (the artifact came from other weights)"
    console.print(
        f"{result.component} on {result.runtime} vs teacher: PSNR {fmt_db(quality.psnr_db)} dB, "
        f"max abs error {quality.max_abs_error:.3g}, cosine {quality.cosine:.6f}{note}"
    )
