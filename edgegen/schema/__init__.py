"""Strict, versioned models of every file that crosses a seam between stages."""

from edgegen.schema.base import load_strict_json
from edgegen.schema.manifest import (
    ARTIFACT_SCHEMA_VERSION,
    ArtifactFile,
    ArtifactManifest,
    CoremlDeployment,
    Delegation,
    Parity,
    Quantization,
    Source,
    TensorSpec,
)
from edgegen.schema.results import RESULTS_SCHEMA_VERSION, Host, Latency, Memory, Quality, Result

__all__ = [
    "ARTIFACT_SCHEMA_VERSION",
    "RESULTS_SCHEMA_VERSION",
    "ArtifactFile",
    "ArtifactManifest",
    "CoremlDeployment",
    "Delegation",
    "Host",
    "Latency",
    "Memory",
    "Parity",
    "Quality",
    "Quantization",
    "Result",
    "Source",
    "TensorSpec",
    "load_strict_json",
]
