"""The metric registry: every number a whole-pipeline result is judged by, declared once.

For each metric: its name, whether higher is better, the result field it reads, its label in
plots and the report, its header in the key table, and where it has one its budget (the
``Budgets`` field and the ``edgegen compare`` flag, ``min_psnr`` -> ``--min-psnr``), its name as
``edgegen sweep --quality``, and the option without which it is never measured. Budgets, the
sweep's Pareto front, the key table and the report's plots all read this list; a new metric is
one entry here (plus its ``compare`` option when it takes a budget).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.schema.pipeline import PipelineResult


def _fixed(pattern: str) -> Callable[[float | None], str]:
    return lambda value: "-" if value is None else pattern.format(value)


def _db(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.1f}"


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # plots and the report's prose, with the unit
    column: str  # the key table's header; a newline splits it over two short lines
    higher_is_better: bool
    read: Callable[[PipelineResult], float | None]
    format: Callable[[float | None], str]
    budget: str | None = None  # Budgets field; its flag is --min-x / --max-x
    budget_help: str = ""
    quality: str | None = None  # its name as `edgegen sweep --quality`
    needs: str | None = None  # the option that measures it: --probe, --feature-extractor, --clip
    exported_only: bool = False  # a budget that applies to exported cases only
    plot_scale: float = 1.0  # plotted value per read value (bytes -> KiB)
    in_terminal: bool = True  # the terminal's key table keeps to 120 columns; the report shows all

    @property
    def budget_flag(self) -> str | None:
        return "--" + self.budget.replace("_", "-") if self.budget else None

    def passes(self, value: float, limit: float) -> bool:
        return value >= limit if self.higher_is_better else value <= limit


def _fidelity(field: str) -> Callable[[PipelineResult], float | None]:
    return lambda r: getattr(r.export_fidelity, field) if r.export_fidelity else None


def _gap(field: str, students_only: bool = False) -> Callable[[PipelineResult], float | None]:
    # Against the teacher the teacher is itself (PSNR inf, SSIM 1): not a measurement.
    return lambda r: getattr(r.distillation_gap, field) if r.distillation_gap and not (students_only and r.role == "teacher") else None


# Cost axes: all minimised; the sweep's Pareto front and the report's trade-off plots use them.
COSTS = (
    Metric("size_bytes", "model files (KiB)", "KiB", False, lambda r: float(r.size_bytes),
           lambda v: "-" if v is None else f"{v / 1024:.0f}", plot_scale=1 / 1024),
    Metric("latency_p50_ms", "ms per image (p50)", "ms/\nimage", False, lambda r: r.latency.total_p50_ms if r.latency else None, _fixed("{:.2f}")),
    Metric("peak_added_mb", "peak memory added (MiB)", "peak\n+MiB", False, lambda r: r.memory.added_mb if r.memory else None, _fixed("{:.1f}")),
)

# Quality: export fidelity (exported vs the same student in float32), then the distillation gap.
QUALITIES = (
    Metric("export_psnr", "image PSNR vs float student (dB)", "export\nPSNR", True, _fidelity("image_psnr_db"), _db,
           budget="min_psnr", budget_help="Budget: exported vs float student image PSNR (dB).", exported_only=True),
    Metric("export_ssim", "image SSIM vs float student", "export\nSSIM", True, _fidelity("image_ssim"), _fixed("{:.3f}"),
           budget="min_ssim", budget_help="Budget: exported vs float student image SSIM.", exported_only=True, in_terminal=False),
    Metric("teacher_psnr", "image PSNR vs teacher (dB)", "teacher\nPSNR", True, _gap("image_psnr_db", students_only=True), _db,
           budget="min_teacher_psnr", budget_help="Budget: student vs teacher image PSNR (dB).", quality="psnr"),
    Metric("teacher_ssim", "image SSIM vs teacher", "teacher\nSSIM", True, _gap("image_ssim", students_only=True), _fixed("{:.3f}"), quality="ssim",
           in_terminal=False),
    Metric("faithfulness", "caption faithfulness", "faith-\nful", True, _gap("faithfulness"), _fixed("{:.0%}"),
           budget="min_faithfulness", budget_help="Budget: fraction of images that match their caption.", quality="faithfulness", needs="--probe"),
    Metric("fid", "FID vs teacher", "FID", False, _gap("fid"), _fixed("{:.3f}"),
           budget="max_fid_gap", budget_help="Budget: FID of a student's images against the teacher's.", quality="fid", needs="--feature-extractor"),
    Metric("kid", "KID vs teacher", "KID", False, _gap("kid"), _fixed("{:.4f}"),
           budget="max_kid_gap", budget_help="Budget: KID of a student's images against the teacher's.", quality="kid", needs="--feature-extractor"),
    Metric("clip", "CLIP score", "CLIP", True, _gap("clip_score"), _fixed("{:.1f}"),
           budget="min_clip_score", budget_help="Budget: CLIP score of a student's images against their prompts.", quality="clip", needs="--clip"),
)

METRICS = {metric.name: metric for metric in COSTS + QUALITIES}
BUDGETS = {metric.budget: metric for metric in QUALITIES if metric.budget}
SWEEP_QUALITIES = {metric.quality: metric for metric in QUALITIES if metric.quality}


def sweep_quality(name: str) -> Metric:
    if name not in SWEEP_QUALITIES:
        raise EdgegenError(f"unknown quality metric '{name}'; choose from: {', '.join(SWEEP_QUALITIES)}")
    return SWEEP_QUALITIES[name]


def unmeasured(metric: Metric, probe_dir: Path | None, feature_extractor: Path | None, clip_dir: Path | None) -> str | None:
    """The option a metric needs and was not given (so it would never be measured), else None."""
    given = {"--probe": probe_dir, "--feature-extractor": feature_extractor, "--clip": clip_dir}
    return metric.needs if metric.needs and given[metric.needs] is None else None


def plotted_quality(results: list[PipelineResult]) -> Metric:
    """The report's quality axis: faithfulness where the probe ran, else image PSNR against the teacher."""
    faithfulness = METRICS["faithfulness"]
    return faithfulness if any(faithfulness.read(r) is not None for r in results) else METRICS["teacher_psnr"]
