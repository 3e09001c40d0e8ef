"""TFLite/LiteRT target: litert-torch converts each component to one static-shape .tflite file.

The model has one signature whose inputs and outputs carry the component's declared names
(LiteRT lists signature tensors alphabetically, so runtimes must map them by name, never by
position). LiteRT narrows 64-bit I/O to 32 bits (int64 token ids become int32); the manifest
records what the converter produced. Quantization uses litert-torch's own recipes: static int8
through torchao's PT2E flow calibrated on the component's calibration set, dynamic-range int8
and int8 weight-only through ai-edge-quantizer.

The delegation report counts the flatbuffer's operators: builtin ops run on LiteRT's own
kernels (and its default XNNPACK delegate); custom and Flex (TensorFlow) ops need extra
libraries on the device and are listed as fallbacks.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

from edgegen.exporting.base import ExportedModel, ExportOptions, count_ops, delegation_from_ops, min_psnr_db, missing_packages
from edgegen.exporting.quantize import (
    LITERT_QAT,
    annotate_weight_sharing_convolutions,
    drop_orphaned_shared_specs,
    learned_int8_module,
    learned_scales_elsewhere,
    learned_scales_quantization,
    quantize_static,
)
from edgegen.families.base import in_float32
from edgegen.schema.manifest import Delegation, Quantization, TensorSpec

if TYPE_CHECKING:
    from edgegen.families import Component

MODEL_FILE = "model.tflite"
SIGNATURE_KEY = "serving_default"
# Static int8 quantizes the weight-carrying layers; normalisations, softmax and elementwise ops
# stay float (as with ONNX), where 8 bits cost most of the accuracy and save little time.
STATIC_OPS = ("linear", "addmm", "conv", "conv_relu")
CUSTOM_PREFIX = "CUSTOM:"


def tflite_op_counts(path: Path | str) -> dict[str, int]:
    """Operators in every subgraph of the flatbuffer, by builtin name or ``CUSTOM:<code>``.

    Parsed with the TFLite flatbuffer schema that ai-edge-litert ships, so nothing is allocated
    or run. Flex (TensorFlow) ops are custom ops whose code starts with ``Flex``.
    """
    from ai_edge_litert import schema_py_generated as schema

    builtin_names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(bytearray(Path(path).read_bytes()), 0)

    def name_of(operator) -> str:
        code = model.operatorCodes[operator.opcodeIndex]
        # Codes above 127 live only in builtinCode; older files use deprecatedBuiltinCode.
        name = builtin_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN")
        if name == "CUSTOM":
            custom = code.customCode
            name = CUSTOM_PREFIX + (custom.decode() if isinstance(custom, bytes) else str(custom))
        return name

    return count_ops(name_of(op) for subgraph in model.subgraphs or [] for op in subgraph.operators or [])


def delegation_report(path: Path) -> Delegation:
    ops = tflite_op_counts(path)
    fallback = {name: count for name, count in ops.items() if name.startswith(CUSTOM_PREFIX) or name == "UNKNOWN"}
    return delegation_from_ops("litert-builtin", ops, fallback)


def tflite_io_specs(path: Path, component: Component) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Read the signature's tensors back from the written file, in the component's declared order."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner(SIGNATURE_KEY)

    def specs(details: dict, declared: list[TensorSpec], kind: str) -> list[TensorSpec]:
        names = [spec.name for spec in declared]
        if sorted(details) != sorted(names):
            raise RuntimeError(f"the .tflite signature has {kind} {sorted(details)} where {names} were declared")
        result = []
        for spec in declared:
            detail = details[spec.name]
            dtype = np.dtype(detail["dtype"]).name
            if np.issubdtype(np.dtype(spec.dtype), np.floating) and not np.issubdtype(np.dtype(dtype), np.floating):
                # A quantize op folded into the model boundary: callers would have to quantize.
                raise RuntimeError(f"the converter made {kind[:-1]} '{spec.name}' {dtype} where float was declared")
            result.append(TensorSpec(name=spec.name, shape=[int(d) for d in detail["shape"]], dtype=dtype))
        return result

    return (
        specs(runner.get_input_details(), component.inputs, "inputs"),
        specs(runner.get_output_details(), component.outputs, "outputs"),
    )


def _named_io(component: Component, module=None):
    """Wrap the module so the converted signature carries the declared input and output names."""
    import torch

    input_names = [spec.name for spec in component.inputs]
    output_names = [spec.name for spec in component.outputs]

    class NamedIO(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **inputs):
            result = self.module(*(inputs[name] for name in input_names))
            results = result if isinstance(result, tuple) else (result,)
            return dict(zip(output_names, results, strict=True))

    return NamedIO(component.module if module is None else module).eval()


def _float_boundary_quantizer(ops: tuple[str, ...], float_layers: tuple[str, ...] = (), qat: bool = False):
    """litert-torch's PT2E quantizer on ``ops`` except inside ``float_layers`` (module names: a
    mixed-precision choice), fake-quant if ``qat`` (LiteRT's QAT scheme), with two guards.

    Integer tensors get no observers (a histogram of int64 timestep arithmetic fails), and
    neither the model's inputs nor its outputs are quantized: the converter would otherwise
    fold the boundary quantize/dequantize into int8 model I/O that callers must quantize.
    """
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    def is_float(node) -> bool:
        value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
        return isinstance(value, torch.Tensor) and value.dtype.is_floating_point

    layout_ops = ("transpose", "permute", "view", "reshape", "unsqueeze", "squeeze", "expand", "clone", "contiguous", "_to_copy", "aten.to.")

    def reads_a_model_input(node) -> bool:
        # An input seen through layout-only ops (SCMAN's summary reads the transposed context)
        # or a concatenation (SDXL's text_embeds beside its time embeddings): quantizing there,
        # the converter moves the quantize onto the model input itself.
        if node.op == "placeholder":
            return True
        if node.op != "call_function":
            return False
        if any(name in str(node.target) for name in layout_ops) and node.args and isinstance(node.args[0], torch.fx.Node):
            return reads_a_model_input(node.args[0])
        if any(name in str(node.target) for name in ("aten.cat", "aten.concat")):
            return any(reads_a_model_input(source) for source in node.args[0] if isinstance(source, torch.fx.Node))
        return False

    def shares_an_input(spec) -> bool:
        # A view-like op (reshape, pooling, a concatenation) shares its input's qparams; on a
        # model input, even seen through layout ops, that would quantize the input itself, so
        # such an op stays float.
        if type(spec).__name__ != "SharedQuantizationSpec":
            return False
        edge = spec.edge_or_node
        source = edge[0] if isinstance(edge, tuple) else edge
        return isinstance(source, torch.fx.Node) and reads_a_model_input(source)

    def feeds_an_output(node) -> bool:
        # Through layout-only ops (a DiT's unpatchify: squeeze, reshape, an einsum permutation,
        # the learned-sigma slice) the converter carries a quantized type on to the model output.
        for user in node.users:
            if user.op == "output":
                return True
            seen_through = layout_ops + ("slice", "einsum")
            if user.op == "call_function" and any(name in str(user.target) for name in seen_through) and feeds_an_output(user):
                return True
        return False

    def arrives_quantized(node) -> bool:
        # An output the quantizer annotated, seen through layout-only ops.
        annotation = node.meta.get("quantization_annotation")
        if annotation is not None and annotation.output_qspec is not None:
            return True
        if node.op == "call_function" and any(name in str(node.target) for name in layout_ops) and node.args and isinstance(node.args[0], torch.fx.Node):
            return arrives_quantized(node.args[0])
        return False

    def annotate_concatenations(model, spec) -> None:
        # LiteRT's CONCATENATION takes one scale for all its inputs and its output, and the
        # converter makes a concatenation int8 as soon as one input arrives quantized (a UNet's
        # skip connection from a quantized convolution): it then requantizes the float inputs to
        # that input's scale, clipping them (measured: the embedded student's int8 denoiser at
        # 27 dB, 44 dB with the fix). One observer over every input gives the scale covering them
        # all, so the simulated graph and the converted one agree. (litert-torch's own "cat"
        # annotator finds no concatenation in a non-strict export: it matches source_fn_stack.)
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

        for node in model.graph.nodes:
            if node.op != "call_function" or node.target not in (torch.ops.aten.cat.default, torch.ops.aten.concat.default):
                continue
            sources = [source for source in node.args[0] if isinstance(source, torch.fx.Node)]
            if "quantization_annotation" in node.meta or len(sources) != len(node.args[0]) or not is_float(node):
                continue
            if not all(is_float(source) for source in sources) or any(reads_a_model_input(source) for source in sources) or feeds_an_output(node):
                continue
            if not any(arrives_quantized(source) for source in sources):
                continue  # an all-float concatenation stays float (and cannot quantize one after it)
            shared = SharedQuantizationSpec((sources[0], node))
            input_specs = {sources[0]: spec}  # an input given twice (cat([x, x])) is observed once
            for source in sources[1:]:
                input_specs.setdefault(source, shared)
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map=input_specs,
                output_qspec=shared,
                _annotated=True,
            )

    def keep_float(model) -> None:
        from edgegen.exporting.sensitivity import in_float_layers

        for node in model.graph.nodes:
            if "quantization_annotation" in node.meta and node.op == "call_function" and in_float_layers(node, float_layers):
                del node.meta["quantization_annotation"]

        drop_orphaned_shared_specs(model)

    def one_scale_through_pads(model) -> None:
        # LiteRT's PAD keeps its input's scale, so the converter moves a quantization after a
        # zero pad onto the padded tensor itself. A UNet's skip tensor is both padded (for the
        # next strided convolution) and concatenated in the up path: two observers, two scales,
        # and the converter refuses the concatenation ("same scale constraint"). Calibrated
        # graphs passed by luck of the ranges (the cat's other input inside the skip's); QAT's
        # moving averages drift apart in a few steps. Every quantized use of a tensor, seen
        # through zero pads, shares one observer.
        from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

        pads = (torch.ops.aten.pad.default, torch.ops.aten.constant_pad_nd.default)

        def is_zero_pad(node) -> bool:
            if node.op != "call_function" or node.target not in pads:
                return False
            if node.target == torch.ops.aten.constant_pad_nd.default:  # (input, pad, value=0)
                mode, value = "constant", node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0)
            else:  # aten.pad: (input, pad, mode="constant", value=None)
                mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
                value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
            return mode == "constant" and not value

        def quantized_edges(node) -> list:
            edges = []
            for user in node.users:
                annotation = user.meta.get("quantization_annotation")
                if annotation is not None and node in annotation.input_qspec_map:
                    edges.append((node, user))
            return edges

        order = {node: index for index, node in enumerate(model.graph.nodes)}
        for node in model.graph.nodes:
            padded = [user for user in node.users if is_zero_pad(user) and "quantization_annotation" not in user.meta]
            if not padded or not is_float(node):
                continue
            through_pads = [edge for pad in padded for edge in quantized_edges(pad)]
            if not through_pads:
                continue
            output = node.meta.get("quantization_annotation")
            if output is not None and output.output_qspec is not None:
                edges, root = through_pads, node  # already quantized at its output: the pads' readers share that
            else:
                # The group's first member in graph order must own the observer (torchao creates
                # it there); a concatenation's group joins through its own root edge.
                edges = quantized_edges(node) + through_pads
                for source, user in list(edges):
                    spec = user.meta["quantization_annotation"].input_qspec_map[source]
                    if type(spec).__name__ == "SharedQuantizationSpec" and isinstance(spec.edge_or_node, tuple) and spec.edge_or_node not in edges:
                        edges.append(spec.edge_or_node)
                if len(edges) < 2:
                    continue
                root = min(edges, key=lambda edge: order[edge[1]])
            for source, user in edges:
                if (source, user) != root:
                    user.meta["quantization_annotation"].input_qspec_map[source] = SharedQuantizationSpec(root)

    class FloatBoundaryQuantizer(PT2EQuantizer):
        STATIC_OPS = list(ops)
        STATIC_QAT_ONLY_OPS = []  # batch-norm folding patterns: no diffusion model has one to fold

        def annotate(self, model):
            model = super().annotate(model)
            annotate_weight_sharing_convolutions(model)
            if float_layers:
                keep_float(model)
            annotate_concatenations(model, self.global_config.input_activation)
            for node in model.graph.nodes:
                annotation = node.meta.get("quantization_annotation")
                if annotation is None:
                    continue
                if not is_float(node) or feeds_an_output(node) or shares_an_input(annotation.output_qspec):
                    annotation.output_qspec = None
                for source, spec in list(annotation.input_qspec_map.items()):
                    # A spec shared with an output kept float above would have nothing to share.
                    shares_a_float_output = type(spec).__name__ == "SharedQuantizationSpec" and feeds_an_output(source)
                    if not is_float(source) or reads_a_model_input(source) or shares_a_float_output:
                        del annotation.input_qspec_map[source]
            one_scale_through_pads(model)
            return model

    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    if qat:
        config = _calibrated_activations(config)
    return FloatBoundaryQuantizer().set_global(config)


def _calibrated_activations(config):
    """A QAT config whose activation fake-quant observes as calibration does (a histogram that
    clips outliers) instead of a moving min/max.

    The QAT trainer calibrates these on the export's input distribution, then freezes them and
    trains the weights against the ranges: starting from what post-training int8 reaches. Started
    from moving min/max, the embedded student's one-call program was 29.9 dB from float before
    any step (calibrated int8: 41.5 dB) and training did not win it back.
    """
    import dataclasses

    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.observer import HistogramObserver

    activation = dataclasses.replace(
        config.input_activation, observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=HistogramObserver, eps=2**-12)
    )
    return dataclasses.replace(config, input_activation=activation, output_activation=activation)


def _int8_ready(module):
    """``module`` (named I/O) as LiteRT's int8 graphs are made from, and the rewrites applied."""
    from edgegen.exporting.rewrites import explicit_padding_for_strided_convs, sharing_weights_copy

    # On a copy: the module is shared with the pipeline (the padding is moved, not changed).
    module = sharing_weights_copy(module)
    return module, explicit_padding_for_strided_convs(module)


def prepare_litert_fake_quant(component: Component):
    """``component`` as LiteRT's QAT graph: the static int8 graph this exporter converts, with
    fake-quant where it quantizes and one scale across each concatenation's and pad's inputs.

    Named inputs in, a dict of named outputs out. Its parameters are the component's tensors.
    """
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from edgegen.exporting.quantize import integer_ops_left_float, zero_uninitialised

    module, _ = _int8_ready(_named_io(component))
    kwargs = {spec.name: component.reference_inputs[spec.name] for spec in component.inputs}
    graph = torch.export.export(module, (), kwargs, strict=False).module()
    return prepare_qat_pt2e(integer_ops_left_float(zero_uninitialised(graph)), _float_boundary_quantizer(STATIC_OPS, qat=True))


def _static_int8(module, kwargs: dict, component: Component, float_layers: tuple[str, ...] = ()):
    """PT2E: annotate, calibrate on the component's calibration sets, convert to Q/DQ form."""
    import torch
    from litert_torch.quantize.quant_config import QuantConfig

    quantizer = _float_boundary_quantizer(STATIC_OPS, float_layers)
    names = [spec.name for spec in component.inputs]
    graph = torch.export.export(module, (), kwargs).module()
    # fold_quantize=False keeps the weights' quantize ops for the converter to fold, as litert-torch's own tests do.
    converted = quantize_static(graph, quantizer, component.calibration, names, keyword=True, fold_quantize=False)
    return converted, QuantConfig(pt2e_quantizer=quantizer)


def _quant_config(scheme: str):
    from litert_torch.generative.quantize import quant_recipes

    if scheme == "int8-dynamic":
        return quant_recipes.full_dynamic_recipe()
    if scheme == "int8-weights":
        return quant_recipes.full_weight_only_recipe()
    raise ValueError(f"unsupported TFLite quantization {scheme}")


QUANTIZATION_DETAILS = {
    "int8": {
        "tool": "litert-torch PT2EQuantizer (torchao PT2E), static",
        "weights": "int8 symmetric per-channel",
        "activations": "int8 per-tensor, calibrated; model inputs/outputs stay float",
        "ops": list(STATIC_OPS),
    },
    "int8-dynamic": {
        "tool": "litert-torch full_dynamic_recipe (ai-edge-quantizer)",
        "weights": "int8 per-channel",
        "activations": "int8, ranges computed at run time",
    },
    "int8-weights": {
        "tool": "litert-torch full_weight_only_recipe (ai-edge-quantizer)",
        "weights": "int8 per-channel, dequantized to float at run time",
        "activations": "float32",
    },
}


FLOAT16_DETAILS = {
    "tool": "litert-torch full_fp16_recipe (ai-edge-quantizer)",
    "weights": "float16",
    "activations": "float16 on the GPU delegate, float32 on the CPU",
}


class TfliteExporter:
    name = "tflite"
    backends: tuple[str, ...] = ()
    quantizations = ("none", "int8", "int8-dynamic", "int8-weights")
    mixed_precision = True  # --quantize auto: int8 with chosen weighted layers kept float
    packages = ("litert-torch", "ai-edge-litert")
    separate_weights = False  # the weights are inside the .tflite flatbuffer
    learned_scheme = LITERT_QAT  # the QAT scheme whose learned scales this exporter lowers
    prepare_fake_quant = staticmethod(prepare_litert_fake_quant)  # that scheme's graph, for the trainer

    def unavailable_reason(self) -> str | None:
        return missing_packages(self.packages, "tflite")

    def export(self, component: Component, folder: Path, options: ExportOptions) -> ExportedModel:
        import litert_torch
        import torch

        float16 = options.load.dtype == "float16"
        # LiteRT converts float32 graphs; its float16 recipe stores the weights in float16, which
        # the GPU delegate computes in and the CPU widens to float32 once, at load.
        module = _named_io(component, in_float32(component.module) if float16 else None)
        kwargs = {spec.name: component.reference_inputs[spec.name] for spec in component.inputs}
        quantization, quant_config = Quantization(), None
        if float16:
            from litert_torch.generative.quantize import quant_recipes

            quant_config = quant_recipes.full_fp16_recipe()
            quantization = Quantization(scheme="none", details=FLOAT16_DETAILS)
        rewrites = []
        learned = learned_int8_module(component, LITERT_QAT, fold_quantize=False) if options.quantize == "int8" else None
        if learned is not None:
            # A student trained with LiteRT's QAT scheme (edgegen train qat scheme=litert):
            # its fake-quant graph is this exporter's own int8 graph, converted as trained.
            from litert_torch.quantize.quant_config import QuantConfig

            rewrites = _int8_ready(module)[1]  # the graph was made from the rewritten module
            module = learned
            quant_config = QuantConfig(pt2e_quantizer=_float_boundary_quantizer(STATIC_OPS, qat=True))
            quantization = learned_scales_quantization(**QUANTIZATION_DETAILS["int8"])
        elif options.quantize == "int8":
            module, rewrites = _int8_ready(module)
            module, quant_config = _static_int8(module, kwargs, component, options.float_layers)
        elif options.quantize != "none":
            quant_config = _quant_config(options.quantize)
        if options.quantize != "none" and learned is None:
            details = dict(QUANTIZATION_DETAILS[options.quantize])
            if options.quantize == "int8":
                details["calibration_sets"] = len(component.calibration)
                # XNNPACK's QAT scheme gives a concatenation's inputs their own scales, which
                # LiteRT's converter refuses; this export calibrates instead, and its manifest
                # records how far it lands from the fake-quant model the student was trained as.
                details.update(learned_scales_elsewhere(component, LITERT_QAT))
            quantization = Quantization(scheme=options.quantize, details=details)
        path = folder / MODEL_FILE
        # ai-edge-quantizer prints a size and timing report to stdout, which is the CLI's (--json),
        # and progress bars it takes no switch for to stderr.
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            litert_torch.convert(module, (), sample_kwargs=kwargs, quant_config=quant_config).export(str(path))
        inputs, outputs = tflite_io_specs(path, component)
        return ExportedModel(
            model_file=MODEL_FILE, inputs=inputs, outputs=outputs, quantization=quantization,
            delegation=delegation_report(path), min_psnr_db=min_psnr_db(options.quantize), graph_rewrites=rewrites,
        )


EXPORTER = TfliteExporter()
