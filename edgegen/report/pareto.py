"""Pareto fronts: the cases no other case beats on every axis at once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


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
