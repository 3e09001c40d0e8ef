"""Whole-pipeline latency and memory, measured in a fresh process (``python -m edgegen.measure.pipeline_profile``).

Cold load is the first load of every component in that process (files read, graphs built);
warm load is a second load right after it. Then warm-up images and timed images of one prompt:
per component per call, per denoising step, end to end, and the host overhead (end to end minus
the time inside components: tokenizing, the scheduler, copies). Peak memory is the process's
high-water mark over its baseline after importing the runtimes, with every component resident.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.sampling.loop import SamplingPlan
from edgegen.schema.pipeline import ComponentTiming, PipelineLatency, PipelineMemory

PROFILE_PROMPT = "a red circle at the top left"


def _percentiles(values: list[float]) -> tuple[float, float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(np.percentile(array, 50)), float(np.percentile(array, 90)), float(array.mean())


def profile_in_this_process(model_dir: Path, artifact_dirs: dict[str, Path] | None, plan: SamplingPlan, warmup: int, runs: int, threads: int) -> tuple[PipelineLatency, PipelineMemory]:
    import torch

    from edgegen.sampling.loop import check_artifacts, initial_latents, load_case, load_tokenizer_and_scheduler
    from edgegen.measure.profiling import peak_rss_mb, start_peak_window
    from edgegen.session import runtime_for

    torch.set_num_threads(threads)
    if artifact_dirs:
        for artifact in check_artifacts(model_dir, artifact_dirs).values():
            runtime_for(artifact.manifest).import_toolchain()
    # The tokenizer's and scheduler's libraries load once per process: the baseline, not the models.
    load_tokenizer_and_scheduler(model_dir)

    baseline = start_peak_window()
    start = time.perf_counter()
    case = load_case(model_dir, artifact_dirs, plan, threads)
    cold_ms = (time.perf_counter() - start) * 1000.0
    start = time.perf_counter()
    again = load_case(model_dir, artifact_dirs, plan, threads)
    warm_ms = (time.perf_counter() - start) * 1000.0
    del again
    latents = initial_latents(case.latent_shape, 0)
    for _ in range(warmup):
        case.generate(PROFILE_PROMPT, latents, 0)
    generations = [case.generate(PROFILE_PROMPT, latents, 0) for _ in range(runs)]
    peak = peak_rss_mb()

    per_component = []
    for name in ("text_encoder", "denoiser", "vae_decoder"):
        calls = [ms for g in generations for ms in g.call_ms.get(name, [])]
        p50, p90, mean = _percentiles(calls)
        per_component.append(ComponentTiming(component=name, calls_per_image=len(generations[0].call_ms.get(name, [])), p50_ms=p50, p90_ms=p90, mean_ms=mean))
    totals = [g.total_ms for g in generations]
    inside = [sum(sum(v) for v in g.call_ms.values()) for g in generations]
    steps_ms = [(g.total_ms - sum(g.call_ms["text_encoder"]) - sum(g.call_ms["vae_decoder"])) / plan.steps for g in generations]
    total_p50, total_p90, _ = _percentiles(totals)
    latency = PipelineLatency(
        warmup_runs=warmup,
        timed_runs=runs,
        steps=plan.steps,
        calls_per_step=plan.calls_per_step,
        per_component=per_component,
        per_step_p50_ms=_percentiles(steps_ms)[0],
        host_overhead_p50_ms=_percentiles([t - i for t, i in zip(totals, inside)])[0],
        total_p50_ms=total_p50,
        total_p90_ms=total_p90,
        cold_load_ms=cold_ms,
        warm_load_ms=warm_ms,
    )
    return latency, PipelineMemory(baseline_rss_mb=baseline, peak_rss_mb=peak, added_mb=max(0.0, peak - baseline))


def profile_pipeline(model_dir: Path, artifact_dirs: dict[str, Path] | None, plan: SamplingPlan, warmup: int = 1, runs: int = 5, threads: int = 1) -> tuple[PipelineLatency, PipelineMemory]:
    """Profile one case in a fresh subprocess; its one-line error becomes ours."""
    if runs < 1 or warmup < 0:
        raise EdgegenError("--runs must be at least 1 and --warmup at least 0")
    command = [sys.executable, "-m", "edgegen.measure.pipeline_profile", str(model_dir), "--steps", str(plan.steps), "--guidance-scale", str(plan.guidance_scale), "--warmup", str(warmup), "--runs", str(runs), "--threads", str(threads)]
    if plan.few_step_timesteps:
        command += ["--few-step", ",".join(map(str, plan.few_step_timesteps))]
    for name, folder in (artifact_dirs or {}).items():
        command += ["--artifact", f"{name}={folder}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore", TQDM_DISABLE="1")
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.strip().splitlines() if line.startswith("error: ")]
        raise EdgegenError(lines[-1][len("error: "):] if lines else f"pipeline profiling exited {completed.returncode}: {completed.stderr.strip().splitlines()[-1:] }")
    data = json.loads(completed.stdout.strip().splitlines()[-1])
    return PipelineLatency.model_validate(data["latency"]), PipelineMemory.model_validate(data["memory"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgegen.measure.pipeline_profile")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--artifact", action="append", default=[])
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--few-step", default="")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    artifacts = dict(item.split("=", 1) for item in args.artifact) or None
    few = tuple(int(t) for t in args.few_step.split(",")) if args.few_step else None
    plan = SamplingPlan(args.steps, args.guidance_scale, few)
    try:
        latency, memory = profile_in_this_process(args.model_dir, {k: Path(v) for k, v in artifacts.items()} if artifacts else None, plan, args.warmup, args.runs, args.threads)
    except EdgegenError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"latency": latency.model_dump(mode="json"), "memory": memory.model_dump(mode="json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
