"""The profiling harness: warm-up, timed runs, load time and peak memory of one artifact.

Everything is measured in a fresh subprocess (``python -m edgegen.measure.profiling``) so that the
peak resident memory belongs to this artifact alone. The baseline is taken after the runtime's
libraries are imported and before the model is loaded; ``added_mb`` is what the model cost.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.schema.results import Host, Latency, Memory, Result

DEFAULT_WARMUP = 3
DEFAULT_RUNS = 20


def host_info(threads: int) -> Host:
    return Host(
        platform=platform.platform(terse=True),
        machine=platform.machine(),
        python=platform.python_version(),
        cpu_count=os.cpu_count() or 1,
        threads=threads,
    )


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def start_peak_window() -> float:
    """Reset the peak-RSS mark where the OS allows it and return the current RSS (MiB).

    Importing torch peaks higher than a small model ever uses, so without the reset the
    model's cost would hide under the import's peak. Linux resets VmHWM through clear_refs.
    """
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    current = _status_mb("VmRSS")
    return current if current is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1 << 20) if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB elsewhere


def summarize(times_ms: list[float], warmup: int, load_ms: float) -> Latency:
    values = np.asarray(times_ms)
    return Latency(
        warmup_runs=warmup,
        timed_runs=len(times_ms),
        load_ms=load_ms,
        p50_ms=float(np.percentile(values, 50)),
        p90_ms=float(np.percentile(values, 90)),
        mean_ms=float(values.mean()),
        min_ms=float(values.min()),
        max_ms=float(values.max()),
    )


def time_calls(call, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def interleaved_medians(calls: dict[str, Callable[[], object]], runs: int, warmup: int = 3, rounds: int = 5) -> dict[str, float]:
    """Median ms of each call, timed in alternating rounds so machine noise hits all alike.

    For side-by-side comparisons in one process (eager vs exported, dense vs sparse): a ratio of
    two medians taken this way holds on a noisy machine; two separate runs do not.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].extend(time_calls(call, 0, per_round))
    return {name: float(np.median(values)) for name, values in times.items()}


def profile_in_this_process(artifact_dir: Path, warmup: int, runs: int, threads: int) -> Result:
    from edgegen.artifact import load_artifact
    from edgegen.session import open_artifact, runtime_for

    artifact = load_artifact(artifact_dir)
    runtime = runtime_for(artifact.manifest)
    reason = runtime.unavailable_reason(artifact.manifest)
    if reason:
        raise EdgegenError(f"cannot profile {artifact_dir} here: {reason}")
    import torch

    torch.set_num_threads(threads)
    runtime.import_toolchain()
    inputs, _ = artifact.reference_tensors()
    baseline = start_peak_window()
    start = time.perf_counter()
    session = open_artifact(artifact, threads)
    load_ms = (time.perf_counter() - start) * 1000.0
    prepared = session.prepare(inputs)
    times = time_calls(lambda: session.run_prepared(prepared), warmup, runs)
    peak = peak_rss_mb()
    manifest = artifact.manifest
    return Result(
        kind="profile",
        artifact_dir=str(Path(artifact_dir).resolve()),
        target=manifest.target,
        backend=manifest.backend,
        component=manifest.component,
        quantization=manifest.quantization.scheme,
        runtime=session.runtime_name,
        host=host_info(threads),
        latency=summarize(times, warmup, load_ms),
        memory=Memory(baseline_rss_mb=baseline, peak_rss_mb=peak, added_mb=max(0.0, peak - baseline)),
    )


def profile_artifact(artifact_dir: Path, warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS, threads: int = 1) -> Result:
    """Profile in a fresh subprocess; its one-line error becomes ours."""
    from edgegen.artifact import load_artifact
    from edgegen.session import runtime_for

    if runs < 1 or warmup < 0:
        raise EdgegenError("--runs must be at least 1 and --warmup at least 0")
    artifact = load_artifact(artifact_dir)  # fail fast, in this process, on a bad folder
    reason = runtime_for(artifact.manifest).unavailable_reason(artifact.manifest)
    if reason:
        raise EdgegenError(f"cannot profile {artifact_dir} here: {reason}")
    command = [
        sys.executable, "-m", "edgegen.measure.profiling", str(artifact_dir),
        "--warmup", str(warmup), "--runs", str(runs), "--threads", str(threads),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.strip().splitlines() if line.startswith("error: ")]
        message = lines[-1][len("error: "):] if lines else f"profiling subprocess exited {completed.returncode}"
        raise EdgegenError(message)
    return Result.model_validate_json(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgegen.measure.profiling")
    parser.add_argument("artifact_dir", type=Path)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        result = profile_in_this_process(args.artifact_dir, args.warmup, args.runs, args.threads)
    except EdgegenError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
