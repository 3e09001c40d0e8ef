"""How near the limit each exported denoiser runs: this CPU's GEMM peak per runtime and precision,
the denoiser's FLOPs, and the GFLOP/s each exported denoiser achieves.

    python benchmarks/roofline.py [--model embedded-student|sd15-unet ...] [--target tflite ...] [--precision float|int8 ...] [--runs 10]

The peak is measured with the runtimes' own kernels: a GEMM (``--gemm M K N``, a linear layer on
an [M, K] input, between two ReLUs) exported by edgegen's own exporters in each precision and run by edgegen's
runtimes, one thread, median of --runs. The denoiser's FLOPs are counted by torch's FLOP
counter on the eager component (2 per multiply-add, convolutions and matmuls). Achieved GFLOP/s
is FLOPs / the artifact's median latency per call, one thread; the issue's goal is >= 30% of the
same runtime's measured GEMM peak at the SD-1.5 shape (``--model sd15-unet``: its real
configuration, random weights, 64x64 latents; its exports take minutes and several GiB each).
int8's speed-up per call at that shape is the other goal (>= 1.3x). Prints a table, then the JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
from pathlib import Path

from _common import emit, fmt  # the benchmarks' shared helper, beside this script

ROOT = Path(__file__).resolve().parents[1]
PEAK_SHARE_GOAL = 0.30
INT8_SPEEDUP_GOAL = 1.3


def _manifest_for(component, exported, folder: Path, target: str, backend: str | None):
    """A manifest for an artifact exported outside a pipeline (the GEMM), so edgegen's runtimes run it."""
    import datetime as dt

    from safetensors.numpy import save_file

    from edgegen.artifact import describe_files
    from edgegen.schema.manifest import REFERENCE_FILENAME, ArtifactManifest, Parity, Source

    save_file({f"input.{k}": v.numpy() for k, v in component.reference_inputs.items()}, str(folder / REFERENCE_FILENAME))
    return ArtifactManifest(
        edgegen_version="benchmark", created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), target=target,
        backend=exported.backend or backend, component=component.name, model_file=exported.model_file, weight_files=exported.weight_files,
        files=describe_files(folder), inputs=exported.inputs, outputs=exported.outputs, eager_inputs=component.inputs,
        eager_outputs=component.outputs, quantization=exported.quantization,
        source=Source(pipeline_dir="-", pipeline_class="benchmark", component_class="Linear", checkpoint_sha256="0" * 64),
        toolchain={}, parity=Parity(measured=False, reason="GEMM peak benchmark", min_psnr_db=0.0),
    )


def gemm_peak(target: str, scheme: str, m: int, k: int, n: int, runs: int) -> dict:
    """GFLOP/s of an [m, k] x [k, n] GEMM exported to ``target`` as ``scheme``, one thread."""
    import torch

    from edgegen.artifact import Artifact
    from edgegen.exporting.base import ExportOptions
    from edgegen.families.base import Component, tensor_spec
    from edgegen.measure.profiling import interleaved_medians
    from edgegen.registry import EXPORTERS
    from edgegen.session import open_artifact

    class Gemm(torch.nn.Module):
        # Between two ReLUs: an int8 exporter keeps a layer that reads a model input or feeds an
        # output float (LiteRT's does, so that its I/O stays float), which would time a float GEMM.
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(k, n, bias=False)

        def forward(self, x):
            return torch.relu(self.linear(torch.relu(x)))

    torch.manual_seed(0)
    module = Gemm().eval()
    x = torch.randn(m, k)
    with torch.no_grad():
        y = module(x)
    component = Component(
        name="gemm", module=module, inputs=[tensor_spec("x", x)], outputs=[tensor_spec("y", y)], reference_inputs={"x": x},
        source_subfolder="-", source_class="Linear", calibration=[{"x": torch.randn(m, k)} for _ in range(4)],
    )
    exporter = EXPORTERS.get(target)
    backend = exporter.backends[0] if exporter.backends else None
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        exported = exporter.export(component, folder, ExportOptions(quantize=scheme, backend=backend))
        session = open_artifact(Artifact(folder=folder, manifest=_manifest_for(component, exported, folder, target, backend)), threads=1)
        inputs = {"x": x.numpy()}
        ms = interleaved_medians({"gemm": lambda: session.run(inputs)}, runs=runs, warmup=2, rounds=1)["gemm"]
    return {"gemm": [m, k, n], "ms": ms, "gflops": 2 * m * k * n / ms / 1e6}


def denoiser_flops(component) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        component.run_eager()
    return int(counter.get_total_flops())


def model_folder(model: str, work: Path) -> Path:
    if model == "embedded-student":
        from edgegen.embedded.demo import ensure_default_pipeline, ensure_default_student

        teacher = ensure_default_pipeline(work / "teacher")
        return ensure_default_student(work / "student", teacher, "distilled")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from scale import pipeline_folder  # the real-size configurations, random weights

    return pipeline_folder(model, work / "pipelines")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=["embedded-student", "sd15-unet"], help="repeatable; default: embedded-student")
    parser.add_argument("--target", action="append", help="repeatable; default: every target that runs here")
    parser.add_argument("--precision", action="append", choices=["float", "int8"], help="repeatable; default: both")
    parser.add_argument("--gemm", type=int, nargs=3, default=[512, 1024, 1024], metavar=("M", "K", "N"))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path("out/roofline"))
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))  # tests.dummy_pipelines.tokenizers, for the real-size folders
    import torch

    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.exporting.targets import int8_scheme, usable_targets
    from edgegen.families import family_of
    from edgegen.families.loading import load_pipeline
    from edgegen.measure.profiling import interleaved_medians
    from edgegen.session import open_artifact
    from edgegen.terminal import quiet

    quiet()
    torch.set_num_threads(1)
    targets = args.target or [t for t in usable_targets() if t != "coreml"]
    precisions = args.precision or ["float", "int8"]
    peaks, payload, rows = {}, {"gemm_peaks": [], "denoisers": []}, []
    for target in targets:
        for precision in precisions:
            scheme = "none" if precision == "float" else int8_scheme(target)
            if scheme is None:
                continue
            peak = gemm_peak(target, scheme, *args.gemm, runs=args.runs)
            peaks[target, precision] = peak["gflops"]
            payload["gemm_peaks"].append({"target": target, "precision": precision, "scheme": scheme, **peak})
            args.work.mkdir(parents=True, exist_ok=True)
            with (args.work / "roofline.jsonl").open("a") as log:
                log.write(json.dumps(payload["gemm_peaks"][-1]) + "\n")
            rows.append(["GEMM " + "x".join(map(str, args.gemm)), target, precision, fmt(peak["ms"], "{:.2f}"), f"{2 * args.gemm[0] * args.gemm[1] * args.gemm[2] / 1e9:.2f}",
                         f"{peak['gflops']:.1f}", "-", "-", "-", "-"])
    for model in args.model or ["embedded-student"]:
        folder = model_folder(model, args.work)
        pipeline = load_pipeline(folder)
        component = family_of(folder).build_component(pipeline, "denoiser")
        flops = denoiser_flops(component)
        eager_ms = interleaved_medians({"eager": component.run_eager}, runs=args.runs, warmup=1, rounds=1)["eager"]
        float_ms = {}
        for target in targets:
            for precision in precisions:
                scheme = "none" if precision == "float" else int8_scheme(target)
                if scheme is None:
                    continue
                artifact = export_component(pipeline, folder, "denoiser", target, args.work / "artifacts" / model, ExportOptions(quantize=scheme), force=True)
                loaded = {"session": open_artifact(artifact, threads=1)}
                inputs = {name: tensor.numpy() for name, tensor in component.reference_inputs.items()}
                ms = interleaved_medians({"artifact": lambda: loaded["session"].run(inputs)}, runs=args.runs, warmup=1, rounds=1)["artifact"]
                loaded.clear()  # before the next export: a loaded SD 1.5 session is GiBs that export does not need
                gc.collect()
                if precision == "float":
                    float_ms[target] = ms
                achieved = flops / ms / 1e6
                share = achieved / peaks[target, precision]
                speedup = float_ms[target] / ms if precision == "int8" and target in float_ms else None
                entry = {"model": model, "target": target, "precision": precision, "scheme": scheme, "gflop_per_call": flops / 1e9, "ms": ms,
                         "eager_ms": eager_ms, "achieved_gflops": achieved, "peak_gflops": peaks[target, precision], "share_of_peak": share,
                         "int8_speedup_vs_float": speedup, "parity_psnr_db": artifact.manifest.parity.psnr_db,
                         # The process's peak so far: what this export (and the ones before it) needed.
                         "process_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
                if model == "sd15-unet":
                    entry["meets_peak_goal"] = share >= PEAK_SHARE_GOAL
                    if speedup is not None:
                        entry["meets_int8_goal"] = speedup >= INT8_SPEEDUP_GOAL
                payload["denoisers"].append(entry)
                args.work.mkdir(parents=True, exist_ok=True)
                with (args.work / "roofline.jsonl").open("a") as log:  # each row as it lands: a killed run keeps it
                    log.write(json.dumps(entry) + "\n")
                rows.append([model, target, precision, fmt(ms, "{:.2f}"), f"{flops / 1e9:.3f}", f"{achieved:.1f}", f"{peaks[target, precision]:.1f}",
                             f"{share:.0%}", fmt(speedup, "{:.2f}x"), fmt(eager_ms, "{:.2f}")])
    header = ["model", "target", "precision", "ms/call", "GFLOP/call", "GFLOP/s", "peak GFLOP/s", "of peak", "int8 vs float", "eager ms"]
    emit("Roofline: GEMM peak per runtime and the denoisers' achieved GFLOP/s (one thread)", header, rows, payload, args.work / "roofline.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
