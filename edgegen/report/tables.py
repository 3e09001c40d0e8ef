"""The key table of whole-pipeline results, shared by compare, sweep and the demo."""

from __future__ import annotations

from rich.table import Table

from edgegen.terminal import fmt_db, fmt_ms
from edgegen.schema.pipeline import PipelineResult

KEY_COLUMNS = (
    "case", "quant", "steps", "KiB", "p50 ms/image", "peak +MiB",
    "export PSNR", "export SSIM", "PSNR vs teacher", "SSIM vs teacher", "faithful", "FID", "KID", "budgets",
)


def key_row(result: PipelineResult) -> list[str]:
    fmt = lambda value, pattern: "-" if value is None else pattern.format(value)  # noqa: E731
    latency, memory = result.latency, result.memory
    fidelity, gap = result.export_fidelity, result.distillation_gap
    if result.not_run_reason:
        return [result.case_id, result.quantization, str(result.steps), f"{result.size_bytes / 1024:.0f}", "not run"] + [""] * (len(KEY_COLUMNS) - 6) + [result.not_run_reason]
    budgets = "-" if not result.budgets else ("pass" if all(b.passed for b in result.budgets) else "FAIL")
    return [
        result.case_id,
        result.quantization,
        str(result.steps),
        f"{result.size_bytes / 1024:.0f}",
        fmt_ms(latency.total_p50_ms) if latency else "-",
        f"{memory.added_mb:.1f}" if memory else "-",
        fmt_db(fidelity.image_psnr_db) if fidelity else "-",
        fmt(fidelity.image_ssim if fidelity else None, "{:.3f}"),
        fmt_db(gap.image_psnr_db) if gap and result.role != "teacher" else "-",
        fmt(gap.image_ssim if gap and result.role != "teacher" else None, "{:.3f}"),
        fmt(gap.faithfulness if gap else None, "{:.0%}"),
        fmt(gap.fid if gap else None, "{:.3f}"),
        fmt(gap.kid if gap else None, "{:.4f}"),
        budgets,
    ]


def pipeline_table(results: list[PipelineResult], title: str = "teacher vs student vs exported student (same prompts, seeds, latents)") -> Table:
    table = Table(title=title)
    for column in KEY_COLUMNS:
        table.add_column(column, justify="left" if column in ("case", "quant", "budgets") else "right", no_wrap=column in ("case", "quant"))
    for result in results:
        table.add_row(*key_row(result))
    return table
