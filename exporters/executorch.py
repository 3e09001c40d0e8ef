"""ExecuTorch target: torch.export -> edge dialect -> a delegate (XNNPACK, Core ML) -> one .pte per component.

Each delegate is one ``DelegateProvider`` record in ``PROVIDERS``: its partitioners, the
quantizations it takes and how faithful its float arithmetic is. int8 is the one PT2E path of
``edgegen.exporting.quantize``: a QAT student's learned scales, else calibration.
The delegation report counts the edge-graph nodes the partitioner gave to the delegate and the
ones left to ExecuTorch's portable kernels, which run far slower on a phone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgegen.errors import EdgegenError
from edgegen.exporting.base import (
    MIN_PSNR_DB_FLOAT16,
    MIN_PSNR_DB_FLOAT32,
    MIN_PSNR_DB_INT8,
    ExportedModel,
    ExportOptions,
    delegation_from_ops,
    missing_packages,
)
from edgegen.exporting.quantize import learned_int8_module, learned_scales_quantization, quantize_static, xnnpack_quantizer
from edgegen.schema.manifest import CoremlDeployment, Delegation, Quantization, TensorSpec

if TYPE_CHECKING:
    from edgegen.families import Component

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
    # getitem only unpacks a delegate's outputs; it is not counted when left outside.
    fallback = {name: row.non_delegated for name, row in info.delegation_by_operator.items() if name != "getitem"}
    ops = {name: row.delegated + fallback.get(name, 0) for name, row in info.delegation_by_operator.items()}
    return delegation_from_ops(backend, ops, fallback, subgraphs=info.num_delegated_subgraphs)


@dataclass(frozen=True)
class DelegateProvider:
    """One ExecuTorch backend: how to partition for it, what it quantizes, how faithful its floats are."""

    name: str
    partitioners: Callable[[], list]
    quantizations: tuple[str, ...]
    float_precision: str  # what the delegate computes a float model in
    min_psnr_db_float: float
    rewrites: bool = False  # apply the exact delegability rewrites (edgegen.exporting.rewrites)
    coreml: CoremlDeployment | None = None  # Core ML delegate: how the device loads the program
    other_quantizations: str = ""  # where to go for a quantization this backend does not take


def _xnnpack_partitioners() -> list:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return [XnnpackPartitioner()]


# The Core ML delegate targets the Neural Engine: float16, iOS 17 / macOS 14 and newer.
COREML_DELEGATE = CoremlDeployment(deployment_target="iOS17", compute_units="ALL", precision="float16")


def _coreml_partitioners() -> list:
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    specs = CoreMLBackend.generate_compile_specs(
        compute_unit=getattr(ct.ComputeUnit, COREML_DELEGATE.compute_units),
        minimum_deployment_target=getattr(ct.target, COREML_DELEGATE.deployment_target),
        compute_precision=ct.precision.FLOAT16,
    )
    return [CoreMLPartitioner(compile_specs=specs)]


# The first is the default backend. Adding a backend (QNN, Vulkan) is one record here.
PROVIDERS = {
    provider.name: provider
    for provider in (
        DelegateProvider(
            "xnnpack", _xnnpack_partitioners, ("none", "int8"), "float32", MIN_PSNR_DB_FLOAT32, rewrites=True
        ),
        DelegateProvider(
            "coreml", _coreml_partitioners, ("none",), "float16", MIN_PSNR_DB_FLOAT16, coreml=COREML_DELEGATE,
            other_quantizations="for quantized Core ML use --target coreml",
        ),
    )
}

CALIBRATED_INT8 = {
    "tool": "torchao PT2E + XNNPACKQuantizer",
    "weights": "int8 symmetric per-channel",
    "activations": "int8 per-tensor, calibrated",
}


class ExecutorchExporter:
    name = "executorch"
    backends = tuple(PROVIDERS)
    quantizations = tuple(dict.fromkeys(q for provider in PROVIDERS.values() for q in provider.quantizations))
    packages = ("executorch", "torchao", "coremltools")

    def unavailable_reason(self) -> str | None:
        return missing_packages(("executorch",), "executorch")

    def export(self, component: Component, folder: Path, options: ExportOptions) -> ExportedModel:
        import torch
        from executorch.exir import to_edge_transform_and_lower

        provider = PROVIDERS[options.backend or self.backends[0]]
        if options.quantize not in provider.quantizations:
            raise EdgegenError(
                f"executorch --backend {provider.name} supports --quantize {', '.join(provider.quantizations)} "
                f"({provider.float_precision})" + (f"; {provider.other_quantizations}" if provider.other_quantizations else "")
            )
        args = component.example_args()
        quantization, min_psnr, rewrites = Quantization(), provider.min_psnr_db_float, []
        # A QAT student lowers its own learned scales; anything else is calibrated here.
        learned = learned_int8_module(component) if options.quantize == "int8" else None
        module = component.module if learned is None else learned
        if provider.rewrites and learned is None:
            # Exact rewrites (decomposed norms, concat upsampling, ...) so that the whole graph
            # is one XNNPACK subgraph; on a copy, since the module is shared with the pipeline.
            from edgegen.exporting.rewrites import make_delegable

            module = copy.deepcopy(module)
            rewrites = make_delegable(module)
        with torch.no_grad():
            program = torch.export.export(module, args, strict=False)
            if learned is not None:
                quantization, min_psnr = learned_scales_quantization(), MIN_PSNR_DB_INT8
            elif options.quantize == "int8":
                names = [spec.name for spec in component.inputs]
                quantized = quantize_static(program.module(), xnnpack_quantizer(), component.calibration, names)
                program = torch.export.export(quantized, args, strict=False)
                quantization = Quantization(
                    scheme="int8", details={**CALIBRATED_INT8, "calibration_sets": len(component.calibration)}
                )
                min_psnr = MIN_PSNR_DB_INT8
            edge = to_edge_transform_and_lower(program, partitioner=provider.partitioners())
        delegation = delegation_report(edge, provider.name)
        path = folder / MODEL_FILE
        path.write_bytes(edge.to_executorch().buffer)
        inputs, outputs = pte_io_specs(
            path, [s.name for s in component.inputs], [s.name for s in component.outputs]
        )
        if provider.coreml is not None:
            quantization = Quantization(scheme="none", details=provider.coreml.model_dump())
        return ExportedModel(
            model_file=MODEL_FILE, inputs=inputs, outputs=outputs, delegation=delegation, backend=provider.name,
            quantization=quantization, graph_rewrites=rewrites, min_psnr_db=min_psnr, coreml=provider.coreml,
        )


EXPORTER = ExecutorchExporter()
