"""ONNX target: torch.onnx's dynamo exporter, one static-shape .onnx file per component."""

from __future__ import annotations

from pathlib import Path

from edgegen.components import Component
from edgegen.export import ExportedModel, ExportOptions
from edgegen.schema.manifest import Delegation, TensorSpec

MODEL_FILE = "model.onnx"
OPSET = 18

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
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(model_path), load_external_data=False).graph.node:
        key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


class OnnxExporter:
    name = "onnx"
    backends: tuple[str, ...] = ()
    quantizations = ("none",)
    packages = ("onnx", "onnxscript", "onnxruntime")

    def unavailable_reason(self) -> str | None:
        from edgegen.versions import package_version

        missing = [p for p in ("onnx", "onnxscript") if package_version(p) is None]
        return f"missing packages: {', '.join(missing)} (pip install 'edgegen[onnx]')" if missing else None

    def export(self, component: Component, folder: Path, options: ExportOptions) -> ExportedModel:
        import torch

        path = folder / MODEL_FILE
        with torch.no_grad():
            program = torch.onnx.export(
                component.module,
                component.example_args(),
                dynamo=True,
                opset_version=OPSET,
                input_names=[spec.name for spec in component.inputs],
                output_names=[spec.name for spec in component.outputs],
                verbose=False,
            )
        program.save(str(path))
        inputs, outputs = onnx_io_specs(path)
        ops = onnx_op_counts(path)
        # onnxruntime's CPU provider takes every standard op; there is no partial delegation.
        total = sum(ops.values())
        delegation = Delegation(backend="onnxruntime-cpu", total_nodes=total, delegated_nodes=total, delegate_subgraphs=1)
        return ExportedModel(model_file=MODEL_FILE, inputs=inputs, outputs=outputs, delegation=delegation)


EXPORTER = OnnxExporter()
