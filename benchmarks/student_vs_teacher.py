"""Student vs teacher denoiser: parameters, FLOPs, and per target size, latency and delegation.

    python benchmarks/student_vs_teacher.py [--preset tiny --preset small ...] [--target onnx ...] [--runs 30]

The teacher is the embedded default (or --teacher DIR); each preset's student is made from it
with `edgegen student init`. For each denoiser and each target this machine exports to: the
artifact's size, its latency per call (p50 over --runs in a fresh process, one thread), the
delegated fraction and the delegate subgraph count. Core ML (off macOS) gets size and
delegation only. Prints a table, then the JSON (also written to --output/student_bench.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import emit  # the benchmarks' shared helper, beside this script


def denoiser_flops(pipeline, folder) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edgegen.families import components_with_role, family_of

    family = family_of(folder)
    component = family.build_component(pipeline, components_with_role(family, "denoiser")[0].name)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        component.module(*component.example_args())
    return counter.get_total_flops()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path)
    parser.add_argument("--preset", action="append", choices=["tiny", "small", "base"])
    parser.add_argument("--target", action="append")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--output", type=Path, default=Path("out/student_bench"))
    args = parser.parse_args()

    from edgegen.terminal import quiet
    from edgegen.embedded.demo import ensure_default_pipeline
    from edgegen.exporting.targets import exportable_targets
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.models.student import make_student, parameter_count
    from edgegen.measure.profiling import profile_artifact
    from edgegen.session import runtime_for
    from edgegen.families import networks_of
    from edgegen.families.loading import load_pipeline

    quiet()
    teacher_dir = args.teacher or ensure_default_pipeline(args.output / "teacher")
    models = {"teacher": teacher_dir}
    for preset in args.preset or ["base", "small", "tiny"]:
        models[f"student-{preset}"] = make_student(teacher_dir, preset, args.output / f"student-{preset}", force=True)

    rows = []
    for label, folder in models.items():
        pipeline = load_pipeline(folder)
        params, flops = parameter_count(networks_of(folder, pipeline).denoiser), denoiser_flops(pipeline, folder)
        for target in args.target or exportable_targets():
            print(f"[bench] {label} denoiser -> {target}", file=sys.stderr, flush=True)
            artifact = export_component(
                pipeline, folder, "denoiser", target, args.output / "artifacts" / label, ExportOptions(), force=True
            )
            manifest, delegation = artifact.manifest, artifact.manifest.delegation
            reason = runtime_for(manifest).unavailable_reason(manifest)
            p50 = None if reason else profile_artifact(artifact.folder, runs=args.runs).latency.p50_ms
            rows.append(
                {
                    "model": label,
                    "target": target + (f"/{manifest.backend}" if manifest.backend else ""),
                    "parameters": params,
                    "mflops_per_call": round(flops / 1e6, 2),
                    "size_kb": round(artifact.size_bytes / 1024, 1),
                    "p50_ms": None if p50 is None else round(p50, 3),
                    "not_run_reason": reason,
                    "delegated_fraction": round(delegation.delegated_fraction, 3),
                    "delegate_subgraphs": delegation.delegate_subgraphs,
                }
            )
    header = ("model", "target", "params", "MFLOPs", "KiB", "p50 ms", "delegated", "subgraphs")
    table = [
        [r["model"], r["target"], f"{r['parameters']:,}", f"{r['mflops_per_call']:.1f}", f"{r['size_kb']:.0f}",
         "not run here" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}", f"{r['delegated_fraction']:.0%}", r["delegate_subgraphs"]]
        for r in rows
    ]
    payload = {"benchmark": "student_vs_teacher", "threads": 1, "runs": args.runs, "rows": rows}
    emit("student vs teacher denoiser, per target", header, table, payload, args.output / "student_bench.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
