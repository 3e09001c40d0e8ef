"""``edgegen demo``: the README's main job on the embedded default pipeline."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgegen.cli.output import console, fmt_db, fmt_kb, fmt_ms, quiet
from edgegen.errors import EdgegenError


class Precision(str, Enum):
    float = "float"
    int8 = "int8"


def demo_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Working folder for the teacher, artifacts and results.")] = Path("out/demo"),
    target: Annotated[list[str] | None, typer.Option(help="Target to include (repeatable); default: every one this machine exports to.")] = None,
    precision: Annotated[list[Precision] | None, typer.Option(help="float and/or int8 (repeatable); default: both.")] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per artifact.")] = 20,
) -> None:
    """Export the embedded default to every target in float and int8, then profile and compare each artifact."""
    quiet()
    from edgegen.demo import exportable_targets, plan, run_demo
    from edgegen.registry import EXPORTERS

    targets = target or exportable_targets()
    for name in targets:
        reason = EXPORTERS.get(name).unavailable_reason()  # an unknown name fails here, before any work
        if reason:
            raise EdgegenError(f"target '{name}' is not usable here: {reason}")
    precisions = [p.value for p in precision] if precision else ["float", "int8"]
    steps = len(plan(targets, precisions)) * 3
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("starting", total=steps)
        started = False

        def on_step(message: str) -> None:
            nonlocal started
            progress.update(task, description=message, advance=1 if started else 0)
            started = True

        rows = run_demo(output, targets, precisions, runs, on_step)
        progress.update(task, description="done", completed=steps)

    results = [r.model_dump(mode="json") for row in rows for r in (row.profile, row.comparison) if r is not None]
    results_path = output / "results.json"
    results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    table = Table(title="embedded default: exported components vs the teacher (1 thread)")
    columns = ("component", "target", "quant", "KiB", "delegated", "p50 ms", "p90 ms", "peak +MiB", "PSNR vs float", "PSNR vs teacher")
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:3] else "right")
    for row in rows:
        manifest = row.artifact.manifest
        delegation = manifest.delegation
        cells = [
            manifest.component,
            manifest.target + (f"/{manifest.backend}" if manifest.backend else ""),
            manifest.quantization.scheme,
            fmt_kb(row.artifact.size_bytes),
            f"{delegation.delegated_fraction:.0%}" if delegation else "-",
        ]
        if row.profile is None:
            cells += [f"not run: {row.not_run_reason}", "", "", "", ""]
        else:
            latency, memory, quality = row.profile.latency, row.profile.memory, row.comparison.quality
            cells += [fmt_ms(latency.p50_ms), fmt_ms(latency.p90_ms), f"{memory.added_mb:.1f}", fmt_db(manifest.parity.psnr_db), fmt_db(quality.psnr_db)]
        table.add_row(*cells)
    console.print(table)
    console.print(f"results: {results_path}")
