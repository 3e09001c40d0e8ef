"""The main job on the embedded default: export every component to every target this machine
can export to, in float and int8, then profile and compare each artifact that can run here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgegen.artifact import Artifact, atomic_folder
from edgegen.schema.results import Result


@dataclass
class DemoRow:
    artifact: Artifact
    profile: Result | None = None
    comparison: Result | None = None
    not_run_reason: str | None = None  # e.g. Core ML prediction needs macOS


def ensure_default_pipeline(folder: Path) -> Path:
    from edgegen.models.tiny import build_embedded_default

    if not (folder / "model_index.json").is_file():
        with atomic_folder(folder, force=True) as staging:
            build_embedded_default(staging)
    return folder


def exportable_targets() -> list[str]:
    from edgegen.registry import EXPORTERS

    return [name for name in EXPORTERS.names() if EXPORTERS.get(name).unavailable_reason() is None]


def usable_targets() -> list[str]:
    """Targets this machine can both export to and run."""
    from edgegen.registry import RUNTIMES

    return [name for name in exportable_targets() if RUNTIMES.get(name).unavailable_reason() is None]


def int8_scheme(target: str) -> str | None:
    """The target's full int8 scheme, else its first int8 variant (e.g. weight-only)."""
    from edgegen.registry import EXPORTERS

    schemes = EXPORTERS.get(target).quantizations
    if "int8" in schemes:
        return "int8"
    return next((s for s in schemes if s.startswith("int8")), None)


def plan(targets: list[str], precisions: list[str]) -> list[tuple[str, str, str]]:
    """(component, target, quantization scheme) for every combination that exists."""
    from edgegen.components import COMPONENT_NAMES

    cases = []
    for target in targets:
        for precision in precisions:
            scheme = "none" if precision == "float" else int8_scheme(target)
            if scheme is not None:
                cases.extend((component, target, scheme) for component in COMPONENT_NAMES)
    return cases


def run_demo(
    workdir: Path,
    targets: list[str],
    precisions: list[str],
    runs: int,
    on_step: Callable[[str], None] = lambda message: None,
) -> list[DemoRow]:
    from edgegen.compare import compare_with_pipeline
    from edgegen.export import ExportOptions, export_component
    from edgegen.profiling import profile_artifact
    from edgegen.session import runtime_for
    from edgegen.teacher import load_pipeline

    pipeline_dir = ensure_default_pipeline(workdir / "teacher")
    pipeline = load_pipeline(pipeline_dir)
    rows = []
    for component, target, scheme in plan(targets, precisions):
        label = f"{component} -> {target}" + ("" if scheme == "none" else f" {scheme}")
        on_step(f"exporting {label}")
        artifact = export_component(
            pipeline, pipeline_dir, component, target, workdir / "artifacts", ExportOptions(quantize=scheme), force=True
        )
        reason = runtime_for(artifact.manifest).unavailable_reason(artifact.manifest)
        if reason:
            rows.append(DemoRow(artifact, not_run_reason=reason))
            on_step(f"{label}: not run here")
            on_step(f"{label}: not compared here")
            continue
        on_step(f"profiling {label}")
        profile = profile_artifact(artifact.folder, runs=runs)
        on_step(f"comparing {label} with the teacher")
        rows.append(DemoRow(artifact, profile, compare_with_pipeline(artifact, pipeline, pipeline_dir)))
    return rows
