"""Torch's float16 kernels on this CPU against float32 and bfloat16, one thread.

    python benchmarks/float16_cpu.py [--runs 3]

Why eager references of a --dtype float16 export compute in float32 on the float16 weights
(edgegen.families.base.float32_io): on a CPU without float16 arithmetic, torch runs float16
matmuls and convolutions many times slower. Prints a table, then the JSON.
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import emit, fmt  # the benchmarks' shared helper, beside this script


def median_seconds(call, runs: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cases = {
        "matmul 1024x1024x1024": (lambda dtype: (torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)), lambda a, b: a @ b),
        "conv 3x3, 320 ch, 128x128": (
            lambda dtype: (torch.randn(1, 320, 128, 128, dtype=dtype), torch.randn(320, 320, 3, 3, dtype=dtype)),
            lambda x, w: torch.nn.functional.conv2d(x, w, padding=1),
        ),
    }
    results, rows = [], []
    with torch.no_grad():
        for name, (make, op) in cases.items():
            seconds = {}
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                operands = make(dtype)
                seconds[str(dtype).removeprefix("torch.")] = median_seconds(lambda: op(*operands), args.runs)
            result = {"op": name, **{f"{k}_ms": round(v * 1000, 1) for k, v in seconds.items()}}
            result["float16_vs_float32"] = round(seconds["float16"] / seconds["float32"], 1)
            results.append(result)
            rows.append([name, fmt(result["float32_ms"], "{:.1f}"), fmt(result["float16_ms"], "{:.1f}"), fmt(result["bfloat16_ms"], "{:.1f}"), fmt(result["float16_vs_float32"], "{:.1f}x")])
    emit("torch CPU kernels by dtype (one thread, median)", ["op", "float32 ms", "float16 ms", "bfloat16 ms", "float16 / float32"], rows, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
