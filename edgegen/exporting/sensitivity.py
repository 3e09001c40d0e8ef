"""Where int8 costs a component its accuracy, layer by layer, and the cheapest mix that meets a budget.

Every int8 export here quantizes the weighted layers (linear and convolution: per-channel
symmetric int8 weights, per-tensor int8 inputs calibrated on the component's calibration sets).
The analysis simulates exactly that in eager PyTorch, one layer at a time: the component's output
PSNR against float when that layer alone is quantized, and when every layer but it is. The first
says how fragile a layer is; the second, what keeping it float buys back in the int8 model.

``choose_float_layers`` then keeps layers in float, best gain per parameter first, until the
simulated PSNR meets ``--min-psnr``; the exporter lowers that mix and its real parity gate has
the last word (``edgegen.exporting.orchestration`` widens the float set when the converted
program falls short of the simulation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgegen.families import Component


@dataclass(frozen=True)
class LayerSensitivity:
    name: str  # the module's qualified name inside the component
    kind: str  # linear | conv
    parameters: int
    alone_int8_psnr_db: float  # output PSNR vs float with only this layer quantized
    alone_float_psnr_db: float  # output PSNR vs float with every weighted layer but this one quantized


@dataclass(frozen=True)
class SensitivityReport:
    all_int8_psnr_db: float
    layers: list[LayerSensitivity]

    def as_dict(self, top: int | None = None) -> dict[str, Any]:
        ranked = sorted(self.layers, key=lambda layer: layer.alone_int8_psnr_db)
        return {"all_int8_psnr_db": _finite(self.all_int8_psnr_db), "layers": [{**asdict(layer), "alone_int8_psnr_db": _finite(layer.alone_int8_psnr_db), "alone_float_psnr_db": _finite(layer.alone_float_psnr_db)} for layer in ranked[:top]]}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no infinity: an exact layer is null


def weighted_layers(module: Any) -> dict[str, Any]:
    """The layers every int8 export quantizes, by qualified name."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d)
    return {name: layer for name, layer in module.named_modules() if isinstance(layer, kinds) and layer.weight is not None}


def _kind(layer: Any) -> str:
    import torch

    return "linear" if isinstance(layer, torch.nn.Linear) else "conv"


class Int8Simulation:
    """The component with any chosen set of its weighted layers fake-quantized as the exporters do."""

    def __init__(self, component: Component):
        import torch

        self.component = component
        self.layers = weighted_layers(component.module)
        self.ranges = self._observe_input_ranges(component.calibration or [component.reference_inputs])
        self.quantized_weights = {name: _per_channel_int8(layer.weight.detach(), axis=1 if "Transpose" in type(layer).__name__ else 0) for name, layer in self.layers.items()}
        with torch.no_grad():
            self.expected = _outputs(component.run_eager())

    def _observe_input_ranges(self, batches: Iterable[dict[str, Any]]) -> dict[str, tuple[float, float]]:
        import torch

        ranges: dict[str, list[float]] = {}

        def observe(name):
            def hook(module, args):
                value = args[0].detach()
                low, high = float(value.min()), float(value.max())
                current = ranges.setdefault(name, [low, high])
                current[0], current[1] = min(current[0], low), max(current[1], high)
            return hook

        handles = [layer.register_forward_pre_hook(observe(name)) for name, layer in self.layers.items()]
        try:
            with torch.no_grad():
                for batch in batches:
                    self.component.run_eager(inputs=batch)
        finally:
            for handle in handles:
                handle.remove()
        return {name: (low, high) for name, (low, high) in ranges.items()}

    def psnr_db(self, quantized: Iterable[str]) -> float:
        """The component's worst output PSNR against float with ``quantized`` layers in int8."""
        import torch

        from edgegen.measure.metrics import worst_fidelity

        handles, originals = [], {}
        try:
            for name in quantized:
                layer = self.layers[name]
                if name in self.ranges:
                    handles.append(layer.register_forward_pre_hook(_fake_quant_input(*self.ranges[name])))
                originals[name] = layer.weight.data
                layer.weight.data = self.quantized_weights[name]
            with torch.no_grad():
                produced = _outputs(self.component.run_eager())
        finally:
            for handle in handles:
                handle.remove()
            for name, weight in originals.items():
                self.layers[name].weight.data = weight
        return worst_fidelity(self.expected, produced).psnr_db


def _outputs(tensors: dict[str, Any]) -> dict[str, Any]:
    return {name: tensor.detach().float().cpu().numpy() for name, tensor in tensors.items()}


def _per_channel_int8(weight: Any, axis: int) -> Any:
    """Symmetric int8 (-127..127) per output channel, dequantized: what the exporters store."""
    import torch

    dims = [d for d in range(weight.dim()) if d != axis]
    scale = weight.abs().amax(dim=dims, keepdim=True).clamp(min=1e-12) / 127.0
    return (torch.round(weight / scale).clamp(-127, 127) * scale).to(weight.dtype)


def _fake_quant_input(low: float, high: float):
    """Per-tensor affine int8 (-128..127) over the calibrated range, zero exactly representable."""
    import torch

    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / 255.0
    zero_point = int(round(-128 - low / scale))

    def hook(module, args):
        return (torch.fake_quantize_per_tensor_affine(args[0], scale, zero_point, -128, 127), *args[1:])

    return hook


def measure_sensitivity(component: Component) -> tuple[SensitivityReport, Int8Simulation]:
    simulation = Int8Simulation(component)
    names = list(simulation.layers)
    layers = []
    for name in names:
        layer = simulation.layers[name]
        layers.append(LayerSensitivity(
            name=name,
            kind=_kind(layer),
            parameters=sum(p.numel() for p in layer.parameters(recurse=False)),
            alone_int8_psnr_db=simulation.psnr_db([name]),
            alone_float_psnr_db=simulation.psnr_db([other for other in names if other != name]),
        ))
    return SensitivityReport(all_int8_psnr_db=simulation.psnr_db(names), layers=layers), simulation


@dataclass(frozen=True)
class Mix:
    float_layers: list[str]
    simulated_psnr_db: float
    float_parameters: int
    meets_budget: bool


def choose_float_layers(report: SensitivityReport, simulation: Int8Simulation, min_psnr_db: float, start: int = 0) -> Mix:
    """Keep layers float, the best PSNR gain per parameter first, until the simulated int8 model
    meets ``min_psnr_db`` (at least ``start`` of them: a retry after the converted program fell
    short). Every layer float is the last resort; then ``meets_budget`` says whether even that did."""
    names = [layer.name for layer in report.layers]
    size = {layer.name: layer.parameters for layer in report.layers}
    gain = {layer.name: layer.alone_float_psnr_db - report.all_int8_psnr_db for layer in report.layers}
    # Ties (and layers whose float copy gains nothing alone) go by fragility.
    fragility = {layer.name: layer.alone_int8_psnr_db for layer in report.layers}
    order = sorted(names, key=lambda name: (-gain[name] / max(size[name], 1), fragility[name]))
    kept: list[str] = []
    psnr = report.all_int8_psnr_db
    for count in range(len(order) + 1):
        kept = order[:count]
        if count >= start:
            psnr = simulation.psnr_db([name for name in names if name not in kept]) if count else report.all_int8_psnr_db
            if psnr >= min_psnr_db:
                break
    return Mix(float_layers=kept, simulated_psnr_db=psnr, float_parameters=sum(size[name] for name in kept), meets_budget=psnr >= min_psnr_db and len(kept) < len(order))


def in_float_layers(node: Any, float_layers: Iterable[str]) -> bool:
    """Whether an exported graph node computes one of ``float_layers`` (none when there are none):
    its weight is that layer's parameter (a processor calling ``F.linear`` on ``attn.to_k.weight``
    counts as ``to_k``), or torch recorded it inside that module. A wrapper's prefix (LiteRT's
    signature module) is allowed."""
    import torch

    def matches(path: str) -> bool:
        # As a run of whole path segments: a wrapper's prefix, or a rewrite's child (the explicit
        # padding rewrite moves a convolution into ``<name>.conv``).
        return any(f".{name}." in f".{path}." for name in float_layers)

    if not float_layers:
        return False
    weight = node.args[1] if len(node.args) > 1 else None
    if isinstance(weight, torch.fx.Node) and weight.op == "get_attr" and isinstance(weight.target, str):
        # A product with a parameter that is no layer's weight (SCMAN's summary pooling) is
        # outside what the analysis measures: in a mixed-precision export it stays float.
        return not weight.target.endswith(".weight") or matches(weight.target.removesuffix(".weight"))
    stack = node.meta.get("nn_module_stack") or {}
    return bool(stack) and matches(list(stack.values())[-1][0])
