"""One Session interface over every runtime, validating inputs against the artifact manifest.

A runtime plugin (``edgegen/runtimes/<name>.py``) only loads a model file and runs positional
numpy arrays; names, shapes and dtypes are checked here, once, for all of them. Each runtime names
the target whose artifacts it runs, and ``runtime_for`` picks the first one usable here, so a
target may have several (e.g. two ONNX Runtime execution providers). Integer inputs are cast to
the width the converter produced (int64 -> int32 for LiteRT), float inputs to the recorded float
type; anything else is an error, not a silent conversion.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgegen.artifact import Artifact, load_artifact
from edgegen.errors import EdgegenError, first_line
from edgegen.registry import RUNTIMES
from edgegen.schema.manifest import ArtifactManifest, TensorSpec


class BackendSession(Protocol):
    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]: ...


class Runtime(Protocol):
    name: str  # its key in RUNTIMES, recorded as Parity.runtime and in results
    target: str  # the export target whose artifacts it runs; one target may have several runtimes
    packages: tuple[str, ...]

    def unavailable_reason(self, manifest: ArtifactManifest | None = None) -> str | None:
        """Why this host cannot run (such) artifacts, or None if it can."""

    def import_toolchain(self) -> None:
        """Import the runtime's libraries, so a memory baseline includes them and no model."""

    def load(self, artifact: Artifact, threads: int) -> BackendSession: ...


def runtimes_of(target: str) -> list[Runtime]:
    """The runtimes of ``target`` in registry order (the first is the preferred one)."""
    return [runtime for runtime in map(RUNTIMES.get, RUNTIMES.names()) if runtime.target == target]


def runtime_for(manifest: ArtifactManifest) -> Runtime:
    """The first runtime of the manifest's target that can run it here; where none can, the first
    one, whose ``unavailable_reason`` says why."""
    candidates = runtimes_of(manifest.target)
    if not candidates:
        known = sorted({RUNTIMES.get(name).target for name in RUNTIMES.names()})
        raise EdgegenError(f"no runtime runs target '{manifest.target}'; runtimes exist for: {', '.join(known)}")
    return next((runtime for runtime in candidates if runtime.unavailable_reason(manifest) is None), candidates[0])


def host_description() -> str:
    return f"{platform.system()} {platform.machine()}"


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _cast(name: str, value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    expected = np.dtype(spec.dtype)
    if value.dtype == expected:
        return value
    same_kind = (np.issubdtype(value.dtype, np.integer) and np.issubdtype(expected, np.integer)) or (
        np.issubdtype(value.dtype, np.floating) and np.issubdtype(expected, np.floating)
    )
    if not same_kind:
        raise EdgegenError(f"input '{name}' has dtype {value.dtype} but the artifact expects {expected}")
    if np.issubdtype(expected, np.integer):
        info = np.iinfo(expected)
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise EdgegenError(f"input '{name}' has values outside the range of {expected}")
    return value.astype(expected)


class Session:
    """Runs an artifact by input name; outputs come back by name as numpy arrays."""

    def __init__(self, artifact: Artifact, backend: BackendSession, runtime_name: str):
        self.artifact = artifact
        self.backend = backend
        self.runtime_name = runtime_name

    @property
    def manifest(self) -> ArtifactManifest:
        return self.artifact.manifest

    def prepare(self, inputs: Mapping[str, Any]) -> list[np.ndarray]:
        specs = self.manifest.inputs
        expected_names = [spec.name for spec in specs]
        unknown = sorted(set(inputs) - set(expected_names))
        missing = [name for name in expected_names if name not in inputs]
        if unknown:
            raise EdgegenError(f"unknown input(s) {', '.join(unknown)}; the artifact takes {', '.join(expected_names)}")
        if missing:
            raise EdgegenError(f"missing input(s) {', '.join(missing)}; the artifact takes {', '.join(expected_names)}")
        arrays = []
        for spec in specs:
            value = _as_array(inputs[spec.name])
            if list(value.shape) != spec.shape:
                raise EdgegenError(
                    f"input '{spec.name}' has shape {tuple(value.shape)} but the artifact expects {tuple(spec.shape)}"
                )
            arrays.append(np.ascontiguousarray(_cast(spec.name, value, spec)))
        return arrays

    def run_prepared(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.backend.run(arrays)
        except Exception as error:  # runtimes raise their own types for failed executions
            raise EdgegenError(f"running {self.artifact.folder} failed: {first_line(error)}") from None
        return {spec.name: np.asarray(out) for spec, out in zip(self.manifest.outputs, outputs, strict=True)}

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self.run_prepared(self.prepare(inputs))


def open_artifact(artifact: Artifact, threads: int = 1) -> Session:
    runtime = runtime_for(artifact.manifest)
    reason = runtime.unavailable_reason(artifact.manifest)
    if reason:
        raise EdgegenError(f"cannot run {artifact.manifest.target} artifact {artifact.folder} here: {reason}")
    try:
        backend = runtime.load(artifact, threads)
    except EdgegenError:
        raise
    except Exception as error:  # runtimes raise their own types for unloadable files
        raise EdgegenError(f"cannot load artifact {artifact.folder}: {first_line(error)}") from None
    return Session(artifact, backend, runtime.name)


def open_session(artifact_dir: Path, threads: int = 1) -> Session:
    return open_artifact(load_artifact(Path(artifact_dir)), threads)
