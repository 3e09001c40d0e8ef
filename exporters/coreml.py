"""Core ML target: torch.export (or torch.jit.trace) -> coremltools -> one ML Program ``model.mlpackage`` per component.

Conversion and weight compression (coremltools.optimize.coreml) run on any host; Core ML
prediction needs macOS, so on Linux an export is written with its parity marked "not measured".
Activation quantization (W8A8) is not offered: coremltools calibrates it by running the model,
which only works on macOS.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from edgegen.errors import first_line
from edgegen.exporting.base import ExportedModel, ExportOptions, count_ops, delegation_from_ops, min_psnr_db, missing_packages
from edgegen.families.base import in_float32
from edgegen.schema.manifest import CoremlDeployment, Quantization, TensorSpec

if TYPE_CHECKING:
    from edgegen.families import Component

MODEL_FILE = "model.mlpackage"
# iOS17 / macOS14: the oldest target with the ML Program ops every component and compression
# scheme here needs (constexpr_lut_to_dense, per-channel constexpr_affine_dequantize).
DEPLOYMENT_TARGET = "iOS17"
COMPUTE_UNITS = "ALL"  # Core ML picks CPU, GPU or Neural Engine per op at load time
# coremltools' default: only weights of more than 2048 elements are compressed, i.e. every conv
# and linear weight of a real checkpoint, while biases and norm scales (tiny, sensitive) stay float.
WEIGHT_THRESHOLD = 2048

# Float32 keeps parity with eager tight; compressed models compute in float16, as the Neural
# Engine does (float32 programs never run there).
_PRECISION = {"none": "float32", "int8-weights": "float16", "palettize-6bit": "float16", "palettize-4bit": "float16"}
# MIL ops that hold weights rather than compute, like ONNX initializers.
_WEIGHT_OPS = ("const", "constexpr_")
# Core ML multi-array data types -> numpy dtype names.
_ARRAY_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "INT32": "int32", "INT8": "int8"}


def _load_spec(model_path: Path):
    import coremltools as ct

    return ct.utils.load_spec(str(model_path))


def coreml_io_specs(model_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Read the model's inputs and outputs back from the package that was written."""
    from coremltools.proto import FeatureTypes_pb2

    names = {value: key for key, value in FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.items()}
    description = _load_spec(model_path).description

    def specs(features) -> list[TensorSpec]:
        result = []
        for feature in features:
            if feature.type.WhichOneof("Type") != "multiArrayType":
                raise RuntimeError(f"Core ML feature '{feature.name}' is not a multi-array")
            array = feature.type.multiArrayType
            dtype = _ARRAY_DTYPES.get(names.get(array.dataType, ""), "unknown")
            result.append(TensorSpec(name=feature.name, shape=list(array.shape), dtype=dtype))
        return result

    return specs(description.input), specs(description.output)


def _all_op_types(model_path: Path) -> dict[str, int]:
    """Every op of the ML Program by type, weights (const, constexpr_*) included."""

    def walk(block):
        for op in block.operations:
            yield op.type
            for nested in op.blocks:  # cond / while bodies
                yield from walk(nested)

    functions = _load_spec(model_path).mlProgram.functions.values()
    return count_ops(name for function in functions for name in walk(function.block_specializations[function.opset]))


def mil_op_counts(model_path: Path) -> dict[str, int]:
    """Compute ops of the ML Program by type (weights, const and constexpr_*, are not counted)."""
    return _compute_ops(_all_op_types(Path(model_path)))


def _compute_ops(ops: dict[str, int]) -> dict[str, int]:
    return dict(sorted((name, n) for name, n in ops.items() if not name.startswith(_WEIGHT_OPS)))


def _compression_config(scheme: str):
    import coremltools.optimize as cto

    if scheme == "int8-weights":
        op_config = cto.coreml.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD
        )
        details = {"tool": "coremltools.optimize.coreml.linear_quantize_weights", "weights": "int8 symmetric per-channel"}
        return cto.coreml.linear_quantize_weights, cto.coreml.OptimizationConfig(global_config=op_config), details
    nbits = {"palettize-6bit": 6, "palettize-4bit": 4}[scheme]
    op_config = cto.coreml.OpPalettizerConfig(
        mode="kmeans", nbits=nbits, granularity="per_tensor", weight_threshold=WEIGHT_THRESHOLD
    )
    details = {"tool": "coremltools.optimize.coreml.palettize_weights", "weights": f"{nbits}-bit k-means palette per tensor"}
    return cto.coreml.palettize_weights, cto.coreml.OptimizationConfig(global_config=op_config), details


def _register_missing_converters() -> None:
    """Converters for torch ops coremltools 9 has none for, each its exact MIL equivalent.

    ``movedim`` (AutoencoderDC's attention and RMSNorm blocks move channels last and back) is a
    ``transpose`` with the permutation torch computes. Registered once, and only where
    coremltools has no converter of its own.
    """
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import register_torch_op
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    if _TORCH_OPS_REGISTRY.get_func("movedim") is None:

        @register_torch_op
        def movedim(context, node):
            x, source, destination = _get_inputs(context, node, expected=3)
            rank = x.rank
            sources = [int(d) % rank for d in np.atleast_1d(source.val)]
            destinations = [int(d) % rank for d in np.atleast_1d(destination.val)]
            perm = [None] * rank
            for src, dst in zip(sources, destinations, strict=True):
                perm[dst] = src
            rest = iter(d for d in range(rank) if d not in sources)
            perm = [next(rest) if d is None else d for d in perm]
            context.add(mb.transpose(x=x, perm=perm, name=node.name))


def _remove_temporary_packages(models: list) -> None:
    """Delete the temporary .mlpackage coremltools 9 writes for each converted or compressed ML
    Program and never removes (in the system's temporary folder: 10 GiB for SDXL's float32
    UNet); the artifact is the copy ``save`` wrote."""
    import shutil

    for model in models:
        if getattr(model, "is_temp_package", False) and getattr(model, "package_path", None):
            shutil.rmtree(model.package_path, ignore_errors=True)


def _converted(module, args, convert_options: dict) -> tuple[object, str]:
    """coremltools' conversion of ``module``, and which of its frontends took it.

    torch.export first: it traces with fake tensors, so the conversion holds the weights and
    little else. TorchScript tracing keeps every intermediate activation alive until the trace
    ends (0.35 GiB per PixArt-Sigma block at 1024 px). Tracing remains for graphs with ops
    coremltools' torch.export frontend lacks (the text encoders' ``alias``,
    ``where.ScalarOther`` and ``__and__`` in coremltools 9), and the manifest says which frontend
    converted the model and why.
    """
    import coremltools as ct
    import torch

    from edgegen.exporting.quantize import drop_zero_baddbmm_inputs

    with torch.no_grad():
        try:
            program = torch.export.export(module, args, strict=False)
            # The attention's baddbmm(empty(heads, tokens, tokens), ..., beta=0): coremltools
            # materializes that ignored input, 1 GiB per PixArt-Sigma block at 1024 px.
            drop_zero_baddbmm_inputs(program.graph_module)
            return ct.convert(program.run_decompositions({}), **convert_options), "torch.export"
        except Exception as error:  # an op the torch.export frontend lacks; tracing takes it
            reason = first_line(error)
        with warnings.catch_warnings():
            # Tracing warns where the models branch on shapes; shapes are static here, so the
            # traced branch is the only one ever taken.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(module, args, check_trace=False)
    return ct.convert(traced, **convert_options), f"torch.jit.trace (torch.export frontend: {reason})"


class CoremlExporter:
    name = "coreml"
    backends: tuple[str, ...] = ()
    quantizations = ("none", "int8-weights", "palettize-6bit", "palettize-4bit")
    packages = ("coremltools",)
    separate_weights = False  # the weights are inside the .mlpackage

    def unavailable_reason(self) -> str | None:
        return missing_packages(self.packages, "coreml")

    def export(self, component: Component, folder: Path, options: ExportOptions) -> ExportedModel:
        import coremltools as ct
        import numpy as np

        args = component.example_args()
        precision = _PRECISION[options.quantize]
        module = component.module
        if options.load.dtype == "float16":
            # coremltools converts float32 graphs; float16 is its compute precision.
            module, precision = in_float32(module), "float16"
        _register_missing_converters()
        # Core ML has no int64 features: integer inputs (token ids) are declared int32.
        inputs = [
            ct.TensorType(
                name=spec.name,
                shape=tuple(arg.shape),
                dtype=np.float32 if arg.is_floating_point() else np.int32,
            )
            for spec, arg in zip(component.inputs, args, strict=True)
        ]
        outputs = [ct.TensorType(name=spec.name, dtype=np.float32) for spec in component.outputs]
        model, frontend = _converted(module, args, dict(
            inputs=inputs,
            outputs=outputs,
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
            compute_precision=ct.precision.FLOAT32 if precision == "float32" else ct.precision.FLOAT16,
            compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS),
            skip_model_load=True,
        ))
        deployment = CoremlDeployment(deployment_target=DEPLOYMENT_TARGET, compute_units=COMPUTE_UNITS, precision=precision)
        details = deployment.model_dump()  # also here for readers of manifests older than the typed field
        details["frontend"] = frontend
        path = folder / MODEL_FILE
        packages = [model]
        try:
            if options.quantize != "none":
                compress, config, scheme_details = _compression_config(options.quantize)
                model = compress(model, config)
                packages.append(model)
                details.update(scheme_details, weight_threshold=WEIGHT_THRESHOLD)
            model.save(str(path))
        finally:
            _remove_temporary_packages(packages)

        all_ops = _all_op_types(path)
        if options.quantize != "none":
            details["compressed_weights"] = sum(n for name, n in all_ops.items() if name.startswith("constexpr_"))
        io_inputs, io_outputs = coreml_io_specs(path)
        # Core ML assigns compute units per op when the model is loaded on the device, so every
        # op is in the one program; there is nothing that falls back at export time.
        return ExportedModel(
            model_file=MODEL_FILE,
            inputs=io_inputs,
            outputs=io_outputs,
            quantization=Quantization(scheme=options.quantize, details=details),
            delegation=delegation_from_ops("coreml", _compute_ops(all_ops)),
            coreml=deployment,
            min_psnr_db=min_psnr_db(options.quantize),
        )


EXPORTER = CoremlExporter()
