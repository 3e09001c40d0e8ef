"""The report's figures (matplotlib, Agg), returned as PNG bytes for embedding."""

from __future__ import annotations

import io
import math
from typing import Any

from edgegen.measure.metric_registry import Metric, plotted_quality
from edgegen.report.pareto import pareto_front
from edgegen.schema.pipeline import PipelineResult


def _figure(width: float = 6.4, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(width, height), dpi=100)
    return plt, figure, axes


def _png(plt: Any, figure: Any, layout: bool = True) -> bytes:
    buffer = io.BytesIO()
    if layout:
        figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def tradeoff_figure(results: list[PipelineResult], cost: Metric) -> tuple[Any, Any, list[Any]] | None:
    """Quality against a cost axis, the 2-D Pareto front drawn as a step line.

    Points carry their case's number (its place in ``results``, 1-based; the report prints the key)
    rather than its id, and each number is placed where it overlaps no other, so clustered cases
    stay readable. Returns (pyplot, figure, the number labels), or None with nothing to plot.
    """
    quality = plotted_quality(results)
    points = [
        {"number": index, "x": x * cost.plot_scale, "y": y}
        for index, r in enumerate(results, 1)
        if (x := cost.read(r)) is not None and (y := quality.read(r)) is not None
    ]
    if not points:
        return None
    front = set(pareto_front(points, minimize=("x",), maximize=("y",)))
    plt, figure, axes = _figure()
    for index, point in enumerate(points):
        on_front = index in front
        axes.scatter(point["x"], point["y"], s=60 if on_front else 30, color="#d62728" if on_front else "#1f77b4", zorder=3)
    ordered = sorted((points[i] for i in front), key=lambda p: p["x"])
    if len(ordered) > 1:
        axes.step([p["x"] for p in ordered], [p["y"] for p in ordered], where="post", color="#d62728", linewidth=1, label="Pareto front")
        axes.legend(fontsize=8)
    axes.set_xlabel(cost.label)
    axes.set_ylabel(quality.label)
    axes.grid(True, alpha=0.3)
    axes.margins(0.15)
    figure.tight_layout()  # before placing: a later layout change would move the points under the labels
    return plt, figure, _place_labels(figure, axes, points)


# Offsets (points) tried in turn for a label: rings of twelve directions, nearest ring first.
_OFFSETS = [
    (radius * math.cos(math.radians(angle)) - 3, radius * math.sin(math.radians(angle)) - 3)
    for radius in range(7, 120, 7)
    for angle in range(45, 405, 30)
]


def _place_labels(figure: Any, axes: Any, points: list[dict]) -> list[Any]:
    """Each point's number at the nearest offset where it overlaps no number placed before it."""
    figure.canvas.draw()  # settle the axis limits the labels are measured against
    renderer = figure.canvas.get_renderer()
    placed: list[Any] = []
    boxes: list[Any] = []
    for point in points:
        for offset in _OFFSETS:
            label = axes.annotate(str(point["number"]), (point["x"], point["y"]), fontsize=8, xytext=offset, textcoords="offset points")
            extent = label.get_window_extent(renderer)
            if not any(extent.overlaps(other) for other in boxes) or offset == _OFFSETS[-1]:
                break
            label.remove()
        placed.append(label)
        boxes.append(extent)
    return placed


def tradeoff(results: list[PipelineResult], cost: Metric) -> bytes | None:
    drawn = tradeoff_figure(results, cost)
    if drawn is None:
        return None
    plt, figure, _ = drawn
    return _png(plt, figure, layout=False)


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
    components = list(dict.fromkeys(t.component for r in timed for t in r.latency.per_component))
    palette = plt.get_cmap("tab10").colors  # one colour per component present, in call order
    for component, colour in zip(components, palette * (len(components) // len(palette) + 1)):
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
