"""Whole-pipeline latency and memory: eager teacher, eager student and the student on each target.

    python benchmarks/pipeline_latency.py [--preset tiny] [--target onnx ...] [--steps 4] [--guidance-scale 3] [--runs 10]

The teacher is the embedded default (or --teacher DIR); the student is made from it with
`edgegen student init --preset`. Each case is profiled by `edgegen.measure.pipeline_profile` in a fresh
process with one thread: one image end to end (p50/p90 over --runs after one warm-up), the
denoiser per call and per step, text encoder and decoder, host overhead (scheduler, copies),
cold and warm load, and the peak memory with every component resident. Core ML (off macOS) is
listed as not run. Prints a table, then the JSON (also written to --output/pipeline_latency.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import emit, fmt  # the benchmarks' shared helper, beside this script


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--target", action="append")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--output", type=Path, default=Path("out/pipeline_latency"))
    args = parser.parse_args()

    from edgegen.terminal import quiet
    from edgegen.embedded.demo import ensure_default_pipeline
    from edgegen.exporting.targets import exportable_targets
    from edgegen.exporting.orchestration import export_pipeline
    from edgegen.sampling.loop import SamplingPlan
    from edgegen.measure.pipeline_profile import profile_pipeline
    from edgegen.session import runtime_for

    quiet()
    teacher_dir = args.teacher or ensure_default_pipeline(args.output / "teacher")
    from edgegen.models.student import make_student

    student_dir = make_student(teacher_dir, args.preset, args.output / f"student-{args.preset}", force=True)
    plan = SamplingPlan(args.steps, args.guidance_scale)
    cases: list[tuple[str, Path, dict | None]] = [("teacher eager", teacher_dir, None), ("student eager", student_dir, None)]
    for target in args.target or exportable_targets():
        print(f"[bench] exporting the student to {target}", file=sys.stderr, flush=True)
        artifacts = export_pipeline(student_dir, target, args.output / "artifacts" / target, force=True)
        cases.append((f"student {target}", student_dir, {a.manifest.component: a.folder for a in artifacts}))

    rows = []
    for label, folder, artifact_dirs in cases:
        reason = None
        if artifact_dirs:
            from edgegen.artifact import load_artifact

            manifest = load_artifact(artifact_dirs["denoiser"]).manifest
            reason = runtime_for(manifest).unavailable_reason(manifest)
        if reason:
            rows.append({"case": label, "not_run_reason": reason})
            continue
        print(f"[bench] profiling {label}", file=sys.stderr, flush=True)
        latency, memory = profile_pipeline(folder, artifact_dirs, plan, warmup=1, runs=args.runs)
        rows.append({"case": label, "latency": latency.model_dump(mode="json"), "memory": memory.model_dump(mode="json")})

    components = list(dict.fromkeys(c["component"] for row in rows if "latency" in row for c in row["latency"]["per_component"]))
    header = ["case", "image p50", "p90", *(f"{name} /call" for name in components), "per step", "host", "cold load", "warm load", "peak +MiB"]
    table = []
    for row in rows:
        if "not_run_reason" in row:
            table.append([row["case"], f"not run: {row['not_run_reason']}"] + [""] * (len(header) - 2))
            continue
        lat, mem = row["latency"], row["memory"]
        parts = {c["component"]: c["p50_ms"] for c in lat["per_component"]}
        table.append([
            row["case"], f"{lat['total_p50_ms']:.2f}", f"{lat['total_p90_ms']:.2f}", *(fmt(parts.get(name), "{:.2f}") for name in components),
            f"{lat['per_step_p50_ms']:.2f}", f"{lat['host_overhead_p50_ms']:.2f}", f"{lat['cold_load_ms']:.1f}", f"{lat['warm_load_ms']:.1f}", f"{mem['added_mb']:.1f}",
        ])
    payload = {"steps": args.steps, "guidance_scale": args.guidance_scale, "runs": args.runs, "preset": args.preset, "cases": rows}
    title = f"steps {args.steps}, guidance {args.guidance_scale} ({plan.calls_per_step} denoiser calls per step), ms unless noted"
    emit(title, header, table, payload, args.output / "pipeline_latency.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
