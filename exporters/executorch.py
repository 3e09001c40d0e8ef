"""ExecuTorch target: torch.export -> edge dialect -> XNNPACK delegate -> one .pte per component.

The delegation report counts the edge-graph nodes the partitioner gave to the delegate and the
ones left to ExecuTorch's portable kernels, which run far slower on a phone.
"""

from __future__ import annotations

import copy
from pathlib import Path

from edgegen.families.stable_diffusion import Component
from edgegen.errors import EdgegenError
from edgegen.exporting.orchestration import MIN_PSNR_DB_FLOAT16, MIN_PSNR_DB_INT8, ExportedModel, ExportOptions
from edgegen.exporting.qat import LEARNED_SCALES
from edgegen.schema.manifest import Delegation, Quantization, TensorSpec

MODEL_FILE = "model.pte"

# ExecuTorch ScalarType codes -> numpy dtype names.
SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64", 11: "bool"}


def pte_io_specs(model_path: Path, input_names: list[str], output_names: list[str]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Read the method's tensor specs back from the .pte that was written."""
    from executorch.runtime import Runtime

    meta = Runtime.get().load_program(model_path).metadata("forward")

    def specs(names: list[str], count: int, read) -> list[TensorSpec]:
        if count != len(names):
            raise RuntimeError(f"the .pte has {count} tensors where {len(names)} were declared")
        return [
            TensorSpec(name=name, shape=list(read(i).sizes()), dtype=SCALAR_TYPES.get(read(i).dtype(), "unknown"))
            for i, name in enumerate(names)
        ]

    return (
        specs(input_names, meta.num_inputs(), meta.input_tensor_meta),
        specs(output_names, meta.num_outputs(), meta.output_tensor_meta),
    )


def delegation_report(edge_program, backend: str) -> Delegation:
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge_program.exported_program().graph_module)
    fallback = {
        name: row.non_delegated
        for name, row in info.delegation_by_operator.items()
        if row.non_delegated and name != "getitem"
    }
    return Delegation(
        backend=backend,
        total_nodes=info.num_delegated_nodes + sum(fallback.values()),
        delegated_nodes=info.num_delegated_nodes,
        delegate_subgraphs=info.num_delegated_subgraphs,
        fallback_ops=dict(sorted(fallback.items())),
    )


# The Core ML delegate targets the Neural Engine: float16, iOS 17 / macOS 14 and newer.
COREML_DEPLOYMENT_TARGET = "iOS17"


def _partitioners(backend: str) -> list:
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner()]
    if backend == "coreml":
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        specs = CoreMLBackend.generate_compile_specs(
            compute_unit=ct.ComputeUnit.ALL,
            minimum_deployment_target=getattr(ct.target, COREML_DEPLOYMENT_TARGET),
            compute_precision=ct.precision.FLOAT16,
        )
        return [CoreMLPartitioner(compile_specs=specs)]
    raise ValueError(f"unsupported ExecuTorch backend {backend}")


def carries_quantization(module) -> bool:
    """True for a PT2E module that already holds quantize/dequantize ops (a QAT checkpoint)."""
    graph = getattr(module, "graph", None)
    if graph is None:
        return False
    return any("quantize_per" in str(node.target) for node in graph.nodes if node.op == "call_function")


def quantize_pt2e(program, component: Component):
    """PT2E int8 with the XNNPACK quantizer: calibrate on the component's calibration set."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgegen.exporting.pt2e import zero_uninitialised

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(zero_uninitialised(program.module()), quantizer)
    names = [spec.name for spec in component.inputs]
    with torch.no_grad():
        for batch in component.calibration:
            prepared(*(batch[name] for name in names))
    return convert_pt2e(prepared)


class ExecutorchExporter:
    name = "executorch"
    backends = ("xnnpack", "coreml")
    quantizations = ("none", "int8")
    packages = ("executorch", "torchao", "coremltools")

    def unavailable_reason(self) -> str | None:
        from edgegen.versions import package_version

        if package_version("executorch") is None:
            return "executorch is not installed (pip install 'edgegen[executorch]')"
        return None

    def export(self, component: Component, folder: Path, options: ExportOptions) -> ExportedModel:
        import torch
        from executorch.exir import to_edge_transform_and_lower

        backend = options.backend or self.backends[0]
        if backend == "coreml" and options.quantize != "none":
            raise EdgegenError(
                "executorch --backend coreml supports --quantize none (float16); "
                "for quantized Core ML use --target coreml"
            )
        args = component.example_args()
        quantization, min_psnr, rewrites = Quantization(), None, []
        module = component.module
        if options.quantize == "int8" and backend == "xnnpack" and component.learned_int8_module is not None:
            module = component.learned_int8_module()  # a QAT student: its own learned scales
        if backend == "xnnpack" and not carries_quantization(module):
            # Exact rewrites (decomposed norms, concat upsampling, ...) so that the whole graph
            # is one XNNPACK subgraph; on a copy, since the module is shared with the pipeline.
            from edgegen.exporting.rewrites import make_delegable

            module = copy.deepcopy(module)
            rewrites = make_delegable(module)
        with torch.no_grad():
            program = torch.export.export(module, args, strict=False)
            if carries_quantization(module):
                # Learned (QAT) scales are kept as they are: no re-calibration.
                quantization = Quantization(scheme="int8", details=dict(LEARNED_SCALES))
                min_psnr = MIN_PSNR_DB_INT8
            elif options.quantize == "int8":
                quantized = quantize_pt2e(program, component)
                program = torch.export.export(quantized, args, strict=False)
                quantization = Quantization(
                    scheme="int8",
                    details={
                        "tool": "torchao PT2E + XNNPACKQuantizer",
                        "weights": "int8 symmetric per-channel",
                        "activations": "int8 per-tensor, calibrated",
                        "calibration_sets": len(component.calibration),
                    },
                )
                min_psnr = MIN_PSNR_DB_INT8
            edge = to_edge_transform_and_lower(program, partitioner=_partitioners(backend))
        delegation = delegation_report(edge, backend)
        path = folder / MODEL_FILE
        path.write_bytes(edge.to_executorch().buffer)
        inputs, outputs = pte_io_specs(
            path, [s.name for s in component.inputs], [s.name for s in component.outputs]
        )
        exported = ExportedModel(
            model_file=MODEL_FILE, inputs=inputs, outputs=outputs, delegation=delegation, backend=backend,
            quantization=quantization,
            graph_rewrites=rewrites,
        )
        if backend == "coreml":
            quantization = Quantization(
                scheme="none",
                details={"precision": "float16", "deployment_target": COREML_DEPLOYMENT_TARGET, "compute_units": "ALL"},
            )
            exported.quantization, min_psnr = quantization, MIN_PSNR_DB_FLOAT16
        if min_psnr is not None:
            exported.min_psnr_db = min_psnr
        return exported


EXPORTER = ExecutorchExporter()
