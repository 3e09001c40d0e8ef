"""The shipped configuration: the fastest exported student that keeps the teacher's captions.

What an app ships is one exported student pipeline, so the demo's terminal output and the report
lead with it: among the exported (not eager) student cases that ran, were timed and kept at least
``FAITHFULNESS_SHARE`` of the teacher's caption faithfulness on the same prompts, the one with the
lowest per-image latency; its speed is quoted as a ratio to the eager teacher of the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgegen.schema.pipeline import PipelineResult

FAITHFULNESS_SHARE = 0.95


@dataclass(frozen=True)
class Shipped:
    result: PipelineResult
    teacher: PipelineResult
    speedup: float  # teacher's per-image p50 over this case's, same run
    faithfulness: float
    teacher_faithfulness: float
    qualifies: bool  # False: no exported case kept the share; this is the most faithful one


def _faithfulness(result: PipelineResult) -> float | None:
    return result.distillation_gap.faithfulness if result.distillation_gap else None


def shipped_configuration(results: Sequence[PipelineResult]) -> Shipped | None:
    """None when the results hold no timed teacher or no timed exported student with a probe score."""
    teachers = [r for r in results if r.role == "teacher" and r.latency and _faithfulness(r) is not None]
    exported = [r for r in results if r.role == "student" and r.runtime != "eager" and not r.not_run_reason and r.latency and _faithfulness(r) is not None]
    if not teachers or not exported:
        return None
    teacher = teachers[0]
    teacher_faithfulness = _faithfulness(teacher)
    keeping = [r for r in exported if _faithfulness(r) >= FAITHFULNESS_SHARE * teacher_faithfulness]
    if keeping:
        chosen = min(keeping, key=lambda r: r.latency.total_p50_ms)
    else:
        chosen = max(exported, key=lambda r: (_faithfulness(r), -r.latency.total_p50_ms))
    return Shipped(
        result=chosen,
        teacher=teacher,
        speedup=teacher.latency.total_p50_ms / chosen.latency.total_p50_ms,
        faithfulness=_faithfulness(chosen),
        teacher_faithfulness=teacher_faithfulness,
        qualifies=bool(keeping),
    )


def shipped_summary(shipped: Shipped) -> str:
    """One sentence: what was chosen and why."""
    rule = f"the fastest exported student keeping >= {FAITHFULNESS_SHARE:.0%} of the teacher's caption faithfulness"
    if not shipped.qualifies:
        rule = f"no exported student kept {FAITHFULNESS_SHARE:.0%} of the teacher's caption faithfulness; the most faithful one"
    return f"Shipped configuration ({rule}): {shipped.result.case_id}"


def shipped_row(shipped: Shipped) -> dict[str, str]:
    """Column -> cell, shared by the terminal and the report."""
    result = shipped.result
    memory = result.memory.added_mb if result.memory else None
    return {
        "case": result.case_id,
        "ms/image": f"{result.latency.total_p50_ms:.2f}",
        "vs eager teacher": f"{shipped.speedup:.0f}x faster ({shipped.teacher.latency.total_p50_ms:.1f} ms)",
        "faithful": f"{shipped.faithfulness:.0%} (teacher {shipped.teacher_faithfulness:.0%})",
        "KiB": f"{result.size_bytes / 1024:.0f}",
        "peak +MiB": "-" if memory is None else f"{memory:.1f}",
    }
