"""QAT students on every int8 target: where the learned scales go, and how close each export lands.

    python benchmarks/qat_parity.py [--steps 100] [--batch-size 16] [--targets executorch onnx tflite]

Fine-tunes the embedded default's committed distilled student with quantization-aware KD-MMG
(`edgegen train distill qat=true`) for a few steps, exports its denoiser to each int8 target and
reports, per target: whether the checkpoint's learned scales were lowered or the exporter
calibrated its own, the export's PSNR against the fake-quant graph the student was trained as,
and against the float student. The same targets' post-training int8 export of the distilled
student (no QAT) is measured beside it against its own float model. Prints a table, then JSON.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import emit, fmt, train_qat_student  # the benchmarks' shared helper, beside this script


def export_row(pipeline_dir: Path, target: str, output: Path, kind: str) -> dict:
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.families.loading import load_pipeline

    pipeline = load_pipeline(pipeline_dir)
    artifact = export_component(pipeline, pipeline_dir, "denoiser", target, output, ExportOptions(quantize="int8"))
    manifest = artifact.manifest
    details = manifest.quantization.details
    trained_as = manifest.parity.vs_fake_quant
    return {
        "student": kind,
        "target": target,
        "scales": "learned (QAT)" if details.get("recalibrated") is False else "calibrated",
        "psnr_db_vs_fake_quant": trained_as.psnr_db if trained_as else None,
        "psnr_db_vs_float": manifest.parity.psnr_db,
        "bytes": artifact.size_bytes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--targets", nargs="+", default=["executorch", "onnx", "tflite"])
    args = parser.parse_args()
    from edgegen.terminal import quiet
    from edgegen.embedded.demo import ensure_default_pipeline, ensure_default_student

    quiet()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        teacher = ensure_default_pipeline(root / "teacher")
        student = ensure_default_student(root / "student", teacher, "distilled")
        data = "builtin:shapes?count=4096&seed=7"
        qat_student = train_qat_student(teacher, student, root / "qat", args.steps, args.batch_size, data)
        for target in args.targets:
            rows.append(export_row(student, target, root / "ptq", "distilled (post-training int8)"))
            rows.append(export_row(qat_student, target, root / "qat-artifacts", f"QAT ({args.steps} steps)"))

    table = [[r["target"], r["student"], r["scales"], fmt(r["psnr_db_vs_fake_quant"], "{:.1f}"), fmt(r["psnr_db_vs_float"], "{:.1f}")] for r in rows]
    emit("QAT vs post-training int8 denoiser exports", ["target", "student", "scales", "dB vs fake-quant", "dB vs float"], table, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
