"""The main job on the embedded default: export every component to every usable target,
profile and compare each artifact, and collect one list of results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgegen.artifact import Artifact, atomic_folder
from edgegen.schema.results import Result


@dataclass
class DemoRow:
    artifact: Artifact
    profile: Result
    comparison: Result


def ensure_default_pipeline(folder: Path) -> Path:
    from edgegen.models.tiny import build_embedded_default

    if not (folder / "model_index.json").is_file():
        with atomic_folder(folder, force=True) as staging:
            build_embedded_default(staging)
    return folder


def usable_targets() -> list[str]:
    from edgegen.registry import EXPORTERS, RUNTIMES

    return [
        name
        for name in EXPORTERS.names()
        if EXPORTERS.get(name).unavailable_reason() is None and RUNTIMES.get(name).unavailable_reason() is None
    ]


def plan(targets: list[str]) -> list[tuple[str, str]]:
    from edgegen.components import COMPONENT_NAMES

    return [(component, target) for target in targets for component in COMPONENT_NAMES]


def run_demo(
    workdir: Path,
    targets: list[str],
    runs: int,
    on_step: Callable[[str], None] = lambda message: None,
) -> list[DemoRow]:
    from edgegen.compare import compare_with_pipeline
    from edgegen.export import export_component
    from edgegen.profiling import profile_artifact
    from edgegen.teacher import load_pipeline

    pipeline_dir = ensure_default_pipeline(workdir / "teacher")
    pipeline = load_pipeline(pipeline_dir)
    rows = []
    for component, target in plan(targets):
        on_step(f"exporting {component} to {target}")
        artifact = export_component(pipeline, pipeline_dir, component, target, workdir / "artifacts", force=True)
        on_step(f"profiling {component} on {target}")
        profile = profile_artifact(artifact.folder, runs=runs)
        on_step(f"comparing {component} on {target} with the teacher")
        comparison = compare_with_pipeline(artifact, pipeline, pipeline_dir)
        rows.append(DemoRow(artifact, profile, comparison))
    return rows
