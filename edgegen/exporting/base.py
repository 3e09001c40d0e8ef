"""What every exporter is and shares: the Exporter protocol, its options and result, the parity
thresholds, and the plain helpers each target file calls (availability, op counts, delegation).

Nothing here imports a toolchain; the target files under ``exporters/`` do, inside functions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edgegen.families.loading import LoadOptions
from edgegen.schema.manifest import CoremlDeployment, Delegation, Quantization, TensorSpec

if TYPE_CHECKING:
    from edgegen.families import Component
    from edgegen.measure.faithfulness_budget import FaithfulnessBudget

# Parity gates, exported vs eager on the reference inputs (PSNR over the reference's peak).
MIN_PSNR_DB_FLOAT32 = 60.0  # float32 conversions differ only by op ordering (~1e-6 relative)
MIN_PSNR_DB_FLOAT16 = 35.0  # Apple's ml-stable-diffusion gate for float16 Core ML models
MIN_PSNR_DB_INT8 = 20.0  # 8-bit weights/activations on random-weight tiny models


def min_psnr_db(quantize: str) -> float:
    """The parity gate of an export computed in float32, quantized as ``quantize`` (or not)."""
    return MIN_PSNR_DB_FLOAT32 if quantize == "none" else MIN_PSNR_DB_INT8


@dataclass(frozen=True)
class ExportOptions:
    backend: str | None = None
    quantize: str = "none"
    min_psnr_db: float | None = None
    batch_size: int = 1
    load: LoadOptions = field(default_factory=LoadOptions)  # how the pipeline folder is loaded
    check_memory: bool = True  # refuse an export whose estimated peak exceeds the memory available
    # Weights in a file beside the model (ExecuTorch .ptd, ONNX external data); None: only where
    # the weights exceed SEPARATE_WEIGHTS_BYTES.
    separate_weights: bool | None = None
    # Weighted layers kept float in an int8 export (module names inside the component): the mix
    # ``--quantize auto`` chooses (edgegen.exporting.sensitivity).
    float_layers: tuple[str, ...] = ()
    # One-call pipeline programs (component "pipeline"): the first ``pipeline_steps`` timesteps
    # of the student's schedule (None: all of them) and the classifier-free guidance inside.
    pipeline_steps: int | None = None
    guidance_scale: float = 1.0
    # --quantize auto's caption-faithfulness budget: a probe, and the share of the float
    # pipeline's faithfulness the pipeline with this artifact must keep.
    faithfulness: FaithfulnessBudget | None = None


# Above this, weights go to a file of their own: the app can map it, ship it apart from the
# program and share it between programs (and ONNX's protobuf cannot hold more than 2 GiB).
SEPARATE_WEIGHTS_BYTES = 1 << 30


def weight_bytes(component: Component) -> int:
    return sum(p.numel() * p.element_size() for p in component.module.parameters())


def wants_separate_weights(component: Component, options: ExportOptions) -> bool:
    if options.separate_weights is not None:
        return options.separate_weights
    return weight_bytes(component) > SEPARATE_WEIGHTS_BYTES


@dataclass
class ExportedModel:
    """What an exporter hands back: the file it wrote and the I/O specs it actually produced."""

    model_file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    quantization: Quantization = field(default_factory=Quantization)
    weight_files: list[str] = field(default_factory=list)  # beside model_file, loaded with it
    delegation: Delegation | None = None
    backend: str | None = None
    min_psnr_db: float = MIN_PSNR_DB_FLOAT32
    graph_rewrites: list[str] = field(default_factory=list)  # exact rewrites the exporter applied
    coreml: CoremlDeployment | None = None  # Core ML programs only: how the device should load it


class Exporter(Protocol):
    name: str
    backends: tuple[str, ...]  # the first is the default; empty if the target has none
    quantizations: tuple[str, ...]
    packages: tuple[str, ...]  # toolchain packages recorded in the manifest
    separate_weights: bool  # whether it can write the weights to a file beside the model

    def unavailable_reason(self) -> str | None: ...

    def export(self, component: Component, folder: Path, options: ExportOptions) -> ExportedModel: ...


def missing_packages(packages: Iterable[str], extra: str) -> str | None:
    """Why a toolchain is unusable here (the packages not installed and the extra that brings
    them), or None when every one is installed."""
    from edgegen.versions import package_version

    missing = [name for name in packages if package_version(name) is None]
    return f"missing packages: {', '.join(missing)} (pip install 'edgegen[{extra}]')" if missing else None


def count_ops(op_names: Iterable[str]) -> dict[str, int]:
    """Occurrences of each op name, sorted by name: the one shape of every target's op counts."""
    return dict(sorted(Counter(op_names).items()))


def delegation_from_ops(
    backend: str, ops: Mapping[str, int], fallback: Mapping[str, int] | None = None, subgraphs: int = 1
) -> Delegation:
    """The delegation report of a graph with ``ops`` nodes, of which ``fallback`` stayed off the delegate."""
    fallback = {name: count for name, count in sorted((fallback or {}).items()) if count}
    total = sum(ops.values())
    return Delegation(
        backend=backend,
        total_nodes=total,
        delegated_nodes=total - sum(fallback.values()),
        delegate_subgraphs=subgraphs,
        fallback_ops=fallback,
    )
