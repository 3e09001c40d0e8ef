"""Pareto fronts: the cases no other case beats on every axis at once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from edgegen.measure.metric_registry import COSTS, sweep_quality
from edgegen.schema.pipeline import ParetoFront, PipelineResult


def _usable(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def pareto_front(points: Sequence[dict[str, Any]], minimize: Sequence[str] = (), maximize: Sequence[str] = ()) -> list[int]:
    """Indices of the non-dominated points, in input order.

    A point dominates another if it is at least as good on every axis and better on one. Points
    missing a value on any axis (None or NaN) are left out; equal points are all kept.
    """
    axes = [(name, 1.0) for name in minimize] + [(name, -1.0) for name in maximize]
    if not axes:
        raise ValueError("pareto_front needs at least one axis")
    usable = [i for i, point in enumerate(points) if all(_usable(point.get(name)) for name, _ in axes)]
    costs = {i: [sign * float(points[i][name]) for name, sign in axes] for i in usable}
    front = []
    for i in usable:
        dominated = any(
            all(a <= b for a, b in zip(costs[j], costs[i])) and any(a < b for a, b in zip(costs[j], costs[i]))
            for j in usable
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def pareto_of(results: list[PipelineResult], quality: str = "psnr") -> ParetoFront:
    """The student cases no other student case beats on latency, memory, size and quality at once."""
    metric = sweep_quality(quality)
    candidates = [r for r in results if r.role == "student" and r.not_run_reason is None]
    points = [{**{cost.name: cost.read(r) for cost in COSTS}, "quality": metric.read(r)} for r in candidates]
    costs = tuple(cost.name for cost in COSTS)
    front = pareto_front(
        points,
        minimize=costs + (() if metric.higher_is_better else ("quality",)),
        maximize=("quality",) if metric.higher_is_better else (),
    )
    considered = [r.case_id for r, p in zip(candidates, points) if all(_usable(value) for value in p.values())]
    return ParetoFront(
        quality_metric=quality,
        quality_higher_is_better=metric.higher_is_better,
        cost_axes=list(costs),
        considered=considered,
        front=[candidates[i].case_id for i in front],
    )
