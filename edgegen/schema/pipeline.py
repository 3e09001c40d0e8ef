"""Results of whole-pipeline runs (``edgegen compare --prompts``, ``edgegen sweep``, the demo),
read by ``edgegen report``.

A results file is JSON Lines: one ``PipelineResult`` per line, appended (and flushed) as each
case finishes, so an interrupted run keeps every finished case. Generated images are PNG files
beside it, ``<images_dir>/<prompt index>.png`` with ``images_dir`` relative to the results file.

Two kinds of quality numbers are kept apart: ``export_fidelity`` (an exported student vs the
same student in eager float32, same prompts, seeds and initial latents) and ``distillation_gap``
(any case vs the eager teacher).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from edgegen.errors import EdgegenError
from edgegen.schema.base import StrictModel, validate_strict
from edgegen.schema.results import Host, Memory

PIPELINE_RESULTS_SCHEMA_VERSION = 1


class ComponentTiming(StrictModel):
    component: str  # as the pipeline's family names it: text_encoder, denoiser, vae_decoder, transformer, ...
    calls_per_image: int  # the denoiser: steps * calls_per_step
    p50_ms: float  # per call
    p90_ms: float
    mean_ms: float


class PipelineLatency(StrictModel):
    warmup_runs: int
    timed_runs: int
    steps: int
    calls_per_step: int  # 2 with classifier-free guidance on a batch-1 denoiser
    per_component: list[ComponentTiming]
    per_step_p50_ms: float  # the denoiser calls and the scheduler update of one step
    host_overhead_p50_ms: float  # end-to-end minus time inside components (scheduler, copies, casts)
    total_p50_ms: float  # one image, prompt to pixels
    total_p90_ms: float
    cold_load_ms: float  # loading every component, first time in a fresh process
    warm_load_ms: float  # loading them again in the same process


class ExportFidelity(StrictModel):
    reference: str  # e.g. "student eager float32 (path)"
    latent_psnr_db_per_step: list[float]  # mean over prompts, one per denoising step
    image_psnr_db: float  # mean over prompts
    image_ssim: float


class DistillationGap(StrictModel):
    reference: str  # e.g. "teacher eager float32, 20 steps (path)"
    image_psnr_db: float
    image_ssim: float
    faithfulness: float | None = None  # fraction of images whose probed attributes match the caption
    reference_faithfulness: float | None = None  # the teacher's own, on the same prompts
    fid: float | None = None
    kid: float | None = None
    clip_score: float | None = None
    feature_extractor: str | None = None  # the local path FID/KID features came from


class BudgetCheck(StrictModel):
    name: str  # e.g. "min_psnr", "max_fid_gap"
    limit: float
    value: float | None
    passed: bool


class PipelineResult(StrictModel):
    schema_version: int = PIPELINE_RESULTS_SCHEMA_VERSION
    kind: Literal["pipeline"] = "pipeline"
    case_id: str  # unique within a results file, e.g. "student/tflite-int8/4-steps"
    role: Literal["teacher", "student"]
    model_dir: str
    model_sha256: str  # checkpoint hash of the denoiser's weights
    pipeline_family: str  # hash of what must match across compared cases (tokenizer, VAE, latent shape)
    runtime: str  # "eager" or the target's runtime name
    target: str | None = None
    backend: str | None = None
    quantization: str = "none"
    artifact_dirs: dict[str, str] = {}  # component -> artifact folder
    size_bytes: int  # model weights on disk, all components
    parameters: int | None = None  # denoiser parameters
    steps: int
    guidance_scale: float
    image_size: int
    scman_summary_tokens: int | None = None
    prompts: list[str]
    seeds: list[int]
    images_dir: str | None = None
    host: Host
    latency: PipelineLatency | None = None
    memory: Memory | None = None
    export_fidelity: ExportFidelity | None = None
    distillation_gap: DistillationGap | None = None
    budgets: list[BudgetCheck] = []
    not_run_reason: str | None = None  # e.g. "Core ML prediction needs macOS"


class ParetoFront(StrictModel):
    """``edgegen sweep``'s front, written beside its results as ``<results>.pareto.json``."""

    schema_version: int = PIPELINE_RESULTS_SCHEMA_VERSION
    kind: Literal["pareto"] = "pareto"
    quality_metric: str  # psnr | ssim | faithfulness | fid | kid | clip (vs the eager teacher)
    quality_higher_is_better: bool
    cost_axes: list[str]  # latency_p50_ms, peak_added_mb, size_bytes: all minimised
    considered: list[str]  # case_ids with every axis measured (student cases that ran and were timed)
    front: list[str]  # case_ids no other considered case beats on every axis at once


def read_results_file(path: Path, complete_lines_only: bool = False) -> list[PipelineResult]:
    """Every line of a results file, validated here once for ``compare``, ``sweep`` and ``report``.

    A line that is not a current pipeline result is refused in one line naming it (never skipped:
    a skipped case would silently run again or vanish from a report). A last line cut short by an
    interrupted run is cut before the next append (``drop_partial_last_line``), not read here;
    ``complete_lines_only`` reads the file as it is before that cut (a last line without its
    newline is left out).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        if complete_lines_only and text and not text.endswith("\n"):
            lines = lines[:-1]
    except FileNotFoundError:
        raise EdgegenError(f"results file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise EdgegenError(f"cannot read results file {path}: {error}") from None
    results = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            raise EdgegenError(f"{where} is not JSON (a pipeline results file has one JSON object per line)") from None
        results.append(validate_strict(data, PipelineResult, PIPELINE_RESULTS_SCHEMA_VERSION, where, "pipeline result"))
    return results
