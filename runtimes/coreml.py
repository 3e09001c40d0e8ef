"""Core ML through coremltools' MLModel.predict. Core ML prediction needs macOS.

On Linux, coremltools converts and inspects packages but has no Core ML framework to run them,
so this runtime reports itself unavailable there rather than pretending to run.
"""

from __future__ import annotations

import platform

import numpy as np

from edgegen.artifact import Artifact
from edgegen.schema.manifest import ArtifactManifest

# Deployment target recorded at export -> the oldest macOS whose Core ML runs it.
_MACOS_FOR_TARGET = {"iOS15": 12, "iOS16": 13, "iOS17": 14, "iOS18": 15}


class CoremlBackend:
    def __init__(self, artifact: Artifact):
        import coremltools as ct

        units = artifact.manifest.quantization.details.get("compute_units", "ALL")
        self.model = ct.models.MLModel(str(artifact.model_path), compute_units=getattr(ct.ComputeUnit, units))
        self.input_names = [spec.name for spec in artifact.manifest.inputs]
        self.output_names = [spec.name for spec in artifact.manifest.outputs]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        produced = self.model.predict(dict(zip(self.input_names, inputs, strict=True)))
        return [np.asarray(produced[name]) for name in self.output_names]


class CoremlRuntime:
    name = "coreml"
    packages = ("coremltools",)

    def unavailable_reason(self, manifest: ArtifactManifest | None = None) -> str | None:
        from edgegen.versions import package_version

        if platform.system() != "Darwin":
            return "Core ML prediction needs macOS"
        if package_version("coremltools") is None:
            return "coremltools is not installed (pip install 'edgegen[coreml]')"
        if manifest is not None:
            target = manifest.quantization.details.get("deployment_target")
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
