"""Core ML through coremltools' MLModel.predict. Core ML prediction needs macOS.

On Linux, coremltools converts and inspects packages but has no Core ML framework to run them,
so this runtime reports itself unavailable there rather than pretending to run.
"""

from __future__ import annotations

import platform

import numpy as np

from edgegen.artifact import Artifact
from edgegen.exporting.base import missing_packages
from edgegen.schema.manifest import ArtifactManifest, CoremlDeployment

# Deployment target recorded at export -> the oldest macOS whose Core ML runs it.
_MACOS_FOR_TARGET = {"iOS15": 12, "iOS16": 13, "iOS17": 14, "iOS18": 15}


def deployment_of(manifest: ArtifactManifest) -> CoremlDeployment:
    """The manifest's Core ML settings; manifests older than the typed field kept them in details."""
    if manifest.coreml is not None:
        return manifest.coreml
    details = manifest.quantization.details
    return CoremlDeployment(
        deployment_target=details.get("deployment_target", ""),
        compute_units=details.get("compute_units", "ALL"),
        precision=details.get("precision", ""),
    )


class CoremlBackend:
    def __init__(self, artifact: Artifact):
        import coremltools as ct

        units = deployment_of(artifact.manifest).compute_units
        self.model = ct.models.MLModel(str(artifact.model_path), compute_units=getattr(ct.ComputeUnit, units))
        self.input_names = [spec.name for spec in artifact.manifest.inputs]
        self.output_names = [spec.name for spec in artifact.manifest.outputs]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        produced = self.model.predict(dict(zip(self.input_names, inputs, strict=True)))
        return [np.asarray(produced[name]) for name in self.output_names]


class CoremlRuntime:
    name = "coreml"
    target = "coreml"
    packages = ("coremltools",)

    def unavailable_reason(self, manifest: ArtifactManifest | None = None) -> str | None:
        if platform.system() != "Darwin":
            return "Core ML prediction needs macOS"
        missing = missing_packages(self.packages, "coreml")
        if missing:
            return missing
        if manifest is not None:
            target = deployment_of(manifest).deployment_target
            needed = _MACOS_FOR_TARGET.get(target)
            release = platform.mac_ver()[0]
            if needed and release and int(release.split(".")[0]) < needed:
                return f"this artifact targets {target} and needs macOS {needed} or later (this is macOS {release})"
        return None

    def import_toolchain(self) -> None:
        import coremltools  # noqa: F401

    def load(self, artifact: Artifact, threads: int) -> CoremlBackend:
        # Core ML schedules its own threads and compute units; ``threads`` is recorded only.
        return CoremlBackend(artifact)


RUNTIME = CoremlRuntime()
