"""Exported artifact vs eager PyTorch, per component and target, measured side by side.

    python benchmarks/export_vs_eager.py [--pipeline DIR] [--target onnx ...] [--runs 50]

For each component of the pipeline (the embedded default unless --pipeline) and each usable
target: median latency of the artifact and of eager PyTorch in the same process, interleaved
in rounds so machine noise hits both alike, their ratio, the artifact's peak memory (fresh
process, over its runtime's import baseline), size and delegated fraction. Prints a table, then
the JSON (also written to --output/bench.json). One thread everywhere.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROUNDS = 5


def interleaved_medians(eager_call, artifact_call, runs: int, warmup: int = 3) -> tuple[float, float]:
    for _ in range(warmup):
        eager_call()
        artifact_call()
    eager, artifact = [], []
    per_round = max(1, runs // ROUNDS)
    for _ in range(ROUNDS):
        for call, sink in ((eager_call, eager), (artifact_call, artifact)):
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                sink.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(eager), statistics.median(artifact)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, help="diffusers pipeline folder (default: the embedded default)")
    parser.add_argument("--target", action="append", help="target to include (repeatable; default: all usable)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--output", type=Path, default=Path("out/bench"))
    args = parser.parse_args()

    import torch

    from edgegen.cli.output import quiet
    from edgegen.components import COMPONENT_NAMES, build_component
    from edgegen.demo import ensure_default_pipeline, usable_targets
    from edgegen.export import ExportOptions, export_component
    from edgegen.profiling import profile_artifact
    from edgegen.session import open_artifact
    from edgegen.teacher import load_pipeline

    quiet()
    torch.set_num_threads(1)
    pipeline_dir = args.pipeline or ensure_default_pipeline(args.output / "teacher")
    pipeline = load_pipeline(pipeline_dir)
    rows = []
    for target in args.target or usable_targets():
        for name in COMPONENT_NAMES:
            print(f"[bench] {name} -> {target}", file=sys.stderr, flush=True)
            artifact = export_component(pipeline, pipeline_dir, name, target, args.output / "artifacts", ExportOptions(), force=True)
            component = build_component(pipeline, name)
            session = open_artifact(artifact, threads=1)
            prepared = session.prepare({k: v.numpy() for k, v in component.reference_inputs.items()})
            eager_ms, artifact_ms = interleaved_medians(component.run_eager, lambda: session.run_prepared(prepared), args.runs)
            profile = profile_artifact(artifact.folder, runs=10)
            delegation = artifact.manifest.delegation
            rows.append(
                {
                    "component": name,
                    "target": target,
                    "backend": artifact.manifest.backend,
                    "quantization": artifact.manifest.quantization.scheme,
                    "eager_p50_ms": round(eager_ms, 3),
                    "artifact_p50_ms": round(artifact_ms, 3),
                    "speedup_vs_eager": round(eager_ms / artifact_ms, 2),
                    "peak_memory_added_mb": round(profile.memory.added_mb, 1),
                    "runtime_baseline_mb": round(profile.memory.baseline_rss_mb, 1),
                    "size_kb": round(artifact.size_bytes / 1024, 1),
                    "delegated_fraction": round(delegation.delegated_fraction, 3) if delegation else None,
                    "delegate_subgraphs": delegation.delegate_subgraphs if delegation else None,
                    "parity_psnr_db": artifact.manifest.parity.psnr_db,
                }
            )
    header = ("component", "target", "eager ms", "artifact ms", "speedup", "peak +MiB", "KiB", "delegated", "subgraphs")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for r in rows:
        delegated = "-" if r["delegated_fraction"] is None else f"{r['delegated_fraction']:.0%}"
        print(
            f"{r['component']} | {r['target']} | {r['eager_p50_ms']:.2f} | {r['artifact_p50_ms']:.2f} | "
            f"{r['speedup_vs_eager']:.2f}x | {r['peak_memory_added_mb']:.1f} | {r['size_kb']:.0f} | {delegated} | {r['delegate_subgraphs'] or '-'}"
        )
    payload = {"benchmark": "export_vs_eager", "threads": 1, "runs": args.runs, "rows": rows}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "bench.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
