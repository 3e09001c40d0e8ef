"""SCMAN vs dense cross-attention over image-token and conditioning-token lengths.

    .venv/bin/python benchmarks/scman_sweep.py [--summary-tokens 16] [--heads 2] [--channels 32]
        [--runs 20] [--output DIR]

For each (image grid, context length) pair, up to 64x64 = 4096 image tokens x 1024 context
tokens: analytic FLOPs of the layer (``scman_flops``: key/value projections, score and value
matmuls, SCMAN's token mixing), median latency of a dense ``SCMANAttention`` and a sparse one
(pooled token reduction to --summary-tokens) with the same weights, eager and exported (ONNX
through onnxruntime's CPU provider), each pair interleaved in rounds in one process so machine
noise hits both alike, and the attention matrix's memory (float32, batch 1, all heads), which
is the peak of the layer. Heads and channels are small so the sweep
runs in a couple of minutes on 2 cores; FLOP ratios do not depend on them much. One thread.
Prints a table, then the JSON (also written to --output/scman_sweep.json when given).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import emit  # the benchmarks' shared helper, beside this script

GRIDS = ((16, 16), (32, 32), (64, 64))
CONTEXT_LENGTHS = (64, 256, 1024)
BYTES_FLOAT32 = 4


def onnx_session(module, inputs, folder: Path, name: str):
    """The module exported with torch.onnx (dynamo) and loaded in onnxruntime, one thread."""
    import onnxruntime as ort
    import torch

    path = folder / f"{name}.onnx"
    with torch.no_grad():
        torch.onnx.export(module, inputs, dynamo=True, opset_version=18, verbose=False).save(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    return lambda: session.run(None, feed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary-tokens", type=int, default=16)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    import torch

    from edgegen.models.scman import SCMANAttention, SCMANConfig, scman_flops
    from edgegen.measure.profiling import interleaved_medians

    import tempfile

    from edgegen.terminal import quiet

    quiet()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    scratch = Path(tempfile.mkdtemp(prefix="scman-sweep-"))
    rows = []
    for grid in GRIDS:
        tokens = grid[0] * grid[1]
        for length in CONTEXT_LENGTHS:
            sparse_config = SCMANConfig(mode="sparse", summary_tokens=args.summary_tokens, context_length=length)
            dense = SCMANAttention(args.channels, args.heads, context_dim=args.channels, grid=grid,
                                   config=SCMANConfig(mode="dense")).eval()
            sparse = SCMANAttention(args.channels, args.heads, context_dim=args.channels, grid=grid,
                                    config=sparse_config).eval()
            sparse.load_state_dict(dense.state_dict(), strict=False)
            hidden, context = torch.randn(1, tokens, args.channels), torch.randn(1, length, args.channels)
            with torch.inference_mode():
                latency = interleaved_medians(
                    {"dense": lambda: dense(hidden, context), "sparse": lambda: sparse(hidden, context)}, args.runs
                )
            exported = interleaved_medians(
                {
                    "dense": onnx_session(dense, (hidden, context), scratch, "dense"),
                    "sparse": onnx_session(sparse, (hidden, context), scratch, "sparse"),
                },
                args.runs,
            )
            flops = scman_flops(sparse_config, grid, length, channels=args.channels, heads=args.heads)
            rows.append(
                {
                    "image_tokens": tokens,
                    "grid": list(grid),
                    "context_tokens": length,
                    "summary_tokens": args.summary_tokens,
                    "dense_mflops": flops["dense_flops"] / 1e6,
                    "sparse_mflops": flops["sparse_flops"] / 1e6,
                    "flop_ratio": flops["flop_ratio"],
                    "dense_ms": latency["dense"],
                    "sparse_ms": latency["sparse"],
                    "speedup": latency["dense"] / latency["sparse"],
                    "dense_onnx_ms": exported["dense"],
                    "sparse_onnx_ms": exported["sparse"],
                    "onnx_speedup": exported["dense"] / exported["sparse"],
                    "dense_attention_mib": flops["dense_attention_elements"] * BYTES_FLOAT32 / 2**20,
                    "sparse_attention_mib": flops["sparse_attention_elements"] * BYTES_FLOAT32 / 2**20,
                }
            )
            row = rows[-1]
            print(
                f"{tokens:>6} x {length:>5}: {row['dense_ms']:8.2f} ms dense, {row['sparse_ms']:7.2f} ms sparse",
                file=sys.stderr,
            )

    header = ("image", "ctx", "S", "dense MFLOP", "SCMAN MFLOP", "ratio", "dense ms", "SCMAN ms", "speedup",
              "ONNX dense", "ONNX SCMAN", "speedup", "dense MiB", "SCMAN MiB")
    table = [
        [r["image_tokens"], r["context_tokens"], r["summary_tokens"], f"{r['dense_mflops']:.1f}", f"{r['sparse_mflops']:.1f}",
         f"{r['flop_ratio']:.1f}x", f"{r['dense_ms']:.2f}", f"{r['sparse_ms']:.2f}", f"{r['speedup']:.1f}x", f"{r['dense_onnx_ms']:.2f}",
         f"{r['sparse_onnx_ms']:.2f}", f"{r['onnx_speedup']:.1f}x", f"{r['dense_attention_mib']:.2f}", f"{r['sparse_attention_mib']:.3f}"]
        for r in rows
    ]
    result = {
        "benchmark": "scman_sweep",
        "layer": {"kind": "cross-attention", "heads": args.heads, "channels": args.channels,
                  "summary": "pooled", "layout": "bhld", "threads": 1, "runs": args.runs},
        "torch": torch.__version__,
        "rows": rows,
    }
    emit("SCMAN vs dense cross-attention", header, table, result, args.output / "scman_sweep.json" if args.output else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
