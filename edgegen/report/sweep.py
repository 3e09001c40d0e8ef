"""``edgegen sweep``: the student over targets x precision x steps (x SCMAN summary tokens), and
the Pareto front of latency, memory and size against quality.

Every cell is an ordinary whole-pipeline comparison (``edgegen.measure.pipeline_fidelity``) appended to
one JSON Lines results file, so the sweep resumes like ``compare`` does: exported artifacts that
are already there are reused and finished cases are skipped. Summary-token variants are copies of
the student folder with another SCMAN budget; only a ``pooled`` summary has no learned
[S x M] matrix and can change its budget without retraining, so other students refuse the axis.
A few-step student samples its own schedule whatever ``--steps`` says, so its steps axis has one
value. The front is computed by ``edgegen.report.pareto`` over the student cases that ran and were
timed; it is written beside the results (``<results>.pareto.json``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.exporting.targets import int8_scheme
from edgegen.report.pareto import pareto_of
from edgegen.schema.pipeline import ParetoFront, PipelineResult

PRECISIONS = ("float", "int8")


@dataclass(frozen=True)
class SweepAxes:
    targets: list[str]
    precisions: list[str] = field(default_factory=lambda: ["float"])
    steps: list[int] = field(default_factory=lambda: [4])
    summary_tokens: list[int] = field(default_factory=list)  # empty: the student's own budget only

    def check(self) -> None:
        from edgegen.registry import EXPORTERS

        if not self.targets or not self.precisions or not self.steps:
            raise EdgegenError("a sweep needs at least one target, precision and step count")
        for target in self.targets:
            reason = EXPORTERS.get(target).unavailable_reason()  # unknown names fail listing the choices
            if reason:
                raise EdgegenError(f"target '{target}' is not usable here: {reason}")
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise EdgegenError(f"unknown precision '{unknown[0]}'; choose from: {', '.join(PRECISIONS)}")
        if any(s < 1 for s in self.steps) or any(s < 1 for s in self.summary_tokens):
            raise EdgegenError("--steps and --summary-tokens values must be at least 1")


@dataclass
class SweepOutcome:
    results: list[PipelineResult]
    front: ParetoFront
    front_path: Path


def parse_list(text: str, kind: type = str, option: str = "list") -> list:
    values = [part.strip() for part in text.split(",") if part.strip()]
    try:
        return [kind(value) for value in values]
    except ValueError:
        raise EdgegenError(f"{option} takes comma-separated {kind.__name__} values, got '{text}'") from None


def summary_token_variant(student_dir: Path, tokens: int, workdir: Path) -> Path:
    """A copy of the student with another SCMAN summary budget (pooled summaries only)."""
    from edgegen.artifact import atomic_folder
    from edgegen.models.checkpoint import read_student_manifest
    from edgegen.models.scman import SCMANConfig
    from edgegen.schema.base import write_json
    from edgegen.schema.checkpoint import STUDENT_MANIFEST_FILENAME

    manifest = read_student_manifest(student_dir)
    if manifest is None or manifest.scman is None:
        raise EdgegenError(f"{student_dir} has no SCMAN attention; --summary-tokens needs a SCMAN student")
    scman = manifest.scman
    if scman.summary != "pooled":
        raise EdgegenError(f"{student_dir} learned its SCMAN summary ({scman.summary}); its token budget is fixed")
    if scman.summary_tokens == tokens:
        return Path(student_dir)
    resized = scman.model_copy(update={"summary_tokens": tokens})
    SCMANConfig(**resized.model_dump())  # refuse an impossible budget before copying
    folder = Path(workdir) / f"summary-{tokens}"
    if not (folder / STUDENT_MANIFEST_FILENAME).is_file():
        with atomic_folder(folder, force=True) as staging:
            shutil.copytree(student_dir, staging, dirs_exist_ok=True)
            write_json(staging / STUDENT_MANIFEST_FILENAME, manifest.model_copy(update={"scman": resized}))
    return folder


def export_cell(student_dir: Path, target: str, precision: str, root: Path, on_step: Callable[[str], None]) -> Path | None:
    """Export every component of the student for one cell into their own folder (reused if there)."""
    from edgegen.families import component_names, family_of
    from edgegen.exporting.orchestration import ExportOptions, artifact_name, check_options, export_pipeline, get_exporter
    from edgegen.schema.manifest import MANIFEST_FILENAME

    scheme = "none" if precision == "float" else int8_scheme(target)
    if scheme is None:
        on_step(f"{target} has no int8 scheme; skipped")
        return None
    options = check_options(get_exporter(target), ExportOptions(quantize=scheme))
    folder = Path(root) / f"{target}-{precision}"
    names = [artifact_name(component, target, options) for component in component_names(family_of(student_dir))]
    if all((folder / name / MANIFEST_FILENAME).is_file() for name in names):
        return folder
    on_step(f"exporting {student_dir.name} to {target} {precision}")
    export_pipeline(student_dir, target, folder, options=options, force=True)
    return folder


def run_sweep(
    teacher_dir: Path,
    student_dir: Path,
    prompts: list[str],
    results_path: Path,
    axes: SweepAxes,
    teacher_steps: int = 20,
    guidance_scale: float = 1.0,
    seed: int = 0,
    quality: str = "psnr",
    runs: int = 3,
    threads: int = 1,
    probe_dir: Path | None = None,
    feature_extractor: Path | None = None,
    clip_dir: Path | None = None,
    on_step: Callable[[str], None] = lambda message: None,
) -> SweepOutcome:
    from edgegen.families.loading import check_pipeline_dir
    from edgegen.measure.metric_registry import sweep_quality, unmeasured
    from edgegen.measure.pipeline_fidelity import run_comparison

    axes.check()
    needed = unmeasured(sweep_quality(quality), probe_dir, feature_extractor, clip_dir)
    if needed:
        raise EdgegenError(f"--quality {quality} needs {needed}")
    teacher_dir, student_dir = check_pipeline_dir(teacher_dir), check_pipeline_dir(student_dir)
    results_path = Path(results_path)
    workdir = results_path.parent / (results_path.stem + "-work")
    variants: list[tuple[str, Path]] = [("student", Path(student_dir))]
    if axes.summary_tokens:
        variants = [(f"student-s{tokens}", summary_token_variant(student_dir, tokens, workdir / "students")) for tokens in axes.summary_tokens]
    seen: dict[str, PipelineResult] = {}
    for label, variant_dir in variants:
        roots = [
            folder
            for target in axes.targets
            for precision in axes.precisions
            if (folder := export_cell(variant_dir, target, precision, workdir / "artifacts" / label, on_step)) is not None
        ]
        for steps in axes.steps:
            results = run_comparison(
                prompts, teacher_dir, variant_dir, roots, results_path,
                steps=teacher_steps, student_steps=steps, guidance_scale=guidance_scale, seed=seed,
                probe_dir=probe_dir, feature_extractor=feature_extractor, clip_dir=clip_dir,
                runs=runs, threads=threads, student_label=label, on_step=on_step,
            )
            for result in results:
                seen.setdefault(result.case_id, result)
    all_results = list(seen.values())
    front = pareto_of(all_results, quality)
    front_path = results_path.with_suffix(".pareto.json")
    temporary = front_path.with_name("." + front_path.name + ".tmp")
    temporary.write_text(front.model_dump_json(indent=2) + "\n", encoding="utf-8")
    temporary.replace(front_path)
    return SweepOutcome(all_results, front, front_path)


def read_front(path: Path) -> ParetoFront:
    from edgegen.schema.base import load_strict_json
    from edgegen.schema.pipeline import PIPELINE_RESULTS_SCHEMA_VERSION

    return load_strict_json(Path(path), ParetoFront, PIPELINE_RESULTS_SCHEMA_VERSION, "Pareto front")


def describe_front(front: ParetoFront) -> str:
    return json.dumps({"quality": front.quality_metric, "front": front.front})
