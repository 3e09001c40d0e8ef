"""The report's figures (matplotlib, Agg), returned as PNG bytes for embedding."""

from __future__ import annotations

import io
from typing import Any

from edgegen.report.pareto import pareto_front
from edgegen.schema.pipeline import PipelineResult


def _figure(width: float = 6.4, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(width, height), dpi=100)
    return plt, figure, axes


def _png(plt: Any, figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def quality_axis(results: list[PipelineResult]) -> tuple[str, Any]:
    """Faithfulness where the probe ran, else image PSNR against the teacher."""
    if any(r.distillation_gap and r.distillation_gap.faithfulness is not None for r in results):
        return "caption faithfulness", lambda r: r.distillation_gap.faithfulness if r.distillation_gap else None
    return "image PSNR vs teacher (dB)", lambda r: (r.distillation_gap.image_psnr_db if r.distillation_gap and r.role != "teacher" else None)


def tradeoff(results: list[PipelineResult], x_name: str, x_of: Any) -> bytes | None:
    """Quality against a cost axis, the Pareto front drawn as a step line."""
    label, quality_of = quality_axis(results)
    points = [{"case": r.case_id, "x": x_of(r), "y": quality_of(r)} for r in results]
    points = [p for p in points if p["x"] is not None and p["y"] is not None]
    if not points:
        return None
    front = set(pareto_front(points, minimize=("x",), maximize=("y",)))
    plt, figure, axes = _figure()
    for index, point in enumerate(points):
        on_front = index in front
        axes.scatter(point["x"], point["y"], s=60 if on_front else 30, color="#d62728" if on_front else "#1f77b4", zorder=3)
        axes.annotate(point["case"], (point["x"], point["y"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ordered = sorted((points[i] for i in front), key=lambda p: p["x"])
    if len(ordered) > 1:
        axes.step([p["x"] for p in ordered], [p["y"] for p in ordered], where="post", color="#d62728", linewidth=1, label="Pareto front")
        axes.legend(fontsize=8)
    axes.set_xlabel(x_name)
    axes.set_ylabel(label)
    axes.grid(True, alpha=0.3)
    return _png(plt, figure)


def latent_psnr_per_step(results: list[PipelineResult]) -> bytes | None:
    exported = [r for r in results if r.export_fidelity and r.export_fidelity.latent_psnr_db_per_step]
    if not exported:
        return None
    plt, figure, axes = _figure()
    for result in exported:
        values = [min(v, 150.0) for v in result.export_fidelity.latent_psnr_db_per_step]
        axes.plot(range(1, len(values) + 1), values, marker="o", label=result.case_id)
    axes.set_xlabel("denoising step")
    axes.set_ylabel("latent PSNR vs float student (dB)")
    axes.legend(fontsize=7)
    axes.grid(True, alpha=0.3)
    return _png(plt, figure)


def latency_breakdown(results: list[PipelineResult]) -> bytes | None:
    timed = [r for r in results if r.latency]
    if not timed:
        return None
    plt, figure, axes = _figure(6.4, 0.5 + 0.45 * len(timed))
    names = [r.case_id for r in timed]
    left = [0.0] * len(timed)
    colours = {"text_encoder": "#2ca02c", "denoiser": "#1f77b4", "vae_decoder": "#ff7f0e"}
    for component, colour in colours.items():
        widths = []
        for r in timed:
            timing = next((t for t in r.latency.per_component if t.component == component), None)
            widths.append(timing.p50_ms * timing.calls_per_image if timing else 0.0)
        axes.barh(names, widths, left=left, color=colour, label=component)
        left = [a + b for a, b in zip(left, widths)]
    axes.barh(names, [r.latency.host_overhead_p50_ms for r in timed], left=left, color="#999999", label="host overhead")
    axes.set_xlabel("ms per image (p50 per call x calls)")
    axes.invert_yaxis()
    axes.legend(fontsize=7, loc="lower right")
    return _png(plt, figure)
