"""Option callbacks for what typer's own checks cannot see: NaN and infinity, and an output path
that is a file where a folder is written (or a folder where a file is)."""

from __future__ import annotations

import math
from pathlib import Path

import typer

# Exported shapes are static and every activation scales with the batch: beyond this a component
# no longer fits an edge device's memory, and the export itself would take the host's.
MAX_BATCH_SIZE = 64


def finite(value: float | None) -> float | None:
    """A float option that must be a number: ``nan`` or ``inf`` would pass or fail every gate."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def _file_among_parents(path: Path) -> Path | None:
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            return None if parent.is_dir() else parent
    return None


def file_output(value: Path | None) -> Path | None:
    """An output that is one file: a folder there, or a file where its folder should be, is refused before any work."""
    if value is None:
        return value
    if value.is_dir():
        raise typer.BadParameter(f"{value} is a directory; give a file name")
    blocking = _file_among_parents(value)
    if blocking is not None:
        raise typer.BadParameter(f"{blocking} is a file, not a folder")
    return value


def folder_output(value: Path | None) -> Path | None:
    """An output that is a folder: a file there or among its parents is refused before any work (never replaced)."""
    if value is None:
        return value
    if value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file, not a folder")
    blocking = _file_among_parents(value)
    if blocking is not None:
        raise typer.BadParameter(f"{blocking} is a file, not a folder")
    return value
