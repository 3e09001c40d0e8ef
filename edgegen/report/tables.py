"""The key table of whole-pipeline results: the terminal's (compare, sweep, the demo) and the report's.

Its columns come from the metric registry. The report (and the JSON) keep every column and the
full not-run reason. The terminal table stays readable in 120 columns: the case id already names
the target, precision and steps, so those columns are left out, as are the SSIM columns and any
quality nobody measured; headers are two short lines, and a case that did not run says so in
its row, with its reason shortened to one clause in the caption.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.table import Table

from edgegen.measure.metric_registry import COSTS, QUALITIES, Metric
from edgegen.schema.pipeline import PipelineResult

BUDGETS_HEADER = "budget"


def key_metrics(results: Sequence[PipelineResult], terminal: bool = False) -> list[Metric]:
    """Cost and quality columns; the terminal's leave out what no case measured."""
    qualities = [m for m in QUALITIES if not terminal or (m.in_terminal and any(m.read(r) is not None for r in results))]
    return [*COSTS, *qualities]


def budget_verdict(result: PipelineResult) -> str:
    return "-" if not result.budgets else ("pass" if all(b.passed for b in result.budgets) else "FAIL")


def _metric_cells(result: PipelineResult, metrics: Sequence[Metric]) -> list[str]:
    if not result.not_run_reason:
        return [m.format(m.read(result)) for m in metrics]
    # Only the size is known; the first column that would be measured says why the rest is empty.
    cells = [m.format(m.read(result)) if m.name == "size_bytes" else "" for m in metrics]
    cells[next(i for i, m in enumerate(metrics) if m.name != "size_bytes")] = "not run"
    return cells


def _one_line(column: str) -> str:
    return column.replace("-\n", "").replace("/\n", "/").replace("\n", " ")


def key_header(metrics: Sequence[Metric]) -> list[str]:
    """The report's header: every column, one line each."""
    return ["case", "quant", "steps", *(_one_line(m.column) for m in metrics), BUDGETS_HEADER]


def key_row(result: PipelineResult, metrics: Sequence[Metric]) -> list[str]:
    """The report's row: a case that did not run carries its full reason in the last column."""
    last = result.not_run_reason or budget_verdict(result)
    return [result.case_id, result.quantization, str(result.steps), *_metric_cells(result, metrics), last]


def short_reason(reason: str) -> str:
    """The first clause of a not-run reason: 'x is not installed (pip install ...)' -> 'x is not installed'."""
    return reason.split(" (")[0].split(";")[0].strip()


def pipeline_table(results: list[PipelineResult], title: str = "teacher vs student vs exported student (same prompts, seeds, latents)") -> Table:
    metrics = key_metrics(results, terminal=True)
    not_run = [f"{r.case_id}: {short_reason(r.not_run_reason)}" for r in results if r.not_run_reason]
    table = Table(
        title=title,
        caption=("not run here: " + "; ".join(not_run)) if not_run else None,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("case", no_wrap=True)
    for metric in metrics:
        table.add_column(metric.column, justify="right", no_wrap=True)
    table.add_column(BUDGETS_HEADER, no_wrap=True)
    for result in results:
        table.add_row(result.case_id, *_metric_cells(result, metrics), budget_verdict(result))
    return table
