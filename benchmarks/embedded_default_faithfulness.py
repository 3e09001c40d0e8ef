"""Caption faithfulness of the committed embedded default: teacher vs KD-MMG student vs HDG-MMS student.

    python benchmarks/embedded_default_faithfulness.py [--output out/faithfulness]

Writes the committed teacher and both students (``edgegen default-pipeline --student
--few-step-student``), then samples all 48 colour x shape x position prompts of the built-in
data (seed i for prompt i, guidance 1, eager, one thread) for each case, and reports the
fraction of images whose colour, shape and position all match the caption (the committed probe),
each attribute, image PSNR against the teacher's 20-step images from the same seeds, and the
median eager milliseconds per image. Cases run one after another, so compare their latencies
as rough guides; the exported pipelines' latencies are in ``make demo``'s report. Prints a
table, then the JSON (also written to --output/faithfulness.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import emit  # the benchmarks' shared helper, beside this script


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("out/faithfulness"))
    args = parser.parse_args()

    import torch

    from edgegen.terminal import quiet
    from edgegen.embedded.evaluation import evaluate_grid, generate_grid
    from edgegen.embedded.builders import PROBE_DIR, build_embedded_default, build_embedded_student

    quiet()
    torch.set_num_threads(1)
    teacher = build_embedded_default(args.output / "teacher")
    student = build_embedded_student(teacher, args.output / "student", "distilled")
    few_step = build_embedded_student(teacher, args.output / "student-fewstep", "few-step")
    reference = generate_grid(teacher, 20, 1.0).images
    cases = {
        "teacher": (teacher, 20),
        "teacher, 2 steps": (teacher, 2),
        "KD-MMG student": (student, 20),
        "KD-MMG student, 2 steps": (student, 2),
        "HDG-MMS few-step student": (few_step, 2),
    }
    # The teacher's own 20-step images are the reference, so its PSNR against itself is left out.
    results = {
        name: evaluate_grid(folder, PROBE_DIR, steps, 1.0, None if name == "teacher" else reference)
        for name, (folder, steps) in cases.items()
    }

    header = ("model", "steps", "all three", "colour", "shape", "position", "PSNR vs teacher dB", "eager ms/image")
    table = [
        [name, r["steps"], f"{r['all']:.0%}", f"{r['colour']:.0%}", f"{r['shape']:.0%}", f"{r['position']:.0%}",
         f"{r['psnr_vs_teacher_db']:.1f}" if "psnr_vs_teacher_db" in r else "reference", f"{r['ms_per_image_p50']:.1f}"]
        for name, r in results.items()
    ]
    emit("caption faithfulness of the embedded default", header, table, results, args.output / "faithfulness.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
