"""``edgegen sweep``: the student over targets x precision x steps (x SCMAN summary tokens), with
the Pareto front of latency, memory and size against quality."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgegen.cli.bounds import file_output, finite
from edgegen.measure.metric_registry import SWEEP_QUALITIES
from edgegen.terminal import console, print_json, quiet


def sweep_command(
    teacher: Annotated[Path, typer.Option(help="The teacher's diffusers pipeline folder (the quality reference).")],
    student: Annotated[Path, typer.Option(help="The student pipeline folder to sweep.")],
    prompts: Annotated[Path, typer.Option(help="Prompt file, one per line.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Results file (JSON Lines, appended; a rerun resumes). Exports go to <stem>-work/ beside it.", callback=file_output)] = Path("out/sweep/results.jsonl"),
    targets: Annotated[str | None, typer.Option(help="Comma-separated targets; default: every one this machine exports to.", show_default=False)] = None,
    precisions: Annotated[str, typer.Option(help="Comma-separated: float, int8.")] = "float,int8",
    steps: Annotated[str, typer.Option(help="Comma-separated student step counts.")] = "2,4",
    summary_tokens: Annotated[str, typer.Option(help="Comma-separated SCMAN summary budgets (pooled-summary students only); default: the student's own.")] = "",
    teacher_steps: Annotated[int, typer.Option(help="The teacher's steps (the reference images).", min=1)] = 20,
    guidance_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale; 1 turns it off.", min=0, callback=finite)] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the first prompt's initial latents (prompt i uses seed+i).")] = 0,
    quality: Annotated[str, typer.Option(help=f"Quality axis of the front: {', '.join(SWEEP_QUALITIES)} (vs the teacher).")] = "psnr",
    runs: Annotated[int, typer.Option(help="Timed images per case (latency and memory; the front needs at least 1).")] = 3,
    probe: Annotated[Path | None, typer.Option(help="Caption-faithfulness probe folder.", show_default=False)] = None,
    feature_extractor: Annotated[Path | None, typer.Option(help="ONNX feature extractor for FID/KID.", show_default=False)] = None,
    clip: Annotated[Path | None, typer.Option(help="Local transformers CLIP folder for the CLIP score.", show_default=False)] = None,
    threads: Annotated[int, typer.Option(help="CPU threads for the runtimes.", min=1)] = 1,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results and the front as JSON.")] = False,
) -> None:
    """Sweep the student over targets x precision x steps and print the Pareto front."""
    quiet()
    from edgegen.errors import EdgegenError
    from edgegen.measure.pipeline_fidelity import read_prompts
    from edgegen.exporting.targets import exportable_targets
    from edgegen.report.sweep import SweepAxes, parse_list, run_sweep

    if runs < 1:
        raise EdgegenError("--runs must be at least 1: the Pareto front needs latency and memory")
    axes = SweepAxes(
        targets=parse_list(targets, str, "--targets") if targets else exportable_targets(),
        precisions=parse_list(precisions, str, "--precisions"),
        steps=parse_list(steps, int, "--steps"),
        summary_tokens=parse_list(summary_tokens, int, "--summary-tokens"),
    )
    axes.check()
    prompt_list = read_prompts(prompts)
    outcome = run_sweep(
        teacher, student, prompt_list, output, axes, teacher_steps=teacher_steps, guidance_scale=guidance_scale,
        seed=seed, quality=quality, runs=runs, threads=threads, probe_dir=probe, feature_extractor=feature_extractor,
        clip_dir=clip, on_step=(lambda message: None) if json_output else (lambda message: console.print(message, highlight=False)),
    )
    if json_output:
        print_json({"results": [r.model_dump(mode="json") for r in outcome.results], "pareto": outcome.front.model_dump(mode="json")})
        return
    from edgegen.report.tables import pipeline_table

    on_front = set(outcome.front.front)
    ordered = sorted(outcome.results, key=lambda r: (r.case_id not in on_front, r.case_id))
    console.print(pipeline_table(ordered, title=f"sweep: {len(outcome.results)} cases; Pareto front on latency, memory, size vs {quality}"))
    console.print(f"Pareto front ({len(on_front)} of {len(outcome.front.considered)} timed student cases): {', '.join(outcome.front.front) or '-'}")
    console.print(f"results: {output}; front: {outcome.front_path}")
