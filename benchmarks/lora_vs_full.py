"""LoRA-MMG vs full fine-tuning of the same teacher: trainable fraction, step time, peak memory.

    python benchmarks/lora_vs_full.py [--teacher DIR] [--steps 20] [--batch-size 16] [--rank 4]

Each method runs as its own `edgegen train` process on the builtin shapes (one thread), so its
peak resident memory (the process's high-water mark, VmHWM) is its own; step time is the median
of the logged step times after the first few. Both processes run back to back on the same
machine: quote the ratios, not the absolute numbers. Prints a table, then the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import emit  # the benchmarks' shared helper, beside this script

PEAK_PROBE = (
    "import resource, runpy, sys\n"
    "sys.argv = ['edgegen'] + sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('edgegen.cli', run_name='__main__')\n"
    "except SystemExit as done:\n"
    "    code = done.code\n"
    "else:\n"
    "    code = 0\n"
    "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def run(method: str, teacher: Path, output: Path, steps: int, batch_size: int, rank: int) -> dict:
    args = [method, f"teacher={teacher}", f"output={output}", f"steps={steps}", f"batch_size={batch_size}", "log_every=1",
            f"checkpoint_every={steps + 1}", "data=builtin:shapes?count=512"]
    if method == "lora":
        args.append(f"rank={rank}")
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    done = subprocess.run([sys.executable, "-c", PEAK_PROBE, "train", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{method} failed: {done.stderr.strip().splitlines()[-1:]}")
    peak_kb = int(next(line.split()[1] for line in done.stderr.splitlines() if line.startswith("PEAK_KB")))
    manifest = json.loads((output / "pipeline" / "edgegen_training.json").read_text())
    from edgegen.trainers.loop import read_metrics

    times = [row["step_seconds"] for row in read_metrics(output)][3:]
    details = manifest["details"]
    return {
        "method": method,
        "trainable_parameters": details["trainable_parameters"],
        "trainable_fraction": details["trainable_fraction"],
        "step_ms_median": 1000 * statistics.median(times),
        "peak_rss_mb": peak_kb / 1024,
        "final_loss": manifest["final_losses"]["loss"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rank", type=int, default=4)
    args = parser.parse_args()
    from edgegen.embedded.demo import ensure_default_pipeline

    with tempfile.TemporaryDirectory() as scratch:
        teacher = args.teacher or ensure_default_pipeline(Path(scratch) / "teacher")
        rows = [run(method, teacher, Path(scratch) / method, args.steps, args.batch_size, args.rank) for method in ("finetune", "lora")]
    full, lora = rows
    table = [[r["method"], f"{r['trainable_parameters']:,}", f"{r['trainable_fraction']:.2%}", f"{r['step_ms_median']:.1f}", f"{r['peak_rss_mb']:.0f}"] for r in rows]
    title = (f"lora / full: step time {lora['step_ms_median'] / full['step_ms_median']:.2f}x, peak memory {lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}x, "
             f"trainable {lora['trainable_parameters'] / full['trainable_parameters']:.3f}x")
    emit(title, ["method", "trainable", "fraction", "step ms", "peak MiB"], table, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
