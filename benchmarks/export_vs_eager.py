"""Exported artifact vs eager PyTorch, per component and target, measured side by side.

    python benchmarks/export_vs_eager.py [--pipeline DIR] [--target onnx ...] [--precision float|int8] [--runs 50]

For each component of the pipeline (the embedded default unless --pipeline), each target this
machine exports to, in float and int8: median latency of the artifact and of eager PyTorch in
the same process, interleaved in rounds so machine noise hits both alike, their ratio, the
artifact's peak memory (fresh process, over its runtime's import baseline), size, PSNR vs the
float eager model and delegated fraction. Artifacts this host cannot run (Core ML off macOS)
get size and delegation only. Prints a table, then the JSON (also written to
--output/bench.json). One thread everywhere.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import emit  # the benchmarks' shared helper, beside this script



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, help="diffusers pipeline folder (default: the embedded default)")
    parser.add_argument("--target", action="append", help="target to include (repeatable; default: all exportable)")
    parser.add_argument("--precision", action="append", choices=["float", "int8"], help="repeatable; default: both")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--output", type=Path, default=Path("out/bench"))
    args = parser.parse_args()

    import torch

    from edgegen.terminal import quiet
    from edgegen.families import family_of
    from edgegen.embedded.demo import ensure_default_pipeline, plan
    from edgegen.exporting.targets import exportable_targets
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.measure.profiling import interleaved_medians, profile_artifact
    from edgegen.session import open_artifact, runtime_for
    from edgegen.families.loading import load_pipeline

    quiet()
    torch.set_num_threads(1)
    pipeline_dir = args.pipeline or ensure_default_pipeline(args.output / "teacher")
    pipeline = load_pipeline(pipeline_dir)
    rows = []
    for name, target, scheme in plan(args.target or exportable_targets(), args.precision or ["float", "int8"]):
        print(f"[bench] {name} -> {target} {scheme}", file=sys.stderr, flush=True)
        options = ExportOptions(quantize=scheme)
        artifact = export_component(pipeline, pipeline_dir, name, target, args.output / "artifacts", options, force=True)
        manifest = artifact.manifest
        delegation = manifest.delegation
        row = {
            "component": name,
            "target": target,
            "backend": manifest.backend,
            "quantization": scheme,
            "size_kb": round(artifact.size_bytes / 1024, 1),
            "delegated_fraction": round(delegation.delegated_fraction, 3) if delegation else None,
            "delegate_subgraphs": delegation.delegate_subgraphs if delegation else None,
            "psnr_vs_float_db": manifest.parity.psnr_db,
            "not_run_reason": runtime_for(manifest).unavailable_reason(manifest),
        }
        if row["not_run_reason"] is None:
            component = family_of(pipeline_dir).build_component(pipeline, name)
            session = open_artifact(artifact, threads=1)
            prepared = session.prepare({k: v.numpy() for k, v in component.reference_inputs.items()})
            medians = interleaved_medians({"eager": component.run_eager, "artifact": lambda: session.run_prepared(prepared)}, args.runs)
            eager_ms, artifact_ms = medians["eager"], medians["artifact"]
            profile = profile_artifact(artifact.folder, runs=10)
            row.update(
                eager_p50_ms=round(eager_ms, 3),
                artifact_p50_ms=round(artifact_ms, 3),
                speedup_vs_eager=round(eager_ms / artifact_ms, 2),
                peak_memory_added_mb=round(profile.memory.added_mb, 1),
                runtime_baseline_mb=round(profile.memory.baseline_rss_mb, 1),
            )
        rows.append(row)
    header = ("component", "target", "quant", "eager ms", "artifact ms", "speedup", "peak +MiB", "KiB", "PSNR vs float", "delegated", "subgraphs")
    table = []
    for r in rows:
        if r["not_run_reason"]:
            timing = [f"not run here ({r['not_run_reason']})", "-", "-", "-"]
        else:
            timing = [f"{r['eager_p50_ms']:.2f}", f"{r['artifact_p50_ms']:.2f}", f"{r['speedup_vs_eager']:.2f}x", f"{r['peak_memory_added_mb']:.1f}"]
        table.append([
            r["component"], r["target"] + ("/" + r["backend"] if r["backend"] else ""), r["quantization"], *timing, f"{r['size_kb']:.0f}",
            "not run" if r["psnr_vs_float_db"] is None else f"{r['psnr_vs_float_db']:.1f}",
            "-" if r["delegated_fraction"] is None else f"{r['delegated_fraction']:.0%}", r["delegate_subgraphs"] or "-",
        ])
    payload = {"benchmark": "export_vs_eager", "threads": 1, "runs": args.runs, "rows": rows}
    emit("exported components vs eager", header, table, payload, args.output / "bench.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
