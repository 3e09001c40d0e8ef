"""edgegen's Python API: the CLI's main verbs as functions.

    import edgegen

    artifacts = edgegen.export("teacher/", "onnx", "artifacts/")          # every component of the family
    result = edgegen.profile(artifacts[1].folder, runs=10)               # latency and peak memory
    check = edgegen.compare(artifacts[1].folder, teacher="teacher/")     # exported vs eager teacher
    session = edgegen.open_session(artifacts[1].folder)                  # run it by input name
    edgegen.family_of("teacher/").components                             # what a folder splits into

Every function takes and returns the same folders and result records as the CLI and raises
``edgegen.EdgegenError`` (one line) on bad input. ``import edgegen`` imports no toolchain: each
function imports what it needs when it is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgegen.errors import EdgegenError

if TYPE_CHECKING:
    from edgegen.artifact import Artifact
    from edgegen.families import Family
    from edgegen.schema.results import Result
    from edgegen.session import Session

__all__ = [
    "EdgegenError",
    "compare",
    "export",
    "families",
    "family_of",
    "load_artifact",
    "open_session",
    "profile",
    "targets",
]


def export(
    pipeline_dir: str | Path,
    target: str,
    output_dir: str | Path,
    components: list[str] | None = None,
    quantize: str = "none",
    backend: str | None = None,
    batch_size: int = 1,
    min_psnr_db: float | None = None,
    force: bool = False,
) -> list[Artifact]:
    """Export a pipeline folder's components to ``target``: all of them (or ``components``), or none."""
    from edgegen.exporting.orchestration import ExportOptions, export_pipeline

    options = ExportOptions(backend=backend, quantize=quantize, min_psnr_db=min_psnr_db, batch_size=batch_size)
    return export_pipeline(Path(pipeline_dir), target, Path(output_dir), components or None, options, force)


def profile(
    artifact_dir: str | Path, warmup: int = 3, runs: int = 20, threads: int = 1, device: str | None = None
) -> Result:
    """Latency (warm-up, p50/p90, load time) and peak memory of an artifact, in a fresh process.

    ``device`` (``ssh://user@host``) profiles on a remote board with edgegen installed instead.
    """
    if device:
        from edgegen.measure.remote import profile_on_device

        return profile_on_device(Path(artifact_dir), device, warmup, runs, threads)
    from edgegen.measure.profiling import profile_artifact

    return profile_artifact(Path(artifact_dir), warmup=warmup, runs=runs, threads=threads)


def compare(artifact_dir: str | Path, teacher: str | Path, threads: int = 1) -> Result:
    """An exported component against the teacher's eager component on the artifact's reference inputs."""
    from edgegen.measure.component_fidelity import compare_artifact

    return compare_artifact(Path(artifact_dir), Path(teacher), threads)


def load_artifact(artifact_dir: str | Path) -> Artifact:
    """An artifact folder's manifest, with every file checked against its recorded hash."""
    from edgegen.artifact import load_artifact as load

    return load(Path(artifact_dir))


def open_session(artifact_dir: str | Path, threads: int = 1) -> Session:
    """A runtime session of an artifact: ``session.run({name: array}) -> {name: array}``."""
    from edgegen.session import open_session as open_

    return open_(Path(artifact_dir), threads)


def family_of(pipeline_dir: str | Path) -> Family:
    """The model family of a diffusers pipeline folder, or one line saying it is not supported."""
    from edgegen.families import family_of as find

    return find(Path(pipeline_dir))


def targets() -> dict[str, str | None]:
    """Every export target, with why it cannot export here (None where it can)."""
    from edgegen.registry import EXPORTERS

    return {name: EXPORTERS.get(name).unavailable_reason() for name in EXPORTERS.names()}


def __getattr__(name: str) -> Any:
    # ``edgegen.families`` is the family package; imported on first use, like every other part.
    if name == "families":
        import importlib

        return importlib.import_module("edgegen.families")
    raise AttributeError(f"module 'edgegen' has no attribute {name!r}")
