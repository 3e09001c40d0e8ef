"""Teacher vs student vs exported student, image by image over a prompt file.

Every case generates the same prompts from the same seeds and injected initial latents. Two
kinds of numbers are kept apart:
- export fidelity, an exported student against the same student in eager float32: per-step
  latent PSNR (peak-based, as the export parity gate) and final-image PSNR/SSIM (torchmetrics);
- distillation gap, any case against the eager teacher: image PSNR/SSIM, caption faithfulness
  (``--probe``), FID/KID over the prompts' images (``--feature-extractor``), CLIP score (``--clip``).
Each finished case is appended to the results file at once (JSON Lines), with its PNGs, so an
interrupted run keeps what it finished; a rerun skips the cases already there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.measure.metric_registry import BUDGETS, unmeasured
from edgegen.measure.metrics import psnr_db
from edgegen.families import Family, components_with_role, family_of
from edgegen.exporting.one_call import PIPELINE_COMPONENT
from edgegen.sampling.loop import Generation, SamplingPlan, check_artifacts, check_program_plan, initial_latents, load_case, pipeline_family, sampling_plan
from edgegen.schema.base import StrictModel
from edgegen.schema.pipeline import (
    BudgetCheck,
    DistillationGap,
    ExportFidelity,
    PipelineResult,
    read_results_file,
)


class Budgets:
    """Limits by budget name (``min_psnr``, ``max_fid_gap``, ...: the metric registry's budgets)."""

    def __init__(self, **limits: float | None) -> None:
        unknown = sorted(set(limits) - set(BUDGETS))
        if unknown:
            raise TypeError(f"unknown budget '{unknown[0]}'; budgets: {', '.join(BUDGETS)}")
        self.limits = {name: limit for name, limit in limits.items() if limit is not None}

    def refuse_unmeasurable(self, probe_dir: Path | None, feature_extractor: Path | None, clip_dir: Path | None) -> None:
        """A budget on a metric nobody asked to measure would fail every case: say so up front."""
        for name, metric in BUDGETS.items():
            needed = unmeasured(metric, probe_dir, feature_extractor, clip_dir) if name in self.limits else None
            if needed:
                raise EdgegenError(f"{metric.budget_flag} needs {needed}")

    def check(self, result: PipelineResult) -> list[BudgetCheck]:
        checks = []
        for name, metric in BUDGETS.items():
            limit = self.limits.get(name)
            value = metric.read(result)
            if limit is None or (value is None and result.role == "teacher"):
                continue
            if value is None and metric.exported_only and result.runtime == "eager":
                continue  # export budgets apply to exported cases
            checks.append(BudgetCheck(name=name, limit=limit, value=value, passed=value is not None and metric.passes(value, limit)))
        return checks


@dataclass
class Case:
    case_id: str
    role: str
    model_dir: Path
    plan: SamplingPlan
    artifact_dirs: dict[str, Path] | None = None
    label: str = "eager float32"
    artifacts: dict[str, Any] | None = None  # loaded and checked against model_dir


@dataclass
class Outcome:
    images: np.ndarray  # N x 3 x H x W in [-1, 1]
    step_latents: list[list[np.ndarray]] = field(default_factory=list)  # per prompt, per step


# A text encoder reads a few dozen tokens; a longer line is almost surely not a prompt (a file read
# the wrong way, a missing newline), and truncating it silently would compare something else.
MAX_PROMPT_CHARS = 2000


def read_prompts(path: Path) -> list[str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgegenError(f"prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise EdgegenError(f"cannot read prompt file {path}: {error}") from None
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) > MAX_PROMPT_CHARS:  # the tokenizer would cut it silently to its 77 tokens or so
            raise EdgegenError(
                f"{path}:{number}: prompt of {len(line)} characters; the limit is {MAX_PROMPT_CHARS} (one prompt per line)"
            )
        prompts.append(line)
    if not prompts:
        raise EdgegenError(f"prompt file {path} holds no prompts (one per line)")
    return prompts


def artifact_sets(root: Path, family: Family) -> dict[str, dict[str, Path]]:
    """Folders written by ``edgegen export`` grouped into pipelines: label -> component -> folder."""
    from edgegen.schema.manifest import MANIFEST_FILENAME

    root = Path(root)
    if not root.is_dir():
        raise EdgegenError(f"artifact folder not found: {root}")
    names = [spec.name for spec in family.components]
    sets: dict[str, dict[str, Path]] = {}
    for folder in sorted(p for p in root.iterdir() if (p / MANIFEST_FILENAME).is_file()):
        if folder.name.startswith(PIPELINE_COMPONENT + "-"):
            # A one-call program is a set of its own; its steps are in the case id already.
            label = re.sub(r"-\d+-steps$", "", folder.name[len(PIPELINE_COMPONENT) + 1:]) + "-one-call"
            if label in sets:
                raise EdgegenError(f"{root} holds one-call programs of several step counts ({sets[label][PIPELINE_COMPONENT].name}, {folder.name}); keep one per folder")
            sets[label] = {PIPELINE_COMPONENT: folder}
            continue
        # Longest name first: "text_encoder_2-onnx" is not a "text_encoder" artifact labelled "2-onnx".
        for component in sorted(names, key=len, reverse=True):
            if folder.name.startswith(component + "-"):
                sets.setdefault(folder.name[len(component) + 1:], {})[component] = folder
                break
    if not sets:
        raise EdgegenError(f"{root} holds no artifacts written by `edgegen export`")
    incomplete = {label: [n for n in names if n not in parts] for label, parts in sets.items() if set(parts) != set(names) and PIPELINE_COMPONENT not in parts}
    if incomplete:
        label, missing = next(iter(incomplete.items()))
        raise EdgegenError(f"{root}: the '{label}' artifacts lack {', '.join(missing)}; export every component ({', '.join(names)})")
    return sets


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def folder_size(model_dir: Path, family: Family) -> int:
    return sum(p.stat().st_size for spec in family.components for p in (Path(model_dir) / spec.subfolder).glob("*.safetensors"))


def denoiser_parameters(model_dir: Path, family: Family) -> int | None:
    from safetensors import safe_open

    total = 0
    subfolder = components_with_role(family, "denoiser")[0].subfolder
    files = list((Path(model_dir) / subfolder).glob("diffusion_pytorch_model*.safetensors"))
    for path in files:
        with safe_open(str(path), "np") as handle:
            for key in handle.keys():
                total += int(np.prod(handle.get_slice(key).get_shape()))
    return total or None


def _save_images(images: np.ndarray, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        pixels = ((np.clip(image, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(pixels).save(folder / f"{index}.png")


def existing_case_ids(results_path: Path) -> set[str]:
    """Case ids already in a results file (after ``drop_partial_last_line``): those cases are skipped."""
    return {result.case_id for result in read_results(results_path)}


def drop_partial_last_line(results_path: Path) -> None:
    """Cut a last line that an interrupted run left unfinished, so the next append starts clean."""
    if not results_path.is_file():
        return
    # Only a results file's own half-written line is cut: every complete line must be a result
    # (refused untouched otherwise), and the fragment must be the start of a JSON object.
    read_results_file(results_path, complete_lines_only=True)
    data = results_path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        if not data[cut:].lstrip().startswith(b"{"):
            raise EdgegenError(f"{results_path} is not a results file (its last line is not a result cut short); give -o a results file or a new path")
        results_path.write_bytes(data[:cut])


def read_results(results_path: Path) -> list[PipelineResult]:
    """Every result in a results file (none if there is no file yet); a bad line is refused in one line."""
    return read_results_file(results_path) if Path(results_path).is_file() else []


def scman_summary_tokens(model_dir: Path) -> int | None:
    from edgegen.models.checkpoint import read_student_manifest

    manifest = read_student_manifest(model_dir)
    return manifest.scman.summary_tokens if manifest and manifest.scman else None


def append_result(results_path: Path, result: StrictModel) -> None:
    from edgegen.errors import writing

    with writing(results_path), results_path.open("a", encoding="utf-8") as handle:
        handle.write(result.model_dump_json() + "\n")
        handle.flush()


def generate_all(case: Case, prompts: list[str], seeds: list[int], threads: int) -> Outcome:
    pipeline = load_case(case.model_dir, case.artifact_dirs, case.plan, threads)
    generations: list[Generation] = [pipeline.generate(p, initial_latents(pipeline.latent_shape, s), s) for p, s in zip(prompts, seeds)]
    return Outcome(np.stack([g.image for g in generations]), [g.step_latents for g in generations])


def _mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("inf")


def run_comparison(
    prompts: list[str],
    teacher_dir: Path,
    student_dir: Path,
    artifact_roots: list[Path],
    results_path: Path,
    steps: int = 20,
    guidance_scale: float = 1.0,
    seed: int = 0,
    probe_dir: Path | None = None,
    feature_extractor: Path | None = None,
    clip_dir: Path | None = None,
    runs: int = 5,
    warmup: int = 1,
    threads: int = 1,
    budgets: Budgets = Budgets(),
    student_steps: int | None = None,
    student_label: str = "student",
    on_step: Callable[[str], None] = lambda message: None,
) -> list[PipelineResult]:
    from edgegen.measure.profiling import host_info
    from edgegen.measure.quality import OnnxFeatures, clip_score, distribution_gap, image_psnr_db, image_ssim
    from edgegen.session import runtime_for
    from edgegen.families.loading import check_pipeline_dir, checkpoint_sha256

    teacher_dir, student_dir = check_pipeline_dir(teacher_dir), check_pipeline_dir(student_dir)
    budgets.refuse_unmeasurable(probe_dir, feature_extractor, clip_dir)
    student_family = family_of(student_dir)
    family = pipeline_family(teacher_dir)
    if pipeline_family(student_dir) != family:
        raise EdgegenError(f"{student_dir} does not share {teacher_dir}'s tokenizer and latent space; their images cannot be compared")
    probe = None
    if probe_dir is not None:
        from edgegen.embedded.probe import load_probe

        probe = load_probe(probe_dir)
    extractor = OnnxFeatures(feature_extractor) if feature_extractor is not None else None
    if clip_dir is not None and not Path(clip_dir).is_dir():
        raise EdgegenError(f"CLIP folder not found: {clip_dir}")
    sets = {}
    for root in artifact_roots:
        for label, parts in artifact_sets(root, student_family).items():
            sets[label] = parts
    # Mixed pipelines or corrupt artifacts are refused before any case runs or anything is written.
    checked = {label: check_artifacts(student_dir, parts) for label, parts in sets.items()}
    seeds = [seed + index for index in range(len(prompts))]
    student_plan = sampling_plan(student_dir, student_steps or steps, guidance_scale, few_steps=student_steps)
    for parts in checked.values():
        if PIPELINE_COMPONENT in parts:
            check_program_plan(parts[PIPELINE_COMPONENT], student_plan)
    teacher_plan = sampling_plan(teacher_dir, steps, guidance_scale, use_student_schedule=False)
    steps_label = f"{student_plan.steps}-steps"
    cases = [Case(f"teacher/eager/{teacher_plan.steps}-steps", "teacher", teacher_dir, teacher_plan), Case(f"{student_label}/eager/{steps_label}", "student", student_dir, student_plan)]
    for label, parts in sets.items():
        cases.append(Case(f"{student_label}/{label}/{steps_label}", "student", student_dir, student_plan, parts, label, checked[label]))

    results_path = Path(results_path)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    drop_partial_last_line(results_path)
    done = existing_case_ids(results_path)
    stored = {r.case_id: r for r in read_results(results_path)}
    results: list[PipelineResult] = []
    outcomes: dict[str, Outcome] = {}
    faithfulness_of_teacher = None
    for case in cases:
        role_dir = case.model_dir
        artifacts = case.artifacts
        first = next(iter(artifacts.values())).manifest if artifacts else None
        reason = runtime_for(first).unavailable_reason(first) if first else None
        base = dict(
            case_id=case.case_id,
            role=case.role,
            model_dir=str(role_dir.resolve()),
            model_sha256=checkpoint_sha256(role_dir, components_with_role(student_family, "denoiser")[0].subfolder),
            pipeline_family=family,
            runtime=first.target if first else "eager",
            target=first.target if first else None,
            backend=first.backend if first else None,
            quantization=first.precision if first else "none",
            artifact_dirs={k: str(Path(v).resolve()) for k, v in (case.artifact_dirs or {}).items()},
            size_bytes=sum(a.model_bytes for a in artifacts.values()) if artifacts else folder_size(role_dir, student_family),
            parameters=denoiser_parameters(role_dir, student_family),
            steps=case.plan.steps,
            guidance_scale=case.plan.guidance_scale,
            image_size=0,
            scman_summary_tokens=scman_summary_tokens(role_dir),
            prompts=prompts,
            seeds=seeds,
            host=host_info(threads),
        )
        if reason:
            on_step(f"{case.case_id}: not run here ({reason})")
            result = PipelineResult(**base, not_run_reason=reason)
            if case.case_id not in done:
                append_result(results_path, result)
            results.append(result)
            continue
        on_step(f"generating {len(prompts)} image(s): {case.case_id}")
        outcome = generate_all(case, prompts, seeds, threads)
        outcomes[case.case_id] = outcome
        base["image_size"] = int(outcome.images.shape[-1])
        images_dir = Path("images") / slug(case.case_id)
        teacher_images = outcomes[cases[0].case_id].images
        fidelity = gap = None
        if case.artifact_dirs:
            float_student = outcomes[cases[1].case_id]
            per_step = [
                _mean([psnr_db(ref[i], out[i]) for ref, out in zip(float_student.step_latents, outcome.step_latents)])
                for i in range(len(outcome.step_latents[0]))  # none for a one-call program
            ]
            fidelity = ExportFidelity(
                reference=f"student eager float32 ({student_dir})",
                latent_psnr_db_per_step=per_step,
                image_psnr_db=_mean([image_psnr_db(r, o) for r, o in zip(float_student.images, outcome.images)]),
                image_ssim=_mean([image_ssim(r, o) for r, o in zip(float_student.images, outcome.images)]),
            )
        faithful = None
        if probe is not None:
            from edgegen.embedded.probe import faithfulness

            faithful = faithfulness(probe, outcome.images, prompts).fraction_all
            if case.role == "teacher":
                faithfulness_of_teacher = faithful
        fid = kid = None
        if extractor is not None and case.role != "teacher":
            fid, kid = distribution_gap(extractor, teacher_images, outcome.images)
        clip = clip_score(clip_dir, outcome.images, prompts) if clip_dir is not None else None
        if case.role == "teacher":
            gap = DistillationGap(reference=f"teacher eager float32, {case.plan.steps} steps ({teacher_dir})", image_psnr_db=float("inf"), image_ssim=1.0, faithfulness=faithful, reference_faithfulness=faithful, clip_score=clip)
        else:
            gap = DistillationGap(
                reference=f"teacher eager float32, {teacher_plan.steps} steps ({teacher_dir})",
                image_psnr_db=_mean([image_psnr_db(r, o) for r, o in zip(teacher_images, outcome.images)]),
                image_ssim=_mean([image_ssim(r, o) for r, o in zip(teacher_images, outcome.images)]),
                faithfulness=faithful,
                reference_faithfulness=faithfulness_of_teacher,
                fid=fid,
                kid=kid,
                clip_score=clip,
                feature_extractor=str(Path(feature_extractor).resolve()) if feature_extractor else None,
            )
        latency = memory = None
        if case.case_id not in done and runs > 0:
            on_step(f"profiling {case.case_id}")
            from edgegen.measure.pipeline_profile import profile_pipeline

            latency, memory = profile_pipeline(role_dir, case.artifact_dirs, case.plan, warmup, runs, threads)
        result = PipelineResult(**base, images_dir=str(images_dir), latency=latency, memory=memory, export_fidelity=fidelity, distillation_gap=gap)
        result = result.model_copy(update={"budgets": budgets.check(result)})
        if case.case_id not in done:
            _save_images(outcome.images, results_path.parent / images_dir)
            append_result(results_path, result)
        results.append(stored.get(case.case_id, result))  # a finished case keeps what it measured
    return results
