"""Whole-pipeline latency and memory, measured in a fresh process (``python -m edgegen.measure.pipeline_profile``).

Cold load is the first load of every component in that process (files read, graphs built);
warm load is a second load right after it. Then warm-up images and timed images of one prompt:
per component per call, per denoising step, end to end, and the host overhead (end to end minus
the time inside components: tokenizing, the scheduler, copies). Components are whichever the
pipeline's family calls, named as it names them. Peak memory is the process's
high-water mark over its baseline after importing the runtimes, with every component resident.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edgegen.measure.profiling import check_counts, measuring_main, memory_since, run_fresh_process, spread, start_peak_window
from edgegen.sampling.loop import SamplingPlan
from edgegen.schema.pipeline import ComponentTiming, PipelineLatency
from edgegen.schema.results import Memory

PROFILE_PROMPT = "a red circle at the top left"


def profile_in_this_process(model_dir: Path, artifact_dirs: dict[str, Path] | None, plan: SamplingPlan, warmup: int, runs: int, threads: int) -> tuple[PipelineLatency, Memory]:
    import torch

    from edgegen.exporting.one_call import PIPELINE_COMPONENT
    from edgegen.families import components_with_role, family_of
    from edgegen.sampling.loop import check_artifacts, initial_latents, load_case, load_tokenizers_and_scheduler
    from edgegen.session import runtime_for

    torch.set_num_threads(threads)
    if artifact_dirs:
        for artifact in check_artifacts(model_dir, artifact_dirs).values():
            runtime_for(artifact.manifest).import_toolchain()
    # The tokenizer's and scheduler's libraries load once per process: the baseline, not the models.
    load_tokenizers_and_scheduler(model_dir)

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
    memory = memory_since(baseline)

    per_component = []
    for name in generations[0].call_ms:  # every component the pipeline called, in call order
        timing = spread([ms for g in generations for ms in g.call_ms.get(name, [])])
        per_component.append(ComponentTiming(component=name, calls_per_image=len(generations[0].call_ms.get(name, [])), p50_ms=timing.p50, p90_ms=timing.p90, mean_ms=timing.mean))
    totals = [g.total_ms for g in generations]
    inside = [sum(sum(v) for v in g.call_ms.values()) for g in generations]
    # A one-call program holds every step: a step is its share of the image.
    denoisers = {spec.name for spec in components_with_role(family_of(model_dir), "denoiser")} | {PIPELINE_COMPONENT}
    # A step: the denoiser calls and the scheduler update, i.e. everything but the encoders and decoder.
    steps_ms = [(g.total_ms - sum(sum(ms) for name, ms in g.call_ms.items() if name not in denoisers)) / plan.steps for g in generations]
    total = spread(totals)
    latency = PipelineLatency(
        warmup_runs=warmup,
        timed_runs=runs,
        steps=plan.steps,
        calls_per_step=plan.calls_per_step,
        per_component=per_component,
        per_step_p50_ms=spread(steps_ms).p50,
        host_overhead_p50_ms=spread([t - i for t, i in zip(totals, inside)]).p50,
        total_p50_ms=total.p50,
        total_p90_ms=total.p90,
        cold_load_ms=cold_ms,
        warm_load_ms=warm_ms,
    )
    return latency, memory


def profile_pipeline(model_dir: Path, artifact_dirs: dict[str, Path] | None, plan: SamplingPlan, warmup: int = 1, runs: int = 5, threads: int = 1) -> tuple[PipelineLatency, Memory]:
    """Profile one case in a fresh subprocess; its one-line error becomes ours."""
    check_counts(warmup, runs)
    arguments = [str(model_dir), "--steps", str(plan.steps), "--guidance-scale", str(plan.guidance_scale), "--warmup", str(warmup), "--runs", str(runs), "--threads", str(threads)]
    if plan.few_step_timesteps:
        arguments += ["--few-step", ",".join(map(str, plan.few_step_timesteps))]
    for name, folder in (artifact_dirs or {}).items():
        arguments += ["--artifact", f"{name}={folder}"]
    data = json.loads(run_fresh_process("edgegen.measure.pipeline_profile", arguments, threads))
    return PipelineLatency.model_validate(data["latency"]), Memory.model_validate(data["memory"])


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

    def measure() -> str:
        latency, memory = profile_in_this_process(args.model_dir, {k: Path(v) for k, v in artifacts.items()} if artifacts else None, plan, args.warmup, args.runs, args.threads)
        return json.dumps({"latency": latency.model_dump(mode="json"), "memory": memory.model_dump(mode="json")})

    return measuring_main(measure)


if __name__ == "__main__":
    sys.exit(main())
