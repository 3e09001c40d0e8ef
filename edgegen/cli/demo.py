"""``edgegen demo``: the README's main job on the embedded default pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgegen.cli.output import console, fmt_db, fmt_kb, fmt_ms, quiet


def demo_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Working folder for the teacher, artifacts and results.")] = Path("out/demo"),
    target: Annotated[list[str] | None, typer.Option(help="Target to include (repeatable); default: every usable one.")] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per artifact.")] = 20,
) -> None:
    """Export the embedded default to every usable target, then profile and compare each artifact."""
    quiet()
    from edgegen.demo import plan, run_demo, usable_targets
    from edgegen.registry import EXPORTERS

    targets = target or usable_targets()
    for name in targets:
        EXPORTERS.get(name)  # an unknown name fails here, before any work
    steps = len(plan(targets)) * 3
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("starting", total=steps)

        def on_step(message: str) -> None:
            progress.update(task, description=message, advance=0 if progress.tasks[0].description == "starting" else 1)

        rows = run_demo(output, targets, runs, on_step)
        progress.update(task, description="done", completed=steps)

    results_path = output / "results.json"
    payload = [row.profile.model_dump(mode="json") for row in rows] + [row.comparison.model_dump(mode="json") for row in rows]
    results_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    table = Table(title="embedded default: exported components vs the teacher (1 thread)")
    for column in ("component", "target", "KiB", "delegated", "p50 ms", "p90 ms", "load ms", "peak +MiB", "PSNR dB", "max abs err"):
        table.add_column(column, justify="left" if column in ("component", "target") else "right")
    for row in rows:
        manifest, latency, memory, quality = row.artifact.manifest, row.profile.latency, row.profile.memory, row.comparison.quality
        delegation = manifest.delegation
        table.add_row(
            manifest.component,
            manifest.target + (f"/{manifest.backend}" if manifest.backend else ""),
            fmt_kb(row.artifact.size_bytes),
            f"{delegation.delegated_fraction:.0%}" if delegation else "-",
            fmt_ms(latency.p50_ms),
            fmt_ms(latency.p90_ms),
            fmt_ms(latency.load_ms),
            f"{memory.added_mb:.1f}",
            fmt_db(quality.psnr_db),
            f"{quality.max_abs_error:.2g}",
        )
    console.print(table)
    console.print(f"results: {results_path}")
