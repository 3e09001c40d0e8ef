"""The shipped student against the issue's goals: the few-step student (with the VAE's decoder and
with its tiny one) exported to every runnable target in float and int8, by component and (with its
tiny decoder) as one-call programs (float, int8, and int8 with the sensitive layers float:
``--quantize auto``), at 2 and 1 steps, against the eager 20-step teacher measured in the same run.

    python benchmarks/shipped_student.py [--target tflite ...] [--runs 20] [--prompts 48]

Every case generates the same captions from the same seeds and initial latents (all 48 of the
shapes data by default), and is timed in a fresh process on one thread (p50 per image over
--runs after a warm-up). Faithfulness is the probe's; the goals: >= 150x the teacher's per-image
speed at >= 95% of its faithfulness, and every int8 pipeline at >= 95% of its float twin's
faithfulness. Prints a table, then the JSON (also written to --output/shipped_student.json).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from pathlib import Path

from _common import emit, fmt  # the benchmarks' shared helper, beside this script

SPEEDUP_GOAL = 150.0
FAITHFULNESS_SHARE = 0.95
MEMORY_GOAL = 1.5  # peak RSS <= 1.5 x (artifact bytes + the runtime's import baseline)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=48, help="how many of the 48 shapes captions")
    parser.add_argument("--output", type=Path, default=Path("out/shipped_student"))
    parser.add_argument("--program-min-psnr", type=float, default=40.0, help="the --min-psnr of the mixed-precision one-call programs")
    parser.add_argument("--program-min-faithfulness", type=float, default=None, help="also a caption-faithfulness budget (share of float, with the embedded probe) for the mixed-precision programs")
    parser.add_argument("--qat-steps", type=int, default=1000, help="steps of `edgegen train qat component=pipeline scheme=litert` per program (0: none); the 1-step program kept 45/48 captions after 300, 47/48 after 1000")
    args = parser.parse_args()

    from edgegen.data.shapes import attributes_of, caption_for
    from edgegen.embedded.builders import PROBE_DIR
    from edgegen.embedded.demo import DEMO_STEPS, FEWSTEP_STEPS, ensure_default_pipeline, export_few_step_students
    from edgegen.exporting.one_call import PIPELINE_COMPONENT
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.exporting.targets import usable_targets
    from edgegen.families.loading import load_pipeline
    from edgegen.measure.faithfulness_budget import FaithfulnessBudget
    from edgegen.measure.pipeline_fidelity import run_comparison
    from edgegen.registry import EXPORTERS
    from edgegen.terminal import quiet

    quiet()
    targets = args.target or [t for t in usable_targets() if t != "coreml"]
    prompts = [caption_for(**attributes_of(index)) for index in range(args.prompts)]
    work = args.output
    teacher_dir = ensure_default_pipeline(work / "teacher")
    students = export_few_step_students(work, teacher_dir, targets, ["float", "int8"], lambda message: print(message, file=sys.stderr))
    # The one-call programs again with --quantize auto: int8 but for the layers a sensitivity
    # analysis keeps float to meet --program-min-psnr (all-int8 programs lose a few captions).
    label, folder, roots = students[-1]
    student = load_pipeline(folder)
    for target in [t for t in targets if getattr(EXPORTERS.get(t), "mixed_precision", False)]:
        for steps in FEWSTEP_STEPS:
            print(f"exporting {label} as one {steps}-step call -> {target} auto", file=sys.stderr)
            budget = FaithfulnessBudget(PROBE_DIR, args.program_min_faithfulness) if args.program_min_faithfulness else None
            options = ExportOptions(quantize="auto", min_psnr_db=args.program_min_psnr, pipeline_steps=steps, faithfulness=budget)
            export_component(student, folder, PIPELINE_COMPONENT, target, roots[steps][-1], options, force=True)
    if args.qat_steps and "tflite" in targets:
        students += _qat_programs(work, label, folder, args.qat_steps)
    results_path = work / "results.jsonl"
    results_path.unlink(missing_ok=True)
    results = []
    for label, folder, roots in students:
        for steps in [count for count in FEWSTEP_STEPS if count in roots]:
            compared = run_comparison(
                prompts, teacher_dir, folder, roots[steps], results_path, steps=DEMO_STEPS, student_steps=steps,
                student_label=label, probe_dir=PROBE_DIR, runs=args.runs,
            )
            results += [r for r in compared if r.role != "teacher" or not any(x.role == "teacher" for x in results)]
    teacher = next(r for r in results if r.role == "teacher")
    teacher_ms, teacher_faithful = teacher.latency.total_p50_ms, teacher.distillation_gap.faithfulness
    float_twin = {(r.case_id.split("/")[0], r.target, r.steps): r.distillation_gap.faithfulness for r in results if r.quantization == "none" and r.target}
    # A QAT program has no exported float twin: its float self is its folder run eagerly.
    eager_twin = {(r.case_id.split("/")[0], r.steps): r.distillation_gap.faithfulness for r in results if r.role != "teacher" and not r.target}
    rows, payload = [], {"teacher": {"case": teacher.case_id, "ms_per_image": teacher_ms, "faithfulness": teacher_faithful}, "cases": []}
    for r in results:
        if r.role == "teacher" or r.not_run_reason:
            continue
        speedup = teacher_ms / r.latency.total_p50_ms
        faithful = r.distillation_gap.faithfulness
        label = r.case_id.split("/")[0]
        twin = float_twin.get((label, r.target, r.steps), eager_twin.get((label, r.steps))) if r.quantization != "none" else None
        goal = speedup >= SPEEDUP_GOAL and faithful >= FAITHFULNESS_SHARE * teacher_faithful and (twin is None or faithful >= FAITHFULNESS_SHARE * twin)
        # Peak memory against what the pipeline must hold: its artifacts plus the runtime's import baseline.
        memory_ratio = r.memory.peak_rss_mb / (r.size_bytes / 2**20 + r.memory.baseline_rss_mb) if r.memory else None
        decoder = next((t.p50_ms for t in r.latency.per_component if t.component == "vae_decoder"), None)  # none apart in one call
        entry = {
            "case": r.case_id, "quantization": r.quantization, "steps": r.steps, "ms_per_image": r.latency.total_p50_ms,
            "decoder_ms": decoder, "speedup_vs_teacher": speedup, "faithfulness": faithful, "float_twin_faithfulness": twin,
            "size_bytes": r.size_bytes, "peak_added_mb": r.memory.added_mb if r.memory else None,
            "peak_vs_artifacts_and_baseline": memory_ratio, "meets_memory_goal": memory_ratio is not None and memory_ratio <= MEMORY_GOAL, "meets_goals": goal,
        }
        payload["cases"].append(entry)
        student, runtime, _ = r.case_id.split("/")
        rows.append([student.removeprefix("student-"), runtime, str(r.steps), fmt(r.latency.total_p50_ms, "{:.2f}"), fmt(decoder, "{:.3f}"), f"{speedup:.0f}x",
                     f"{faithful:.0%}", "-" if twin is None else f"{twin:.0%}", f"{r.size_bytes / 1024:.0f}",
                     fmt(entry["peak_added_mb"], "{:.1f}"), fmt(memory_ratio, "{:.2f}"), "yes" if goal else "no"])
    header = ["student", "runtime", "steps", "ms/image", "decoder ms", "vs teacher", "faithful", "float twin", "KiB", "peak +MiB", "peak / (KiB+base)", "goals"]
    title = f"shipped student vs the eager teacher ({teacher.steps} steps, {teacher_ms:.1f} ms/image, {teacher_faithful:.0%} faithful), {len(prompts)} captions, 1 thread"
    emit(title, header, rows, payload, work / "shipped_student.json")
    return 0


def _qat_programs(work: Path, label: str, folder: Path, steps: int) -> list[tuple[str, Path, dict[int, list[Path]]]]:
    """The tiny-decoder student's one-call programs trained as LiteRT int8 (``edgegen train qat
    component=pipeline scheme=litert``), one per step count, exported to LiteRT in int8 with
    their learned scales: [(label, its QAT folder, {steps: [artifact root]})].

    A program's scales hold for its own schedule, so each step count trains its own folder (whose
    float weights differ slightly from the student's).
    """
    from edgegen.embedded.demo import FEWSTEP_STEPS
    from edgegen.exporting.one_call import PIPELINE_COMPONENT
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.families.loading import load_pipeline
    from edgegen.registry import RECIPES
    from edgegen.trainers.loop import run_recipe

    recipe, students = RECIPES.get("qat"), []
    for count in FEWSTEP_STEPS:
        output = work / f"qat-program-{count}"
        print(f"training {label}'s {count}-step program as LiteRT int8 ({steps} steps) -> {output}", file=sys.stderr)
        overrides = [f"student={folder}", "component=pipeline", "scheme=litert", f"steps_in_program={count}", f"steps={steps}", f"output={output}", "checkpoint_every=100000"]
        shutil.rmtree(output, ignore_errors=True)
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the table and JSON
            qat_folder = run_recipe(recipe, recipe.resolve(None, overrides), show_progress=False)
        root = work / f"artifacts-qat-one-call-{count}"
        export_component(load_pipeline(qat_folder), qat_folder, PIPELINE_COMPONENT, "tflite", root, ExportOptions(quantize="int8", pipeline_steps=count), force=True)
        students.append((f"{label}-qat", qat_folder, {count: [root]}))
    return students


if __name__ == "__main__":
    sys.exit(main())
