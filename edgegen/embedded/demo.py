"""The main job on the embedded default: teacher vs distilled student on every target here.

1. the trained embedded default teacher, its distilled student (KD-MMG) and its few-step student
   (HDG-MMS) are written as diffusers folders from the committed weights;
2. every student component is exported to every target this machine exports to, in float and
   int8, and each artifact that can run here is profiled and compared with the eager student;
3. whole pipelines are compared over the demo prompts: teacher (eager) vs float student vs each
   exported student, plus the few-step student (images, latency, memory, faithfulness, FID/KID);
4. one self-contained HTML report of it all (and a Chromium screenshot where one is installed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgegen.artifact import Artifact, atomic_folder
from edgegen.exporting.targets import int8_scheme
from edgegen.schema.pipeline import PipelineResult
from edgegen.schema.results import Result

# One prompt per colour x shape, positions rotating: what the shapes data can ask for.
DEMO_PROMPTS = (
    "a red circle at the top left",
    "a green square at the top right",
    "a blue triangle at the bottom left",
    "a yellow circle at the bottom right",
    "a red square at the bottom left",
    "a green triangle at the top left",
    "a blue circle at the top right",
    "a yellow square at the top left",
    "a red triangle at the top right",
    "a green circle at the bottom left",
    "a blue square at the bottom right",
    "a yellow triangle at the bottom left",
)
DEMO_STEPS = 20


@dataclass
class DemoRow:
    artifact: Artifact
    profile: Result | None = None
    comparison: Result | None = None
    not_run_reason: str | None = None  # e.g. Core ML prediction needs macOS


@dataclass
class DemoOutcome:
    rows: list[DemoRow] = field(default_factory=list)
    pipelines: list[PipelineResult] = field(default_factory=list)
    results_path: Path | None = None
    report_path: Path | None = None
    screenshot_path: Path | None = None


def ensure_default_pipeline(folder: Path) -> Path:
    from edgegen.embedded.builders import build_embedded_default

    if not (folder / "model_index.json").is_file():
        with atomic_folder(folder, force=True) as staging:
            build_embedded_default(staging)
    return folder


def ensure_default_student(folder: Path, teacher_dir: Path, kind: str) -> Path:
    from edgegen.embedded.builders import build_embedded_student

    if not (folder / "model_index.json").is_file():
        build_embedded_student(teacher_dir, folder, kind)
    return folder


def plan(targets: list[str], precisions: list[str]) -> list[tuple[str, str, str]]:
    """(component, target, quantization scheme) for every combination that exists."""
    from edgegen.families.stable_diffusion import COMPONENT_NAMES

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
    prompts: list[str] = list(DEMO_PROMPTS),
    on_step: Callable[[str], None] = lambda message: None,
) -> DemoOutcome:
    from edgegen.measure.component_fidelity import compare_with_pipeline
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.embedded.builders import PROBE_DIR
    from edgegen.measure.pipeline_fidelity import run_comparison
    from edgegen.embedded.probe import export_feature_extractor, load_probe
    from edgegen.measure.profiling import profile_artifact
    from edgegen.report.render import find_chromium, screenshot
    from edgegen.report.html import write_report
    from edgegen.session import runtime_for
    from edgegen.families.loading import load_pipeline

    workdir = Path(workdir)
    on_step("writing the trained embedded default teacher and students")
    teacher_dir = ensure_default_pipeline(workdir / "teacher")
    student_dir = ensure_default_student(workdir / "student", teacher_dir, "distilled")
    fewstep_dir = ensure_default_student(workdir / "student-fewstep", teacher_dir, "few-step")
    features = export_feature_extractor(load_probe(PROBE_DIR), workdir / "probe-features.onnx")
    student = load_pipeline(student_dir)
    outcome = DemoOutcome()
    artifacts_dir = workdir / "artifacts"
    for component, target, scheme in plan(targets, precisions):
        label = f"student {component} -> {target}" + ("" if scheme == "none" else f" {scheme}")
        on_step(f"exporting {label}")
        artifact = export_component(student, student_dir, component, target, artifacts_dir, ExportOptions(quantize=scheme), force=True)
        reason = runtime_for(artifact.manifest).unavailable_reason(artifact.manifest)
        if reason:
            outcome.rows.append(DemoRow(artifact, not_run_reason=reason))
            continue
        on_step(f"profiling {label}")
        profile = profile_artifact(artifact.folder, runs=runs)
        outcome.rows.append(DemoRow(artifact, profile, compare_with_pipeline(artifact, student, student_dir)))
    results_path = workdir / "results.jsonl"
    results_path.unlink(missing_ok=True)  # the demo always reports this run's artifacts
    common = dict(results_path=results_path, steps=DEMO_STEPS, probe_dir=PROBE_DIR, feature_extractor=features, runs=max(1, runs // 4), on_step=on_step)
    outcome.pipelines = run_comparison(prompts, teacher_dir, student_dir, [artifacts_dir], **common)
    outcome.pipelines += [r for r in run_comparison(prompts, teacher_dir, fewstep_dir, [], student_label="student-fewstep", **common) if r.role != "teacher"]
    outcome.results_path = results_path
    on_step("writing the report")
    outcome.report_path = write_report([results_path], workdir / "report.html", "edgegen demo: embedded default teacher vs distilled students")
    if find_chromium():
        outcome.screenshot_path = screenshot(outcome.report_path, workdir / "report.png")
    return outcome
