"""Where int8 costs caption faithfulness, component by component, and what QAT buys back.

    python benchmarks/int8_faithfulness.py [--qat-steps 300 (0: none)] [--batch-size 32] [--target executorch]

The embedded default's committed distilled student is exported to ``--target`` in float and in
post-training int8, one component at a time, and the whole pipeline is sampled over the 48
shapes-grid captions (seed i for caption i, 20 steps, guidance 1) with the other components
float: the caption-faithfulness probe and image PSNR against the eager teacher say which
component's int8 costs what. Then the same student is fine-tuned with quantization-aware KD-MMG
(``qat=true``) and its denoiser exported with the learned scales, alone and beside the other
components' post-training int8. Prints a table, then the JSON rows.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from _common import emit, fmt, train_qat_student  # the benchmarks' shared helper, beside this script


def artifact_sets(pipeline_dir: Path, target: str, root: Path, sets: dict[str, set[str]]) -> Path:
    """Export each needed (component, precision) once; lay out one pipeline per label under ``root / 'sets'``."""
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.families import component_names, family_of
    from edgegen.families.loading import load_pipeline

    pipeline = load_pipeline(pipeline_dir)
    components = component_names(family_of(pipeline_dir))
    exported: dict[tuple[str, str], Path] = {}
    layout = root / "sets"
    for label, quantized in sets.items():
        for component in components:
            precision = "int8" if component in quantized else "none"
            if (component, precision) not in exported:
                options = ExportOptions(quantize=precision)
                exported[component, precision] = export_component(pipeline, pipeline_dir, component, target, root / "exports", options).folder
            shutil.copytree(exported[component, precision], layout / f"{component}-{label}")
    return layout


def rows_of(results: list, student: str, describe: dict[str, str]) -> list[dict]:
    rows = []
    for result in results:
        if result.role == "teacher" and student != "distilled":
            continue  # measured once, with the first student
        label = result.case_id.split("/")[1]
        gap = result.distillation_gap
        rows.append({
            "student": "teacher" if result.role == "teacher" else student,
            "int8": "-" if result.role == "teacher" else describe.get(label, "none (float)"),
            "faithfulness": gap.faithfulness if gap else None,
            "image_psnr_db_vs_teacher": None if result.role == "teacher" else gap.image_psnr_db,
            "bytes": result.size_bytes,
        })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qat-steps", type=int, default=300, help="0 skips the QAT student")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--target", default="executorch", choices=["executorch", "onnx", "tflite"])
    args = parser.parse_args()
    from edgegen.terminal import quiet
    from edgegen.embedded.demo import ensure_default_pipeline, ensure_default_student
    from edgegen.embedded.evaluation import grid_prompts
    from edgegen.embedded.builders import PROBE_DIR
    from edgegen.families import component_names, family_of
    from edgegen.measure.pipeline_fidelity import run_comparison

    quiet()
    prompts = grid_prompts()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        teacher = ensure_default_pipeline(root / "teacher")
        student = ensure_default_student(root / "student", teacher, "distilled")
        common = dict(steps=20, probe_dir=PROBE_DIR, runs=0)

        every = set(component_names(family_of(student)))
        post_training = {"te8": {"text_encoder"}, "den8": {"denoiser"}, "vae8": {"vae_decoder"}, "all8": every}
        describe = {"te8": "text encoder", "den8": "denoiser", "vae8": "VAE decoder", "all8": "all three"}
        sets = artifact_sets(student, args.target, root / "ptq", post_training)
        results = run_comparison(prompts, teacher, student, [sets], root / "ptq.jsonl", **common)
        rows += rows_of(results, "distilled", {label: f"{text}, post-training" for label, text in describe.items()})

        if args.qat_steps > 0:  # 0: post-training int8 only
            data = "builtin:shapes?count=20000&seed=7"
            qat_student = train_qat_student(teacher, student, root / "qat", args.qat_steps, args.batch_size, data)
            learned = {"den8": {"denoiser"}, "all8": every}
            sets = artifact_sets(qat_student, args.target, root / "qat-artifacts", learned)
            results = run_comparison(prompts, teacher, qat_student, [sets], root / "qat.jsonl", **common)
            describe_qat = {"den8": "denoiser, learned (QAT)", "all8": "denoiser learned, others post-training"}
            rows += rows_of(results, f"QAT ({args.qat_steps} steps)", describe_qat)

    table = [[r["student"], r["int8"], fmt(r["faithfulness"], "{:.0%}"), fmt(r["image_psnr_db_vs_teacher"], "{:.1f}"), r["bytes"] // 1024] for r in rows]
    emit(f"{len(prompts)} grid captions, 20 steps, {args.target} artifacts", ["student", "int8 components", "faithful", "dB vs teacher", "KiB"], table, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
