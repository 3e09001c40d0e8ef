"""ONNX target: torch.onnx's dynamo exporter, one static-shape .onnx file per component."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgegen.exporting.base import (
    SEPARATE_WEIGHTS_BYTES,
    ExportedModel,
    ExportOptions,
    count_ops,
    delegation_from_ops,
    min_psnr_db,
    missing_packages,
    wants_separate_weights,
    weight_bytes,
)
from edgegen.exporting.quantize import XNNPACK_QAT, drop_zero_baddbmm_inputs, learned_int8_module, learned_scales_elsewhere, learned_scales_quantization
from edgegen.exporting.rewrites import explicit_type_promotion
from edgegen.schema.manifest import Quantization, TensorSpec

if TYPE_CHECKING:
    from edgegen.families import Component

MODEL_FILE = "model.onnx"
OPSET = 18
# The compute-heavy ops go to int8; normalisations and softmax stay float, where 8 bits would
# cost most of the accuracy and save almost none of the time.
QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")

_ONNX_TO_NUMPY = {
    1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64",
}


def onnx_io_specs(model_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Read the graph's inputs and outputs back from the file the exporter wrote."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph

    def spec(value) -> TensorSpec:
        tensor_type = value.type.tensor_type
        shape = [dim.dim_value for dim in tensor_type.shape.dim]
        return TensorSpec(name=value.name, shape=shape, dtype=_ONNX_TO_NUMPY.get(tensor_type.elem_type, "unknown"))

    initializers = {init.name for init in graph.initializer}
    inputs = [spec(value) for value in graph.input if value.name not in initializers]
    return inputs, [spec(value) for value in graph.output]


def onnx_op_counts(model_path: Path) -> dict[str, int]:
    """Nodes of the graph by op type, ``domain::type`` outside the default domain."""
    import onnx

    nodes = onnx.load(str(model_path), load_external_data=False).graph.node
    return count_ops(f"{node.domain}::{node.op_type}" if node.domain else node.op_type for node in nodes)


def _remove_with_data(model_path: Path) -> None:
    """An intermediate model and the tensor file beside it, so neither lands in the artifact."""
    model_path.unlink(missing_ok=True)
    model_path.with_name(model_path.name + ".data").unlink(missing_ok=True)


def quantize_onnx(float_path: Path, quantized_path: Path, component: Component, scheme: str, external: bool = False) -> Quantization:
    """onnxruntime int8: static QDQ calibrated on the component's calibration set, or dynamic.

    Weights use a 7-bit range (reduce_range): x86 CPUs without VNNI saturate the 16-bit
    intermediate of u8 x s8 products at full range, which cost 15 dB of PSNR here.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx

    # The dynamo exporter records intermediate shapes that onnxruntime's quantizer re-infers
    # differently in places (a ShapeInferenceError); drop them and let it infer afresh.
    # ``external``: every model on the way keeps its tensors in a file beside it. Past 2 GiB (SD
    # 1.5's float UNet is 3.4 GB) a protobuf cannot hold them ("Failed to serialize proto").
    model = onnx.load(str(float_path))
    del model.graph.value_info[:]
    onnx.save(model, str(float_path), save_as_external_data=external, all_tensors_to_one_file=True, location=float_path.name + ".data")
    del model
    prepared = float_path.with_name("preprocessed.onnx")
    quant_pre_process(
        str(float_path), str(prepared), skip_symbolic_shape=True,
        save_as_external_data=external, all_tensors_to_one_file=True, external_data_location=prepared.name + ".data",
    )
    if scheme == "int8-dynamic":
        # Weights int8 per channel; activations quantized at run time from their observed range.
        quantize_dynamic(
            str(prepared), str(quantized_path), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES), use_external_data_format=external,
        )
        _remove_with_data(prepared)
        return Quantization(
            scheme=scheme,
            details={"tool": "onnxruntime.quantize_dynamic", "weights": "int8 per-channel, 7-bit range", "ops": list(QUANTIZED_OP_TYPES)},
        )
    names = [spec.name for spec in component.inputs]
    # Attention's activation x activation MatMuls stay float (as XNNPACK's quantizer does):
    # both operands would need run-time ranges, and they dominate the error for little gain.
    graph = onnx.load(str(prepared), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    activation_matmuls = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and not any(name in weights for name in node.input)
    ]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(
                [{name: batch[name].detach().cpu().numpy() for name in names} for batch in component.calibration]
            )

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(prepared),
        str(quantized_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        reduce_range=True,
        op_types_to_quantize=list(QUANTIZED_OP_TYPES),
        nodes_to_exclude=activation_matmuls,
        use_external_data_format=external,
    )
    _remove_with_data(prepared)
    return Quantization(
        scheme=scheme,
        details={
            "tool": "onnxruntime.quantize_static",
            "format": "QDQ",
            "weights": "int8 per-channel, 7-bit range",
            "activations": "uint8 per-tensor, min-max calibrated",
            "calibration_sets": len(component.calibration),
            "ops": list(QUANTIZED_OP_TYPES),
        },
    )


def _strip_node_metadata(path: Path) -> None:
    """Drop torch.onnx's per-node provenance (class hierarchy, FX node, scopes) from ``path``.

    A QAT graph has a QuantizeLinear/DequantizeLinear pair per tensor, and their provenance
    strings were measured at two thirds of the file (1.4 of 2.1 MB for the embedded student).
    """
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))


def drop_noop_squeezes(program) -> list[str]:
    """Replace each ``Squeeze`` of a static dimension that is not 1 by an ``Identity``.

    ``torch.squeeze(x, dim)`` leaves a dimension that is not 1 alone, but torch.onnx writes it as
    an ONNX ``Squeeze``, which onnxruntime refuses to load (PixArt's transformer squeezes its
    token dimension this way).
    """
    import onnx_ir as ir

    graph = program.model.graph
    noops = []
    for node in list(graph):
        if node.op_type != "Squeeze" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        data, axes = node.inputs
        tensor = ir.convenience.get_const_tensor(axes) if axes is not None else None
        if data is None or data.shape is None or tensor is None or not data.shape.is_static():
            continue
        dims = [int(axis) for axis in tensor.numpy().reshape(-1)]
        if all(data.shape[axis] != 1 for axis in dims):
            noops.append(node)
    for node in noops:
        identity = ir.Node("", "Identity", inputs=[node.inputs[0]])
        ir.convenience.replace_nodes_and_values(graph, node, [node], [identity], node.outputs, identity.outputs)
    return [f"Squeeze of a dimension that is not 1 x{len(noops)} -> Identity"] if noops else []


class OnnxExporter:
    name = "onnx"
    backends: tuple[str, ...] = ()
    quantizations = ("none", "int8", "int8-dynamic")
    packages = ("onnx", "onnxscript", "onnxruntime")
    separate_weights = True  # can write the weights to a file beside the model

    def unavailable_reason(self) -> str | None:
        return missing_packages(("onnx", "onnxscript"), "onnx")

    def export(self, component: Component, folder: Path, options: ExportOptions) -> ExportedModel:
        import torch

        path = folder / MODEL_FILE
        # A QAT student's int8 is its converted PT2E graph: torch.onnx writes its quantize and
        # dequantize ops as QuantizeLinear/DequantizeLinear with the learned scales (QDQ format).
        learned = learned_int8_module(component) if options.quantize == "int8" else None
        module = component.module if learned is None else drop_zero_baddbmm_inputs(learned)
        if learned is None and options.quantize != "none":
            # onnxruntime's quantization preprocessing folds the attention's beta=0 baddbmm input
            # into a float constant of tokens x tokens (4 MB for diffusers' test VAE, 64 MB at
            # SD's 64x64 latents); the graph computes bmm * scale instead, as for QAT graphs.
            with torch.no_grad():
                traced = torch.export.export(module, component.example_args(), strict=False).module()
            module = drop_zero_baddbmm_inputs(traced)
        promotions = []
        with torch.no_grad():
            if options.load.dtype != "float32":
                # torch.onnx writes torch's implicit float16/float32 promotion as ops of mixed
                # types, which onnxruntime refuses; the promotions are made explicit first.
                module = torch.export.export(module, component.example_args(), strict=False)
                promotions = explicit_type_promotion(module)
            program = torch.onnx.export(
                module,
                component.example_args(),
                dynamo=True,
                opset_version=OPSET,
                input_names=[spec.name for spec in component.inputs],
                output_names=[spec.name for spec in component.outputs],
                verbose=False,
            )
        rewrites = promotions + drop_noop_squeezes(program)
        quantization = Quantization()
        # None: torch.onnx writes external data only where the protobuf would pass 2 GiB.
        external = True if wants_separate_weights(component, options) else None
        if options.quantize == "none":
            program.save(str(path), external_data=external)
        elif learned is not None:
            program.save(str(path), external_data=external)
            _strip_node_metadata(path)
            quantization = learned_scales_quantization(format="QDQ")
        else:
            float_path = folder / "float.onnx"
            program.save(str(float_path), external_data=external)
            # The float model on the way is past the protobuf's 2 GiB long before the int8 one is.
            quantization = quantize_onnx(float_path, path, component, options.quantize, external=bool(external) or weight_bytes(component) > SEPARATE_WEIGHTS_BYTES)
            if options.quantize == "int8":
                quantization.details.update(learned_scales_elsewhere(component, XNNPACK_QAT))
            _remove_with_data(float_path)
        inputs, outputs = onnx_io_specs(path)
        # onnxruntime's CPU provider takes every standard op; there is no partial delegation.
        delegation = delegation_from_ops("onnxruntime-cpu", onnx_op_counts(path))
        weight_files = [name for name in (MODEL_FILE + ".data",) if (folder / name).is_file()]
        return ExportedModel(
            model_file=MODEL_FILE, inputs=inputs, outputs=outputs, delegation=delegation, quantization=quantization,
            min_psnr_db=min_psnr_db(options.quantize), graph_rewrites=rewrites, weight_files=weight_files,
        )


EXPORTER = OnnxExporter()
