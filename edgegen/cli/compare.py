"""``edgegen compare``: exported outputs vs the teacher.

Two forms: ``edgegen compare ARTIFACT_DIR --teacher T`` compares one component artifact on its
reference inputs; ``edgegen compare --prompts FILE --teacher T --student S [--artifacts DIR]...``
generates whole images with the teacher, the float student and every exported student.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgegen.cli.bounds import file_output, finite
from edgegen.measure.metric_registry import BUDGETS
from edgegen.terminal import console, fmt_db, print_json, quiet


def compare_command(
    artifact_dir: Annotated[Path | None, typer.Argument(help="An artifact folder written by `edgegen export` (component form).", show_default=False)] = None,
    teacher: Annotated[Path, typer.Option(help="The teacher's diffusers pipeline folder.")] = ...,
    prompts: Annotated[Path | None, typer.Option(help="Prompt file, one per line: compare whole pipelines.", show_default=False)] = None,
    student: Annotated[Path | None, typer.Option(help="The student pipeline folder (pipeline form).", show_default=False)] = None,
    artifacts: Annotated[list[Path] | None, typer.Option("--artifacts", help="A folder of exported student components (repeatable).", show_default=False)] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Results file (JSON Lines, appended); PNGs go beside it.", callback=file_output)] = Path("out/compare/results.jsonl"),
    steps: Annotated[int, typer.Option(help="Denoising steps (a few-step student uses its own schedule).", min=1)] = 20,
    student_steps: Annotated[int | None, typer.Option(help="Student steps, if not --steps; a few-step student takes the first N timesteps of its schedule.", min=1, show_default=False)] = None,
    guidance_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale; 1 turns it off.", min=0, callback=finite)] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the first prompt's initial latents (prompt i uses seed+i).")] = 0,
    probe: Annotated[Path | None, typer.Option(help="Caption-faithfulness probe folder.", show_default=False)] = None,
    feature_extractor: Annotated[Path | None, typer.Option(help="ONNX feature extractor for FID/KID (images [N,3,H,W] in [-1,1] -> features).", show_default=False)] = None,
    clip: Annotated[Path | None, typer.Option(help="Local transformers CLIP folder for the CLIP score.", show_default=False)] = None,
    runs: Annotated[int, typer.Option(help="Timed images per case for latency (0 skips profiling).", min=0)] = 5,
    min_psnr: Annotated[float | None, typer.Option(help=BUDGETS["min_psnr"].budget_help, show_default=False, callback=finite)] = None,
    min_ssim: Annotated[float | None, typer.Option(help=BUDGETS["min_ssim"].budget_help, show_default=False, callback=finite)] = None,
    min_faithfulness: Annotated[float | None, typer.Option(help=BUDGETS["min_faithfulness"].budget_help, show_default=False, callback=finite)] = None,
    max_fid_gap: Annotated[float | None, typer.Option(help=BUDGETS["max_fid_gap"].budget_help, show_default=False, callback=finite)] = None,
    max_kid_gap: Annotated[float | None, typer.Option(help=BUDGETS["max_kid_gap"].budget_help, show_default=False, callback=finite)] = None,
    min_clip_score: Annotated[float | None, typer.Option(help=BUDGETS["min_clip_score"].budget_help, show_default=False, callback=finite)] = None,
    min_teacher_psnr: Annotated[float | None, typer.Option(help=BUDGETS["min_teacher_psnr"].budget_help, show_default=False, callback=finite)] = None,
    threads: Annotated[int, typer.Option(help="CPU threads for the runtimes.", min=1)] = 1,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result(s) as JSON.")] = False,
) -> None:
    """Compare an artifact (or whole pipelines over --prompts) with the teacher."""
    quiet()
    from edgegen.errors import EdgegenError

    if prompts is None:
        if artifact_dir is None:
            raise EdgegenError("give an ARTIFACT_DIR, or --prompts with --student to compare whole pipelines")
        _compare_component(artifact_dir, teacher, threads, json_output)
        return
    if artifact_dir is not None:
        raise EdgegenError("the pipeline form takes --artifacts DIR, not an ARTIFACT_DIR argument")
    if student is None:
        raise EdgegenError("--prompts needs --student (the student pipeline folder)")
    from edgegen.measure.pipeline_fidelity import Budgets, read_prompts, run_comparison

    budgets = Budgets(
        min_psnr=min_psnr, min_ssim=min_ssim, min_teacher_psnr=min_teacher_psnr, min_faithfulness=min_faithfulness,
        max_fid_gap=max_fid_gap, max_kid_gap=max_kid_gap, min_clip_score=min_clip_score,
    )
    results = run_comparison(
        read_prompts(prompts), teacher, student, list(artifacts or []), output, steps=steps, student_steps=student_steps, guidance_scale=guidance_scale,
        seed=seed, probe_dir=probe, feature_extractor=feature_extractor, clip_dir=clip, runs=runs, threads=threads,
        budgets=budgets, on_step=lambda message: console.print(message, highlight=False) if not json_output else None,
    )
    if json_output:
        print_json([r.model_dump(mode="json") for r in results])
    else:
        from edgegen.report.tables import pipeline_table

        console.print(pipeline_table(results))
        console.print(f"results: {output}")
    failed = [check for r in results for check in r.budgets if not check.passed]
    for result in results:
        for check in result.budgets:
            if not check.passed:
                typer.echo(f"budget failed: {result.case_id}: {check.name} {check.value} vs limit {check.limit}", err=True)
    if failed:
        raise typer.Exit(1)


def _compare_component(artifact_dir: Path, teacher: Path, threads: int, json_output: bool) -> None:
    from edgegen.measure.component_fidelity import compare_artifact

    result = compare_artifact(artifact_dir, teacher, threads)
    if json_output:
        print_json(result.model_dump(mode="json"))
        return
    quality = result.quality
    note = "" if quality.same_checkpoint else " (the artifact came from other weights)"
    console.print(
        f"{result.component} on {result.runtime} vs teacher: PSNR {fmt_db(quality.psnr_db)} dB, "
        f"max abs error {quality.max_abs_error:.3g}, cosine {quality.cosine:.6f}{note}"
    )
