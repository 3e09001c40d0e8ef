"""XNNPACK delegation and latency before and after ``make_delegable``, measured side by side.

    .venv/bin/python benchmarks/delegation_rewrites.py [--pipeline DIR] [--component denoiser ...] [--runs 100]

For the embedded default's ``denoiser`` and ``vae_decoder`` (or --pipeline's): the component as
``build_component`` makes it ("before") and a deep copy with ``edgegen.exporting.rewrites.make_delegable``
applied ("after"), each lowered to ExecuTorch XNNPACK fp32: delegated edge nodes / total, the
delegate subgraph count, the ops left outside, the max abs error of the .pte vs eager, and the
median latency of the two .pte files run in the same process, interleaved in rounds so machine
noise hits both alike. One thread for torch and for ExecuTorch's XNNPACK threadpool. Prints a
table, then the JSON (also written to --output/delegation_rewrites.json).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from _common import emit, executorch_side_by_side  # the benchmarks' shared helpers, beside this script



def lower(module, args: tuple):
    """(delegation report, loaded ExecuTorch method, what keeps it alive) for ``module`` lowered
    to XNNPACK fp32. The runtime reads the program from the buffer it was given: the buffer and
    the program must outlive the method."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from edgegen.exporters.executorch import delegation_report

    with torch.no_grad():
        program = torch.export.export(module, args, strict=False)
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    report = delegation_report(edge, "xnnpack")
    buffer = edge.to_executorch().buffer
    program = Runtime.get().load_program(buffer)
    return report, program.load_method("forward"), (buffer, program)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, help="diffusers pipeline folder (default: the embedded default)")
    parser.add_argument("--component", action="append", choices=["denoiser", "vae_decoder"], help="repeatable; default: both")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--output", type=Path, default=Path("out/bench"))
    args = parser.parse_args()

    from edgegen.families import family_of
    from edgegen.measure.profiling import interleaved_medians
    from edgegen.exporting.rewrites import make_delegable
    from edgegen.families.loading import load_pipeline

    pipeline_dir = executorch_side_by_side(args.pipeline, args.output)
    pipeline = load_pipeline(pipeline_dir)
    rows = []
    for name in args.component or ["denoiser", "vae_decoder"]:
        print(f"[bench] {name}: lowering before and after make_delegable", file=sys.stderr, flush=True)
        component = family_of(pipeline_dir).build_component(pipeline, name)
        inputs = list(component.example_args())
        expected = next(iter(component.run_eager().values()))
        rewritten = copy.deepcopy(component.module)
        changes = make_delegable(rewritten)
        variants = {"before": component.module, "after": rewritten}
        measured = {}
        for label, module in variants.items():
            report, method, keep = lower(module, tuple(inputs))
            error = (method.execute(inputs)[0] - expected).abs().max().item()
            measured[label] = {"report": report, "method": method, "keep": keep, "max_abs_error_vs_eager": error}
        medians = interleaved_medians({k: (lambda m=v["method"]: m.execute(inputs)) for k, v in measured.items()}, args.runs)
        latencies = [medians[k] for k in measured]
        for (label, value), latency in zip(measured.items(), latencies, strict=True):
            report = value["report"]
            rows.append(
                {
                    "component": name,
                    "variant": label,
                    "delegated_nodes": report.delegated_nodes,
                    "total_nodes": report.total_nodes,
                    "delegated_fraction": round(report.delegated_nodes / report.total_nodes, 4),
                    "delegate_subgraphs": report.delegate_subgraphs,
                    "fallback_ops": report.fallback_ops,
                    "max_abs_error_vs_eager": value["max_abs_error_vs_eager"],
                    "executorch_p50_ms": round(latency, 3),
                    "rewrites": changes if label == "after" else [],
                }
            )
    header = ("component", "variant", "delegated / total", "subgraphs", "p50 ms", "max err vs eager", "left outside")
    table = [
        [r["component"], r["variant"], f"{r['delegated_nodes']}/{r['total_nodes']} ({r['delegated_fraction']:.1%})", r["delegate_subgraphs"],
         f"{r['executorch_p50_ms']:.3f}", f"{r['max_abs_error_vs_eager']:.1e}", ", ".join(f"{op} x{count}" for op, count in r["fallback_ops"].items()) or "-"]
        for r in rows
    ]
    payload = {"benchmark": "delegation_rewrites", "backend": "xnnpack", "threads": 1, "runs": args.runs, "rows": rows}
    emit("XNNPACK delegation before and after make_delegable", header, table, payload, args.output / "delegation_rewrites.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
