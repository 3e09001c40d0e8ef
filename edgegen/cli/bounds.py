"""Option callbacks for values typer's own ``min=``/``max=`` cannot check (NaN, infinity)."""

from __future__ import annotations

import math

import typer

# Exported shapes are static and every activation scales with the batch: beyond this a component
# no longer fits an edge device's memory, and the export itself would take the host's.
MAX_BATCH_SIZE = 64


def finite(value: float | None) -> float | None:
    """A float option that must be a number: ``nan`` or ``inf`` would pass or fail every gate."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value
