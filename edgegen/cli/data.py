"""``edgegen data``: write the built-in shapes dataset, and clean a dataset with a report."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgegen.cli.bounds import file_output, folder_output
from edgegen.terminal import console

data_app = typer.Typer(help="Datasets: the built-in shapes, and cleaning of image/caption/audio folders.", no_args_is_help=True)


class Layout(str, Enum):
    folder = "folder"
    jsonl = "jsonl"
    shards = "shards"


@data_app.command("shapes")
def shapes_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to create.", callback=folder_output)],
    count: Annotated[int, typer.Option(help="Number of images.", min=1)] = 1000,
    layout: Annotated[Layout, typer.Option(help="folder (x.png + x.txt), jsonl (index.jsonl) or shards (WebDataset-style .tar).")] = Layout.folder,
    audio: Annotated[bool, typer.Option(help="Add a tone per image (pitch encodes the colour).")] = False,
    seed: Annotated[int, typer.Option(help="Dataset seed.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Write the built-in coloured-shapes dataset to disk."""
    from edgegen.data.shapes import write_shapes_dataset

    write_shapes_dataset(output, count, seed, layout.value, audio, force=force)
    console.print(f"wrote {count} captioned shapes to {output} ({layout.value})")


@data_app.command("clean")
def clean_command(
    source: Annotated[str, typer.Argument(help="An image folder, a .jsonl index, a folder of .tar shards, or builtin:shapes.")],
    report: Annotated[Path | None, typer.Option(help="Write the cleaning report (JSON) here.", show_default=False, callback=file_output)] = None,
    image_size: Annotated[int, typer.Option(help="Training resolution.", min=1)] = 32,
    audio: Annotated[bool, typer.Option(help="Require and check audio for every record.")] = False,
) -> None:
    """Check every record, standardise what is kept, and say what was dropped and why."""
    from rich.table import Table

    from edgegen.data.records import load_training_set
    from edgegen.schema.base import write_json

    _, cleaning = load_training_set(source, image_size=image_size, with_audio=audio)
    table = Table(title=f"{source} ({cleaning.layout})")
    table.add_column("records")
    table.add_column("count", justify="right")
    table.add_column("examples")
    table.add_row("kept", str(cleaning.kept), "")
    for reason, count in cleaning.dropped.items():
        table.add_row(f"dropped: {reason}", str(count), ", ".join(cleaning.examples.get(reason, [])))
    console.print(table)
    if report is not None:
        from edgegen.errors import writing

        # Written beside and renamed into place: a full disk leaves no half report.
        staging = report.with_name(f".{report.name}.{os.getpid()}.tmp")
        try:
            with writing(report):
                write_json(staging, cleaning)
                staging.replace(report)
        finally:
            staging.unlink(missing_ok=True)
        console.print(f"report: {report}")
