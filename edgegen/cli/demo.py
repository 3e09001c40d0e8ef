"""``edgegen demo``: the README's main job on the embedded default pipeline."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgegen.cli.bounds import folder_output
from edgegen.terminal import console, fmt_db, fmt_kb, fmt_ms, quiet
from edgegen.errors import EdgegenError, writing


class Precision(str, Enum):
    float = "float"
    float16 = "float16"
    int8 = "int8"


def demo_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Working folder for the models, artifacts, results and report.", callback=folder_output)] = Path("out/demo"),
    target: Annotated[list[str] | None, typer.Option(help="Target to include (repeatable); default: every one this machine exports to.")] = None,
    precision: Annotated[list[Precision] | None, typer.Option(help="float, float16 and/or int8 (repeatable); default: all three (the few-step students: float and int8).")] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per component artifact (whole pipelines get a quarter, at least 1).", min=1)] = 20,
    prompts: Annotated[Path | None, typer.Option(help="Prompt file (one per line); default: 12 built-in shapes prompts.", show_default=False)] = None,
) -> None:
    """Teacher vs distilled student on every target here: export, profile, compare, and an HTML report."""
    quiet()
    from edgegen.report.tables import pipeline_table
    from edgegen.embedded.demo import DEMO_PROMPTS, run_demo
    from edgegen.exporting.targets import exportable_targets
    from edgegen.measure.pipeline_fidelity import read_prompts
    from edgegen.registry import EXPORTERS

    targets = target or exportable_targets()
    for name in targets:
        reason = EXPORTERS.get(name).unavailable_reason()  # an unknown name fails here, before any work
        if reason:
            raise EdgegenError(f"target '{name}' is not usable here: {reason}")
    precisions = [p.value for p in precision] if precision else ["float", "float16", "int8"]
    prompt_list = read_prompts(prompts) if prompts else list(DEMO_PROMPTS)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("starting", total=None)
        outcome = run_demo(output, targets, precisions, runs, prompt_list, lambda message: progress.update(task, description=message))
        progress.update(task, description="done")

    results = [r.model_dump(mode="json") for row in outcome.rows for r in (row.profile, row.comparison) if r is not None]
    components_path = output / "results.json"
    with writing(components_path):
        components_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    from edgegen.report.shipped import shipped_configuration

    shipped = shipped_configuration(outcome.pipelines)
    if shipped is not None:
        console.print(shipped_table(shipped))
    console.print(component_table(outcome.rows))
    console.print(pipeline_table(outcome.pipelines, "embedded default: teacher vs distilled students, whole pipelines (same prompts, seeds, latents)"))
    console.print(f"component results: {components_path}")
    console.print(f"pipeline results: {outcome.results_path}")
    console.print(f"report: {outcome.report_path}" + (f" (screenshot {outcome.screenshot_path})" if outcome.screenshot_path else ""))


def shipped_table(shipped) -> Table:
    from edgegen.report.shipped import shipped_row, shipped_summary

    row = shipped_row(shipped)
    table = Table(title=shipped_summary(shipped), title_justify="left")
    for column in row:
        table.add_column(column, no_wrap=column == "case")
    table.add_row(*row.values())
    return table


def component_table(rows: list) -> Table:
    """One line per component artifact, in 120 columns: a row that did not run says so, and why
    goes into the caption once (the report keeps every detail)."""
    table = Table(title="distilled student components on each target, vs the eager student (1 thread)")
    columns = ("component", "target", "quant", "KiB", "dele-\ngated", "p50\nms", "p90\nms", "peak\n+MiB", "parity\nPSNR", "compare\nPSNR")
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:3] else "right", no_wrap=column in columns[:3])
    reasons: list[str] = []
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
            cells += ["not run", "", "", "", ""]
            if row.not_run_reason not in reasons:
                reasons.append(row.not_run_reason)
        else:
            latency, memory, quality = row.profile.latency, row.profile.memory, row.comparison.quality
            cells += [fmt_ms(latency.p50_ms), fmt_ms(latency.p90_ms), f"{memory.added_mb:.1f}", fmt_db(manifest.parity.psnr_db), fmt_db(quality.psnr_db)]
        table.add_row(*cells)
    if reasons:
        table.caption = "not run here: " + "; ".join(reasons)
        table.caption_justify = "left"
    return table
