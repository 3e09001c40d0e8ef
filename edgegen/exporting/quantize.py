"""The one PT2E int8 path: quantizer, prepare -> calibrate -> convert, and QAT checkpoints' learned scales.

Every exporter that quantizes through torchao's PT2E (ExecuTorch, LiteRT) calls
``quantize_static``; a quantization-aware student (``edgegen train distill qat=true``) is rebuilt
here as the fake-quant graph it was trained as (``fake_quant_module``) and converted with its own
learned scales (``learned_int8_module``). The contract of every exporter that quantizes to int8:
ask ``learned_int8_module`` first and lower its graph, recording ``learned_scales_quantization()``,
or, where the converter cannot take it, calibrate and record ``learned_scales_not_lowered(why)``.

A QAT student trains its denoiser as a PT2E graph with XNNPACK's symmetric int8 fake-quant
(per-channel weights, per-tensor activations). Its folder holds the trained float weights as
usual plus ``unet/qat.safetensors``: the prepared graph's whole state, learned scales and zero
points included. Export -> prepare_qat_pt2e is deterministic for a given module, so the same
graph is rebuilt here and that state loaded into it.

Two graph passes guard diffusers models. diffusers' plain attention passes ``torch.empty(...)`` to
``baddbmm`` with ``beta=0``; ``convert_pt2e`` constant-folds that into a frozen tensor of whatever
the memory held, and the decomposed ``beta * input`` is then ``0 * garbage``: NaN wherever the
garbage was NaN or Inf, and a different constant in every export. ``zero_uninitialised`` runs on
every graph before it is prepared, so it folds to zeros every time; ``drop_zero_baddbmm_inputs``
runs on a converted graph that is written out as it is (ONNX QDQ), so the zeros are not stored.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgegen.errors import EdgegenError, first_line
from edgegen.schema.checkpoint import QAT_SCHEMES, QatState
from edgegen.schema.manifest import Quantization

if TYPE_CHECKING:
    from edgegen.families import Component

QAT_STATE_FILENAME = "qat.safetensors"  # inside the trained component's subfolder (unet/, vae/, ...)
XNNPACK_QAT = QatState.model_fields["scheme"].default  # ExecuTorch and ONNX Runtime lower it
LITERT_QAT = QAT_SCHEMES["litert"]
# Quantization details of an export that lowered the checkpoint's own scales.
LEARNED_SCALES = {"source": "checkpoint (QAT)", "recalibrated": False}


@dataclass(frozen=True)
class LearnedScales:
    """A QAT checkpoint's int8 fake-quant state: what exporters lower instead of calibrating."""

    scheme: str  # one of QAT_SCHEMES' values
    state_path: Path  # e.g. <student>/unet/qat.safetensors
    timesteps: list[int] | None = None  # a one-call program's: the schedule it was learned on
    guidance_scale: float | None = None


def other_program(component: Component) -> str | None:
    """Why ``component``'s learned scales do not describe it: a one-call program learned on other
    timesteps or guidance (its graph differs). None when they do, or it has none."""
    source = component.quantization_source
    if source is None or component.program is None or source.timesteps is None:
        return None
    program = component.program
    if list(source.timesteps) == list(program.timesteps) and source.guidance_scale == program.guidance_scale:
        return None
    return (
        f"learned for the program on timesteps {list(source.timesteps)} at guidance {source.guidance_scale:g}; "
        f"this one runs {list(program.timesteps)} at {program.guidance_scale:g}"
    )


def xnnpack_quantizer(qat: bool = False, float_layers: Sequence[str] = ()) -> Any:
    """XNNPACK's symmetric int8: per-channel weights, per-tensor activations; fake-quant if ``qat``.

    Calibrated (not QAT) graphs quantize the weight-carrying layers (linear, conv, and a ReLU
    fused into them) and leave additions, products and concatenations float, as the ONNX and
    LiteRT int8 exports do: quantizing every residual add and modulation product cost the tiny
    test denoisers 7 to 18 dB of parity (SD's UNet 30.3 -> 39.8 dB, PixArt's transformer 26.2 ->
    42.8) for no saving in size (benchmarks/int8_scope.py). They also share quantization
    parameters through every shape-only op (``shared_through_shape_ops``). A QAT checkpoint's
    state is the prepared graph's observers, so its quantizer stays as its students were trained.
    ``float_layers`` (module names) stay float: a mixed-precision choice.
    """
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)

    class EveryConvolutionQuantizer(XNNPACKQuantizer):
        def annotate(self, model: Any) -> Any:
            return annotate_weight_sharing_convolutions(super().annotate(model))

    if qat:
        return EveryConvolutionQuantizer().set_global(config)

    class WeightedLayersQuantizer(EveryConvolutionQuantizer):
        def annotate(self, model: Any) -> Any:
            # XNNPACK's concatenation annotator takes no filter, so a concatenation stays int8
            # between float layers too (left float, the embedded student's mixed program failed
            # in XNNPACK at run time); --quantize auto's parity check accounts for it.
            return shared_through_shape_ops(super().annotate(model))

    aten = torch.ops.aten
    weighted = {
        aten.linear.default, aten.addmm.default, aten.conv1d.default, aten.conv1d.padding, aten.conv2d.default,
        aten.conv2d.padding, aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.relu.default,
    }
    # The conv annotator asks the filter about the weight and bias nodes of its match too.
    from edgegen.exporting.sensitivity import in_float_layers

    return WeightedLayersQuantizer().set_global(config).set_filter_function(
        lambda node: node.op != "call_function" or (node.target in weighted and not in_float_layers(node, float_layers))
    )


def annotate_weight_sharing_convolutions(graph_module: Any) -> Any:
    """``graph_module``'s annotations with every convolution that reads an annotated convolution's
    weight given that sibling's specs, in place.

    The XNNPACK and litert-torch convolution annotators match subgraphs that may not overlap, and
    two convolutions reading one weight overlap in it: a one-call program's denoiser, unrolled
    once per step, kept one step's convolutions float (LiteRT stored a float32 copy of each
    weight: a 2-step int8 program of 2.5 MB where 1 step is 1.1, 1.6 with this).
    """
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    convolutions = (torch.ops.aten.conv2d.default, torch.ops.aten.conv1d.default)
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target not in convolutions or "quantization_annotation" in node.meta:
            continue
        sibling = next(
            (user for user in node.args[1].users if user is not node and user.target == node.target and "quantization_annotation" in user.meta),
            None,
        )
        if sibling is None:
            continue
        annotation = sibling.meta["quantization_annotation"]
        specs = {}
        for mine, theirs in zip(node.args[:3], sibling.args[:3], strict=False):
            spec = annotation.input_qspec_map.get(theirs)
            if isinstance(mine, torch.fx.Node) and spec is not None and type(spec).__name__ != "SharedQuantizationSpec":
                specs[mine] = spec
        output = annotation.output_qspec if type(annotation.output_qspec).__name__ != "SharedQuantizationSpec" else None
        node.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=specs, output_qspec=output, _annotated=True)
    return graph_module


def drop_orphaned_shared_specs(graph_module: Any) -> None:
    """Forget every annotation that shares the parameters of a node left unannotated (a layer kept
    float), in place: prepare_pt2e would fail on it ("KeyError: cat_1")."""

    def orphaned(spec: Any) -> bool:
        if type(spec).__name__ != "SharedQuantizationSpec":
            return False
        edge = spec.edge_or_node
        source = edge[1] if isinstance(edge, tuple) else edge
        return "quantization_annotation" not in source.meta

    changed = True
    while changed:  # a shared spec can share with one that was orphaned in turn
        changed = False
        for node in graph_module.graph.nodes:
            annotation = node.meta.get("quantization_annotation")
            if annotation is None:
                continue
            if annotation.output_qspec is not None and orphaned(annotation.output_qspec):
                annotation.output_qspec, changed = None, True
            for source, spec in list(annotation.input_qspec_map.items()):
                if orphaned(spec):
                    del annotation.input_qspec_map[source]
                    changed = True
            if annotation.output_qspec is None and not annotation.input_qspec_map:
                del node.meta["quantization_annotation"]
                changed = True


def shared_through_shape_ops(graph_module: Any) -> Any:
    """``graph_module``'s annotations with each shape-only op sharing its input's int8 parameters.

    XNNPACK runs a quantized reshape only with the same scale and zero point on both sides
    (``xnn_define_static_reshape``), and its quantizer shares them through ``view``, ``reshape``,
    ``permute``, ``slice``, ``squeeze.dim`` and ``flatten`` only. Any other shape op between two
    quantized ops got the consumer's parameters on its output: Flux's ``unflatten`` of the
    attention heads and the rotary embedding's ``unsqueeze`` then failed when the program loaded
    ("Failed to create squeeze node ... xnn_status_invalid_parameter"). Requantizing through a
    reshape only loses precision, so sharing is also the more faithful choice.
    """
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    aten = torch.ops.aten
    shape_ops = {
        aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.unflatten.int,
        aten.flatten.using_ints, aten.unsqueeze.default, aten.squeeze.default, aten.squeeze.dim,
        aten.squeeze.dims, aten.permute.default, aten.transpose.int, aten.t.default, aten.movedim.int,
        aten.slice.Tensor, aten.select.int, aten.expand.default, aten.clone.default,
    }
    for node in graph_module.graph.nodes:  # in order: a chain of shape ops shares one set
        if node.op != "call_function" or node.target not in shape_ops or not isinstance(node.args[0], torch.fx.Node):
            continue
        source = node.args[0]
        annotation = source.meta.get("quantization_annotation")
        if annotation is None or annotation.output_qspec is None:
            continue
        existing = node.meta.get("quantization_annotation")
        if existing is not None and existing._annotated:
            continue
        shared = SharedQuantizationSpec(source)
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={source: shared}, output_qspec=shared, _annotated=True
        )
    return graph_module


def quantize_static(
    graph_module: Any,
    quantizer: Any,
    batches: Iterable[dict[str, Any]],
    input_names: Sequence[str],
    keyword: bool = False,
    fold_quantize: bool = True,
) -> Any:
    """PT2E prepare -> calibrate on ``batches`` -> convert, of an exported ``graph_module``.

    Each batch maps input names to tensors; the module takes ``input_names`` positionally, or by
    name when ``keyword``. ``fold_quantize=False`` keeps the weights' quantize ops in the graph
    (for a converter that folds them itself).
    """
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(integer_ops_left_float(zero_uninitialised(graph_module)), quantizer)
    with torch.no_grad():
        for batch in batches:
            if keyword:
                prepared(**{name: batch[name] for name in input_names})
            else:
                prepared(*(batch[name] for name in input_names))
    return convert_pt2e(prepared, fold_quantize=fold_quantize)


def prepare_fake_quant(module: Any, example_args: tuple) -> Any:
    """``module`` as a PT2E graph with XNNPACK int8 fake-quant inserted, ready to train."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    program = torch.export.export(module, example_args, strict=False)
    return prepare_qat_pt2e(integer_ops_left_float(zero_uninitialised(program.module())), xnnpack_quantizer(qat=True))


def fake_quant_graph(component: Component, scheme: str) -> Any:
    """``component`` as the fake-quant graph of ``scheme``, ready to train (its parameters are the
    component's own tensors, so training it trains the pipeline's weights).

    XNNPACK's graph takes the component's inputs positionally; LiteRT's is the graph its exporter
    converts (named inputs in, a dict of named outputs out): call either through
    ``positional_call``.
    """
    if scheme == XNNPACK_QAT:
        return prepare_fake_quant(component.module, component.example_args())
    from edgegen.registry import EXPORTERS

    # A target whose converter needs its own int8 graph (LiteRT) makes it: it declares the scheme.
    for name in EXPORTERS.names():
        exporter = EXPORTERS.get(name)
        if getattr(exporter, "learned_scheme", None) == scheme:
            return exporter.prepare_fake_quant(component)
    raise EdgegenError(f"unknown learned quantization scheme '{scheme}'; this edgegen reads {', '.join(QAT_SCHEMES.values())}")


def calibrate_then_freeze_activations(graph: Any, model: Any, input_sets: Iterable[Sequence[Any]]) -> int:
    """Observe ``input_sets`` through ``model`` (``graph`` called positionally), then freeze every
    activation's fake-quant at the ranges seen; weights' fake-quant keeps observing as they train.

    Training then moves the weights against the ranges an int8 export calibrates, from where
    post-training int8 starts. Returns the number of activation fake-quant modules frozen.
    """
    import torch

    with torch.no_grad():
        for inputs in input_sets:
            model(*inputs)
    frozen = set()
    for node in graph.graph.nodes:
        module = graph.get_submodule(node.target) if node.op == "call_module" else None
        if not hasattr(module, "disable_observer"):
            continue
        source = node.args[0] if node.args else None
        if isinstance(source, torch.fx.Node) and source.op == "get_attr":
            continue  # a weight's
        if id(module) not in frozen:
            module.disable_observer()
            frozen.add(id(module))
    return len(frozen)


def positional_call(graph: Any, component: Component, scheme: str) -> Any:
    """``graph`` (from ``fake_quant_graph``) called as the component's module is: inputs in
    declared order, one tensor or a tuple out."""
    if scheme == XNNPACK_QAT:
        return graph
    import torch

    names, outputs = [spec.name for spec in component.inputs], [spec.name for spec in component.outputs]

    class Positional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.named = graph

        def forward(self, *args: Any) -> Any:
            result = self.named(**dict(zip(names, args, strict=True)))
            return result[outputs[0]] if len(outputs) == 1 else tuple(result[name] for name in outputs)

    return Positional()


# Rebuilding costs an export and a prepare: once per component object, which an int8 export
# needs twice (as the parity reference and to convert).
_FAKE_QUANT_CACHE: dict[int, Any] = {}


def fake_quant_module(component: Component) -> Any | None:
    """The fake-quant model a QAT component was trained as (eval mode), called as the component's
    module is, or None without learned scales."""
    graph = _trained_graph(component)
    return None if graph is None else positional_call(graph, component, component.quantization_source.scheme)


def _trained_graph(component: Component) -> Any | None:
    source = component.quantization_source
    if source is None or other_program(component) is not None:
        return None
    key = id(component)
    if key not in _FAKE_QUANT_CACHE:
        _FAKE_QUANT_CACHE[key] = _load_fake_quant(component, source)
        weakref.finalize(component, _FAKE_QUANT_CACHE.pop, key, None)
    return _FAKE_QUANT_CACHE[key]


def _load_fake_quant(component: Component, source: LearnedScales) -> Any:
    import torch
    from safetensors.torch import load_file

    if source.scheme not in QAT_SCHEMES.values():
        raise EdgegenError(f"unknown learned quantization scheme '{source.scheme}'; this edgegen reads {', '.join(QAT_SCHEMES.values())}")
    path = Path(source.state_path)
    if not path.is_file():
        raise EdgegenError(f"{path.parent.parent} is not a QAT student: {path} is missing")
    prepared = fake_quant_graph(component, source.scheme)
    try:
        state = load_file(str(path))
    except Exception as error:  # safetensors raises several types for truncated or foreign files
        raise EdgegenError(f"cannot read the QAT state {path}: {first_line(error)}") from None
    expected = set(prepared.state_dict())
    if set(state) != expected:
        raise EdgegenError(f"{path} does not match this student's fake-quant graph ({len(set(state) ^ expected)} keys differ)")
    prepared.load_state_dict(state, strict=True)
    for module in prepared.modules():  # observers would move the learned ranges at inference
        if hasattr(module, "disable_observer"):
            module.disable_observer()
    with torch.no_grad():
        positional_call(prepared, component, source.scheme)(*component.example_args())
    return prepared


def learned_int8_module(component: Component, scheme: str = XNNPACK_QAT, fold_quantize: bool = True) -> Any | None:
    """The QAT component converted to int8 quantize/dequantize form with its learned scales.

    None when the component has no learned scales of ``scheme``: the exporter calibrates instead
    (recording ``learned_scales_elsewhere`` when it has another scheme's). Every int8 exporter
    asks this first; one that lowers the result records ``learned_scales_quantization()``.
    """
    source = component.quantization_source
    if source is None or source.scheme != scheme or other_program(component) is not None:
        return None
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    # The cached fake-quant graph stays as it is (it is the parity reference).
    return convert_pt2e(copy.deepcopy(_trained_graph(component)), fold_quantize=fold_quantize)


def learned_scales_elsewhere(component: Component, scheme: str) -> dict[str, str]:
    """Quantization details for an int8 export lowering ``scheme`` of a component whose learned
    scales are another scheme's (empty when it has none, or these)."""
    source = component.quantization_source
    if source is None:
        return {}
    mismatch = other_program(component)
    if mismatch is not None:
        return learned_scales_not_lowered(mismatch)
    if source.scheme == scheme:
        return {}
    hint = next(name for name, value in QAT_SCHEMES.items() if value == scheme)
    return learned_scales_not_lowered(f"learned as {source.scheme}, this target lowers {scheme} (edgegen train qat scheme={hint})")


def learned_scales_quantization(**details: Any) -> Quantization:
    """The manifest's quantization record of an export that lowered ``learned_int8_module``."""
    return Quantization(scheme="int8", details={**LEARNED_SCALES, **details})


def learned_scales_not_lowered(reason: str) -> dict[str, str]:
    """Quantization details of an int8 export of a QAT component that calibrated instead, and why."""
    return {"qat_scales": f"not lowered: {reason}; recalibrated"}


def integer_ops_left_float(graph_module: Any) -> Any:
    """``graph_module`` with the ops that compute on integer tensors kept out of quantization.

    Two things in the XNNPACK quantizer assume every ``add``/``mul`` is float: it turns a scalar
    operand into a float32 tensor constant (Gemma-2's integer position ids, ``arange + offset``,
    then came out float and the rotary embedding's dtype assertion refused them), and it
    annotates by op type alone. Integer ``add``/``mul`` with a scalar take their ``.Scalar``
    overload (the same arithmetic, which it leaves alone), and every integer op is marked as
    annotated already, so that no observer is put on it.
    """
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    aten = torch.ops.aten
    scalar_overloads = {aten.add.Tensor: aten.add.Scalar, aten.mul.Tensor: aten.mul.Scalar}

    def integer(value: Any) -> bool:
        return isinstance(value, torch.Tensor) and not value.dtype.is_floating_point

    changed = False
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or not integer(node.meta.get("val")):
            continue
        if node.target in scalar_overloads and len(node.args) == 2 and not isinstance(node.args[1], torch.fx.Node):
            node.target = scalar_overloads[node.target]
            changed = True
        if all(integer(arg.meta.get("val")) for arg in node.all_input_nodes if "val" in arg.meta):
            node.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
    if changed:
        graph_module.recompile()
    return graph_module


def zero_uninitialised(graph_module: Any) -> Any:
    """``graph_module`` with every ``aten.empty`` made ``aten.zeros`` (same size, dtype, device)."""
    import torch

    changed = False
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.empty.memory_format:
            node.target = torch.ops.aten.zeros.default
            node.kwargs = {key: value for key, value in node.kwargs.items() if key != "memory_format"}
            changed = True
    if changed:
        graph_module.recompile()
    return graph_module


def drop_zero_baddbmm_inputs(graph_module: Any) -> Any:
    """Every ``baddbmm(input, a, b, beta=0, alpha=s)`` as ``bmm(a, b) * s``, in a converted graph.

    After ``convert_pt2e`` the attention's ``input`` is a frozen (heads, tokens, tokens) constant
    that torch.onnx keeps as an initializer and multiplies by zero: megabytes of zeros in the file.
    """
    import torch

    aten = torch.ops.aten
    graph = graph_module.graph
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != aten.baddbmm.default or node.kwargs.get("beta", 1) != 0:
            continue
        batch1, batch2 = node.args[1], node.args[2]
        alpha = node.kwargs.get("alpha", 1)
        with graph.inserting_before(node):
            replacement = graph.call_function(aten.bmm.default, (batch1, batch2))
            replacement.meta = dict(node.meta)
            if alpha != 1:
                replacement = graph.call_function(aten.mul.Tensor, (replacement, alpha))
                replacement.meta = dict(node.meta)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        changed = True
    if changed:
        graph.eliminate_dead_code()
        graph_module.recompile()
    return graph_module
