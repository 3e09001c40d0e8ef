"""ONNX Runtime, CPU execution provider."""

from __future__ import annotations

import numpy as np

from edgegen.artifact import Artifact
from edgegen.exporting.base import missing_packages
from edgegen.schema.manifest import ArtifactManifest


class OnnxBackend:
    def __init__(self, artifact: Artifact, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(artifact.model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [spec.name for spec in artifact.manifest.inputs]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.input_names, inputs, strict=True)))


class OnnxRuntime:
    name = "onnx"
    target = "onnx"
    packages = ("onnxruntime",)

    def unavailable_reason(self, manifest: ArtifactManifest | None = None) -> str | None:
        return missing_packages(self.packages, "onnx")

    def import_toolchain(self) -> None:
        import onnxruntime  # noqa: F401

    def load(self, artifact: Artifact, threads: int) -> OnnxBackend:
        return OnnxBackend(artifact, threads)


RUNTIME = OnnxRuntime()
