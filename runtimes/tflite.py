"""LiteRT (TFLite) interpreter, CPU: ai-edge-litert, or tflite-runtime for float models only.

Inputs and outputs go through the model's signature by name: LiteRT lists signature tensors
alphabetically, not in the order the component declares them. tflite-runtime 2.14 is accepted
only for float artifacts: it returned wrong results for per-channel int8 models and cannot run
newer op versions.
"""

from __future__ import annotations

import numpy as np

from edgegen.artifact import Artifact
from edgegen.exporting.base import missing_packages
from edgegen.schema.manifest import ArtifactManifest

SIGNATURE_KEY = "serving_default"


def _interpreter_class(quantized: bool):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        if quantized:
            raise
        from tflite_runtime.interpreter import Interpreter
    return Interpreter


def _has(module: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


class TfliteBackend:
    def __init__(self, artifact: Artifact, threads: int):
        interpreter_class = _interpreter_class(artifact.manifest.quantization.scheme != "none")
        self.interpreter = interpreter_class(model_path=str(artifact.model_path), num_threads=threads)
        self.interpreter.allocate_tensors()
        signatures = self.interpreter.get_signature_list()
        key = SIGNATURE_KEY if SIGNATURE_KEY in signatures else next(iter(signatures))
        self.runner = self.interpreter.get_signature_runner(key)
        self.input_names = [spec.name for spec in artifact.manifest.inputs]
        self.output_names = [spec.name for spec in artifact.manifest.outputs]
        missing = [n for n in self.input_names if n not in signatures[key]["inputs"]]
        missing += [n for n in self.output_names if n not in signatures[key]["outputs"]]
        if missing:
            raise ValueError(f"the .tflite signature '{key}' lacks {', '.join(missing)}")

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        results = self.runner(**dict(zip(self.input_names, inputs, strict=True)))
        return [results[name] for name in self.output_names]


class TfliteRuntime:
    name = "tflite"
    target = "tflite"
    packages = ("ai-edge-litert",)

    def unavailable_reason(self, manifest: ArtifactManifest | None = None) -> str | None:
        if _has("ai_edge_litert.interpreter"):
            return None
        missing = missing_packages(self.packages, "tflite") or "ai-edge-litert does not import"
        if manifest is not None and manifest.quantization.scheme != "none":
            return f"{missing}; tflite-runtime is not trusted with quantized models"
        if _has("tflite_runtime.interpreter"):
            return None
        return missing

    def import_toolchain(self) -> None:
        _interpreter_class(quantized=False)

    def load(self, artifact: Artifact, threads: int) -> TfliteBackend:
        return TfliteBackend(artifact, threads)


RUNTIME = TfliteRuntime()
