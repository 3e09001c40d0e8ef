"""What quantizing every op costs against quantizing the weighted layers only, in ExecuTorch XNNPACK.

    .venv/bin/python benchmarks/int8_scope.py [--pipeline DIR] [--component denoiser ...] [--runs 50]

For the embedded default's components (or --pipeline's), three programs lowered as the
ExecuTorch exporter lowers them (module and graph rewrites, calibration on the family's
calibration inputs): float32; int8 of every op XNNPACK's quantizer annotates (linear, conv, add,
mul, cat: its default); and int8 of the weighted layers only (linear and conv, what
``edgegen export --quantize int8`` now does). Per program: PSNR of its output against eager on
the reference inputs, the .pte size, the delegate subgraph count, and the median latency of the
three run in the same process, interleaved in rounds so machine noise hits them alike. One
thread for torch and for XNNPACK's threadpool. Prints a table, then the JSON (also written to
--output/int8_scope.json).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

from _common import emit, executorch_side_by_side  # the benchmarks' shared helpers, beside this script


def every_op_quantizer():
    """XNNPACK's own default scope (every annotated op), with the shape-op sharing it needs to load."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    from edgegen.exporting.quantize import shared_through_shape_ops

    class EveryOp(XNNPACKQuantizer):
        def annotate(self, model):
            return shared_through_shape_ops(super().annotate(model))

    return EveryOp().set_global(get_symmetric_quantization_config(is_per_channel=True))


def lowered(component, quantizer):
    """(report, method, size in bytes, what keeps the method alive) for ``component`` as the exporter lowers it."""
    import torch
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from edgegen.exporters.executorch import PROVIDERS, delegation_report
    from edgegen.exporting.quantize import quantize_static
    from edgegen.exporting.rewrites import delegable_graph_ops, explicit_type_promotion, make_delegable

    module = copy.deepcopy(component.module)
    make_delegable(module)
    args = component.example_args()
    with torch.no_grad():
        program = torch.export.export(module, args, strict=False)
        explicit_type_promotion(program)
        delegable_graph_ops(program)
        if quantizer is not None:
            names = [spec.name for spec in component.inputs]
            program = torch.export.export(quantize_static(program.module(), quantizer, component.calibration, names), args, strict=False)
            explicit_type_promotion(program)
        edge = to_edge_transform_and_lower(program, partitioner=PROVIDERS["xnnpack"].partitioners())
    report = delegation_report(edge, "xnnpack")
    buffer = edge.to_executorch().buffer
    program = Runtime.get().load_program(buffer)
    return report, program.load_method("forward"), len(buffer), (buffer, program)


def psnr_db(expected, got) -> float:
    mse = float(((expected - got) ** 2).mean())
    peak = float(expected.abs().max())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, help="diffusers pipeline folder (default: the embedded default)")
    parser.add_argument("--component", action="append", help="repeatable; default: text_encoder, denoiser, vae_decoder")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--output", type=Path, default=Path("out/bench"))
    args = parser.parse_args()

    from edgegen.exporting.quantize import xnnpack_quantizer
    from edgegen.families import family_of
    from edgegen.families.loading import load_pipeline
    from edgegen.measure.profiling import interleaved_medians

    pipeline_dir = executorch_side_by_side(args.pipeline, args.output)
    family = family_of(pipeline_dir)
    pipeline = load_pipeline(pipeline_dir)
    variants = {"float32": lambda: None, "int8 every op": every_op_quantizer, "int8 weighted layers": xnnpack_quantizer}
    rows = []
    for name in args.component or ["text_encoder", "denoiser", "vae_decoder"]:
        print(f"[bench] {name}: lowering float32 and both int8 scopes", file=sys.stderr, flush=True)
        component = family.build_component(pipeline, name)
        component.calibration = family.calibration_inputs(pipeline, name)
        inputs = list(component.example_args())
        expected = next(iter(component.run_eager().values()))
        measured = {}
        for label, make_quantizer in variants.items():
            report, method, size, keep = lowered(component, make_quantizer())
            measured[label] = {"report": report, "method": method, "size": size, "keep": keep,
                               "psnr_db": psnr_db(expected, method.execute(inputs)[0])}
        medians = interleaved_medians({k: (lambda m=v["method"]: m.execute(inputs)) for k, v in measured.items()}, args.runs)
        for label, value in measured.items():
            rows.append({
                "component": name, "variant": label, "psnr_db_vs_eager": round(value["psnr_db"], 2),
                "pte_bytes": value["size"], "delegate_subgraphs": value["report"].delegate_subgraphs,
                "executorch_p50_ms": round(medians[label], 3),
                "latency_vs_float32": round(medians[label] / medians["float32"], 3),
            })
    header = ("component", "variant", "PSNR vs eager dB", ".pte KiB", "subgraphs", "p50 ms", "vs float32")
    table = [[r["component"], r["variant"], f"{r['psnr_db_vs_eager']:.1f}", f"{r['pte_bytes'] / 1024:.0f}", r["delegate_subgraphs"],
              f"{r['executorch_p50_ms']:.3f}", f"{r['latency_vs_float32']:.2f}x"] for r in rows]
    payload = {"benchmark": "int8_scope", "backend": "xnnpack", "threads": 1, "runs": args.runs,
               "pipeline": str(pipeline_dir), "rows": rows}
    emit("ExecuTorch XNNPACK: int8 of every op vs of the weighted layers", header, table, payload, args.output / "int8_scope.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
