"""The main job on the embedded default: teacher vs distilled student on every target here.

1. the trained embedded default teacher, its distilled student (KD-MMG) and its few-step student
   (HDG-MMS) are written as diffusers folders from the committed weights;
2. every student component is exported to every target this machine exports to, in float,
   float16 and int8, and each artifact that can run here is profiled and compared with the eager
   student;
3. the few-step student's components are exported to the same targets in float and int8, and so
   is its tiny decoder (a TAESD-like decoder distilled from the VAE's, ``edgegen train decoder``);
   the few-step student with its tiny decoder is also exported whole, as one-call programs
   (``edgegen export --component pipeline``) of 2 and of 1 step;
4. whole pipelines are compared over the demo prompts: teacher (eager) vs float student vs each
   exported student, and the few-step student (with the VAE's decoder, and with its tiny one),
   eager, exported by component and as one call, at 2 and 1 steps (images, latency, memory,
   faithfulness, FID/KID);
5. one self-contained HTML report of it all, led by the shipped configuration (the fastest
   exported student that keeps the teacher's captions), and a Chromium screenshot where one is
   installed.
"""

from __future__ import annotations

import shutil
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
# The few-step student is trained for 2 steps; at 1 it decodes its clean prediction from noise.
FEWSTEP_STEPS = (2, 1)


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


def ensure_default_decoder_student(folder: Path, fewstep_dir: Path) -> Path:
    from edgegen.embedded.builders import build_embedded_decoder_student

    if not (folder / "model_index.json").is_file():
        build_embedded_decoder_student(fewstep_dir, folder)
    return folder


def plan(targets: list[str], precisions: list[str]) -> list[tuple[str, str, str]]:
    """(component, target, quantization scheme) for every combination that exists (float and
    int8; float16 is a load dtype, see ``float16_plan``)."""
    from edgegen.families.stable_diffusion import COMPONENT_NAMES

    cases = []
    for target in targets:
        for precision in precisions:
            if precision == "float16":
                continue
            scheme = "none" if precision == "float" else int8_scheme(target)
            if scheme is not None:
                cases.extend((component, target, scheme) for component in COMPONENT_NAMES)
    return cases


def export_few_step_students(
    workdir: Path, teacher_dir: Path, targets: list[str], precisions: list[str], on_step: Callable[[str], None] = lambda message: None
) -> list[tuple[str, Path, dict[int, list[Path]]]]:
    """The few-step student (the one an app ships), with the VAE's decoder and with its tiny one,
    exported to every target and precision: (label, pipeline folder, artifact folders by the
    number of steps they run) each.

    Each component's parity is checked on export. With the tiny decoder only the decoder is new;
    the text encoder and denoiser artifacts are the few-step student's (the same weights, which
    the pipeline comparison checks by hash). The student with its tiny decoder is also exported
    as one-call programs, one folder per number of steps.
    """
    from edgegen.exporting.one_call import PIPELINE_COMPONENT
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.families.loading import load_pipeline

    fewstep_dir = ensure_default_student(workdir / "student-fewstep", teacher_dir, "few-step")
    fewstep = load_pipeline(fewstep_dir)
    fewstep_artifacts_dir = workdir / "artifacts-fewstep"
    written = {}
    for component, target, scheme in plan(targets, precisions):
        on_step(f"exporting few-step student {component} -> {target}" + ("" if scheme == "none" else f" {scheme}"))
        artifact = export_component(fewstep, fewstep_dir, component, target, fewstep_artifacts_dir, ExportOptions(quantize=scheme), force=True)
        written[component, target, scheme] = artifact.folder
    tiny_decoder_dir = ensure_default_decoder_student(workdir / "student-fewstep-tinydecoder", fewstep_dir)
    tiny_decoder = load_pipeline(tiny_decoder_dir)
    tiny_decoder_artifacts_dir = workdir / "artifacts-fewstep-tinydecoder"
    for component, target, scheme in plan(targets, precisions):
        if component != "vae_decoder":
            shared = written[component, target, scheme]
            shutil.rmtree(tiny_decoder_artifacts_dir / shared.name, ignore_errors=True)
            shutil.copytree(shared, tiny_decoder_artifacts_dir / shared.name)
            continue
        on_step(f"exporting the tiny decoder -> {target}" + ("" if scheme == "none" else f" {scheme}"))
        export_component(tiny_decoder, tiny_decoder_dir, component, target, tiny_decoder_artifacts_dir, ExportOptions(quantize=scheme), force=True)
    one_call_dirs = {}
    for steps in FEWSTEP_STEPS:
        one_call_dirs[steps] = workdir / f"artifacts-fewstep-tinydecoder-one-call-{steps}"
        for target, scheme in dict.fromkeys((target, scheme) for _, target, scheme in plan(targets, precisions)):
            on_step(f"exporting the few-step student with its tiny decoder as one {steps}-step call -> {target}" + ("" if scheme == "none" else f" {scheme}"))
            options = ExportOptions(quantize=scheme, pipeline_steps=steps)
            export_component(tiny_decoder, tiny_decoder_dir, PIPELINE_COMPONENT, target, one_call_dirs[steps], options, force=True)
    return [
        ("student-fewstep", fewstep_dir, {steps: [fewstep_artifacts_dir] for steps in FEWSTEP_STEPS}),
        ("student-fewstep-tinydecoder", tiny_decoder_dir, {steps: [tiny_decoder_artifacts_dir, one_call_dirs[steps]] for steps in FEWSTEP_STEPS}),
    ]


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
    from edgegen.families.loading import LoadOptions, load_pipeline

    workdir = Path(workdir)
    on_step("writing the trained embedded default teacher and students")
    teacher_dir = ensure_default_pipeline(workdir / "teacher")
    student_dir = ensure_default_student(workdir / "student", teacher_dir, "distilled")
    features = export_feature_extractor(load_probe(PROBE_DIR), workdir / "probe-features.onnx")
    student = load_pipeline(student_dir)
    outcome = DemoOutcome()
    artifacts_dir = workdir / "artifacts"
    cases = [(component, target, scheme, "float32") for component, target, scheme in plan(targets, precisions)]
    if "float16" in precisions:
        # Weights loaded in float16 and the artifact computing in it, on every target.
        from edgegen.families.stable_diffusion import COMPONENT_NAMES

        cases += [(component, target, "none", "float16") for target in targets for component in COMPONENT_NAMES]
        student_float16 = load_pipeline(student_dir, LoadOptions(dtype="float16"))
    for component, target, scheme, dtype in cases:
        label = f"student {component} -> {target}" + ("" if scheme == "none" else f" {scheme}") + ("" if dtype == "float32" else f" {dtype}")
        on_step(f"exporting {label}")
        source = student if dtype == "float32" else student_float16
        options = ExportOptions(quantize=scheme, load=LoadOptions(dtype=dtype))
        artifact = export_component(source, student_dir, component, target, artifacts_dir, options, force=True)
        reason = runtime_for(artifact.manifest).unavailable_reason(artifact.manifest)
        if reason:
            outcome.rows.append(DemoRow(artifact, not_run_reason=reason))
            continue
        on_step(f"profiling {label}")
        profile = profile_artifact(artifact.folder, runs=runs)
        outcome.rows.append(DemoRow(artifact, profile, compare_with_pipeline(artifact, student, student_dir)))
    few_step_students = export_few_step_students(workdir, teacher_dir, targets, [p for p in precisions if p != "float16"], on_step)
    results_path = workdir / "results.jsonl"
    results_path.unlink(missing_ok=True)  # the demo always reports this run's artifacts
    common = dict(results_path=results_path, steps=DEMO_STEPS, probe_dir=PROBE_DIR, feature_extractor=features, runs=max(1, runs // 4), on_step=on_step)
    outcome.pipelines = run_comparison(prompts, teacher_dir, student_dir, [artifacts_dir], **common)
    for label, folder, roots in few_step_students:
        for few_steps in FEWSTEP_STEPS:
            compared = run_comparison(prompts, teacher_dir, folder, roots[few_steps], student_label=label, student_steps=few_steps, **common)
            outcome.pipelines += [r for r in compared if r.role != "teacher"]
    outcome.results_path = results_path
    on_step("writing the report")
    outcome.report_path = write_report([results_path], workdir / "report.html", "edgegen demo: embedded default teacher vs distilled students")
    if find_chromium():
        outcome.screenshot_path = screenshot(outcome.report_path, workdir / "report.png")
    return outcome
