"""ExecuTorch target: torch.export -> edge dialect -> a delegate (XNNPACK, Core ML) -> one .pte per component.

Each delegate is one ``DelegateProvider`` record in ``PROVIDERS``: its partitioners, the
quantizations it takes and how faithful its float arithmetic is. int8 is the one PT2E path of
``edgegen.exporting.quantize``: a QAT student's learned scales, else calibration.
The delegation report counts the edge-graph nodes the partitioner gave to the delegate and the
ones left to ExecuTorch's portable kernels, which run far slower on a phone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgegen.errors import EdgegenError
from edgegen.exporting.base import (
    MIN_PSNR_DB_FLOAT16,
    MIN_PSNR_DB_FLOAT32,
    MIN_PSNR_DB_INT8,
    ExportedModel,
    ExportOptions,
    delegation_from_ops,
    missing_packages,
    wants_separate_weights,
)
from edgegen.exporting.quantize import (
    XNNPACK_QAT,
    learned_int8_module,
    learned_scales_elsewhere,
    learned_scales_quantization,
    quantize_static,
    xnnpack_quantizer,
)
from edgegen.exporting.rewrites import delegable_graph_ops, explicit_type_promotion
from edgegen.families.base import in_float32
from edgegen.schema.manifest import CoremlDeployment, Delegation, Quantization, TensorSpec

if TYPE_CHECKING:
    from edgegen.families import Component

MODEL_FILE = "model.pte"
# ExecuTorch's separate weight data: every constant, delegated or not, tagged with this name is
# written to <tag>.ptd, which the runtime loads beside the program.
WEIGHTS_TAG = "weights"
WEIGHTS_FILE = f"{WEIGHTS_TAG}.ptd"

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


def _weights_tagged_external(program, args):
    """``program`` re-exported with every weight tagged for the .ptd file (the delegates read the
    tag from the unlifted module's constants, as ExecuTorch's own LLM export does)."""
    import torch
    from executorch.exir.passes.external_constants_pass import delegate_external_constants_pass_unlifted

    module = program.module()
    delegate_external_constants_pass_unlifted(module, gen_tag_fn=lambda node: WEIGHTS_TAG)
    return torch.export.export(module, args, strict=False)


# ExecuTorch's XNNPACK partitioner logs, at debug level, why it refused each node.
_PARTITIONER_LOGGERS = {"xnnpack": "executorch.backends.xnnpack.partition"}
NO_PARTITIONER_SUPPORT = "the partitioner has no support for this op"


@contextlib.contextmanager
def partitioner_refusals(backend: str):
    """Collect {op type: reason} from the partitioner's refusals while lowering, without printing them."""
    import logging
    import re

    reasons: dict[str, str] = {}
    name = _PARTITIONER_LOGGERS.get(backend)
    if name is None:
        yield reasons
        return

    class Collect(logging.Handler):
        def emit(self, record):
            why = record.msg  # a WhyNoPartition, reused for the next node: read it now
            node = getattr(why, "node", None)
            if node is not None:
                reasons.setdefault(re.sub(r"_\d+$", "", node.name), str(why.reason))

    logger, handler = logging.getLogger(name), Collect(logging.DEBUG)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield reasons
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def delegation_report(edge_program, backend: str, reasons: dict[str, str] | None = None) -> Delegation:
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge_program.exported_program().graph_module)
    # getitem only unpacks a delegate's outputs; it is not counted when left outside.
    fallback = {name: row.non_delegated for name, row in info.delegation_by_operator.items() if name != "getitem"}
    ops = {name: row.delegated + fallback.get(name, 0) for name, row in info.delegation_by_operator.items()}
    report = delegation_from_ops(backend, ops, fallback, subgraphs=info.num_delegated_subgraphs)
    if reasons is not None:
        report.fallback_reasons = {op: reasons.get(op, NO_PARTITIONER_SUPPORT) for op in report.fallback_ops}
    return report


def forget_lowered_graphs() -> None:
    """Release the graphs ExecuTorch's backend utilities keep after lowering.

    ExecuTorch 1.5.1 memoizes ``executorch.exir.backend.utils.is_same_node`` without a bound, so
    its cache holds every lowered graph, and with it the delegate's serialized copy of the
    weights, for the life of the process: 1.5 GiB for SD 1.5's float16 UNet, added to what parity
    then needs.
    """
    import gc

    from executorch.exir.backend import utils

    clear = getattr(utils.is_same_node, "cache_clear", None)
    if clear is not None:
        clear()
    gc.collect()
    release_free_memory()


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc keeps them after a large export has
    freed its graphs, and the runtime's packed weights would be added on top)."""
    import ctypes
    import ctypes.util
    import sys

    if sys.platform.startswith("linux") and (name := ctypes.util.find_library("c")):
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None)  # glibc only; musl has none
        if trim is not None:
            trim(0)


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
    "activations": "int8 per-tensor, calibrated, into and out of the weighted layers",
    "float": "additions, products, normalisations, softmax and the other elementwise ops",
}


class ExecutorchExporter:
    name = "executorch"
    backends = tuple(PROVIDERS)
    quantizations = tuple(dict.fromkeys(q for provider in PROVIDERS.values() for q in provider.quantizations))
    mixed_precision = True  # --quantize auto: int8 with chosen weighted layers kept float
    packages = ("executorch", "torchao", "coremltools")
    separate_weights = True  # can write the weights to a file beside the model

    def unavailable_reason(self) -> str | None:
        return missing_packages(("executorch",), "executorch")

    def write_methods(self, methods: dict[str, tuple[Any, tuple]], path: Path) -> list[str]:
        """Several modules as the methods of one program (``write_methods`` below)."""
        return write_methods(methods, path)

    def export(self, component: Component, folder: Path, options: ExportOptions) -> ExportedModel:
        import torch
        from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

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
        if options.load.dtype == "float16" and provider.float_precision == "float16":
            # The Core ML delegate computes in float16 from a float32 graph; coremltools refuses
            # float16 graphs (layer_norm's epsilon stays float32).
            module = in_float32(module)
        if provider.rewrites and learned is None:
            # Exact rewrites (decomposed norms, concat upsampling, ...) so that the whole graph
            # is one XNNPACK subgraph; on a copy, since the module is shared with the pipeline.
            from edgegen.exporting.rewrites import make_delegable, sharing_weights_copy

            module = sharing_weights_copy(module)
            rewrites = make_delegable(module)
        separate = wants_separate_weights(component, options)
        with torch.no_grad():
            program = torch.export.export(module, args, strict=False)
            if provider.rewrites and learned is None:
                # Before calibration, so that the quantizer sees the reshapes and slices these
                # leave and shares each one's int8 parameters with its input (XNNPACK refuses a
                # reshape that requantizes).
                rewrites += explicit_type_promotion(program) + delegable_graph_ops(program)
            if learned is not None:
                quantization, min_psnr = learned_scales_quantization(), MIN_PSNR_DB_INT8
            elif options.quantize == "int8":
                names = [spec.name for spec in component.inputs]
                program = torch.export.export(
                    quantize_static(program.module(), xnnpack_quantizer(float_layers=options.float_layers), component.calibration, names), args, strict=False
                )
                quantization = Quantization(
                    scheme="int8", details={**CALIBRATED_INT8, "calibration_sets": len(component.calibration), **learned_scales_elsewhere(component, XNNPACK_QAT)}
                )
                min_psnr = MIN_PSNR_DB_INT8
            if separate:
                program = _weights_tagged_external(program, args)
            rewrites += explicit_type_promotion(program)
            with partitioner_refusals(provider.name) as reasons:
                edge = to_edge_transform_and_lower(program, partitioner=provider.partitioners())
        delegation = delegation_report(edge, provider.name, reasons if provider.name in _PARTITIONER_LOGGERS else None)
        path = folder / MODEL_FILE
        config = ExecutorchBackendConfig(external_constants=(lambda node: WEIGHTS_TAG) if separate else False)
        executable = edge.to_executorch(config)
        with path.open("wb") as handle:  # streamed: no second copy of the program in memory
            executable.write_to_file(handle)
        weight_files = []
        if separate:
            executable.write_tensor_data_to_file(str(folder))
            weight_files = [WEIGHTS_FILE]
        del module, program, edge, executable
        forget_lowered_graphs()  # before parity loads the program: its memory is not added to this
        inputs, outputs = pte_io_specs(
            path, [s.name for s in component.inputs], [s.name for s in component.outputs]
        )
        if provider.coreml is not None:
            quantization = Quantization(scheme="none", details=provider.coreml.model_dump())
        return ExportedModel(
            model_file=MODEL_FILE, inputs=inputs, outputs=outputs, delegation=delegation, backend=provider.name,
            quantization=quantization, graph_rewrites=rewrites, min_psnr_db=min_psnr, coreml=provider.coreml,
            weight_files=weight_files,
        )


EXPORTER = ExecutorchExporter()


def write_methods(methods: dict[str, tuple[Any, tuple]], path: Path) -> list[str]:
    """Several modules as the methods of ONE float32 XNNPACK program at ``path`` (each method named
    by its key, on its example arguments), with the same exact delegability rewrites as a
    component's export; returns those rewrites. An app that runs a pipeline as methods of one
    file (react-native-executorch's encode/denoise/decode) loads this."""
    import torch
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    from edgegen.exporting.rewrites import make_delegable, sharing_weights_copy

    programs, rewrites = {}, []
    with torch.no_grad():
        for name, (module, args) in methods.items():
            module = sharing_weights_copy(module)
            rewrites += [f"{name}: {rewrite}" for rewrite in make_delegable(module)]
            program = torch.export.export(module, args, strict=False)
            applied = explicit_type_promotion(program) + delegable_graph_ops(program)
            applied += explicit_type_promotion(program)
            rewrites += [f"{name}: {rewrite}" for rewrite in applied]
            programs[name] = program
        edge = to_edge_transform_and_lower(programs, partitioner=_xnnpack_partitioners())
    executable = edge.to_executorch(ExecutorchBackendConfig())
    with Path(path).open("wb") as handle:
        executable.write_to_file(handle)
    del programs, edge, executable
    forget_lowered_graphs()
    return rewrites
