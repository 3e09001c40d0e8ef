"""``edgegen bundle``: the files an app-side runtime loads unchanged, for a teacher or student folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgegen.terminal import console, quiet


def bundle_command(
    pipeline_dir: Annotated[Path, typer.Argument(help="A pipeline folder: a teacher or a student.")],
    format_name: Annotated[str, typer.Option("--format", help="The app-side runtime: react-native-executorch (its five-file TextToImageModule), react-native-executorch-sdxs (its rewrite's one .pte, for a few-step student), apple-swift (ml-stable-diffusion's Swift package).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The bundle folder to write.")],
    force: Annotated[bool, typer.Option(help="Replace an existing bundle folder.")] = False,
    chunk_unet: Annotated[
        bool | None,
        typer.Option("--chunk-unet/--no-chunk-unet", help="apple-swift: split the UNet into UnetChunk1/2 (default: when its weights exceed the 1 GB the Neural Engine on iOS loads)."),
    ] = None,
) -> None:
    """Write the files FORMAT's app-side runtime loads, each checked against its eager graph."""
    quiet()
    from edgegen.bundling import write_bundle
    from edgegen.schema.bundle import read_bundle_manifest

    with console.status(f"writing the {format_name} bundle of {pipeline_dir}..."):
        folder = write_bundle(format_name, pipeline_dir, output, force=force, chunk_unet=chunk_unet)
    manifest = read_bundle_manifest(folder)
    console.print(f"wrote {folder} ({manifest.format}, {manifest.image_size} px, {len(manifest.files)} files)", markup=False, highlight=False)
    for line in manifest.adaptations:
        console.print(f"  fitted: {line}", markup=False, highlight=False)
    for line in manifest.next_steps:
        console.print(f"  next: {line}", markup=False, highlight=False)
