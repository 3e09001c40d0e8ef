"""The profiling harness: warm-up, timed runs, load time and peak memory, in a fresh process.

One artifact is profiled by ``python -m edgegen.measure.profiling``; a whole pipeline by
``python -m edgegen.measure.pipeline_profile``, on the same pieces kept here: the fresh process
(so the peak resident memory belongs to what it measures alone, and its one-line error becomes
ours), the peak-memory window and the percentiles. The baseline is taken after the runtime's
libraries are imported and before the model is loaded; ``added_mb`` is what the model cost.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.terminal import without_toolchain_noise
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


def memory_since(baseline_mb: float) -> Memory:
    """The peak-memory window opened by ``start_peak_window``, closed now."""
    peak = peak_rss_mb()
    return Memory(baseline_rss_mb=baseline_mb, peak_rss_mb=peak, added_mb=max(0.0, peak - baseline_mb))


@dataclass(frozen=True)
class Spread:
    p50: float
    p90: float
    mean: float
    min: float
    max: float


def spread(values: Sequence[float]) -> Spread:
    """Percentiles of timings (ms); every latency figure in a result comes through here."""
    array = np.asarray(values, dtype=np.float64)
    return Spread(
        p50=float(np.percentile(array, 50)),
        p90=float(np.percentile(array, 90)),
        mean=float(array.mean()),
        min=float(array.min()),
        max=float(array.max()),
    )


def summarize(times_ms: list[float], warmup: int, load_ms: float) -> Latency:
    timing = spread(times_ms)
    return Latency(
        warmup_runs=warmup,
        timed_runs=len(times_ms),
        load_ms=load_ms,
        p50_ms=timing.p50,
        p90_ms=timing.p90,
        mean_ms=timing.mean,
        min_ms=timing.min,
        max_ms=timing.max,
    )


def check_counts(warmup: int, runs: int) -> None:
    if runs < 1 or warmup < 0:
        raise EdgegenError("--runs must be at least 1 and --warmup at least 0")


def result_line(stdout: str, what: str) -> str:
    """The last JSON line a measuring process printed (toolchains may print before it)."""
    lines = [line for line in stdout.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise EdgegenError(f"{what} printed no result")
    return lines[-1]


# What a signal that ended a measuring process most likely means.
_SIGNAL_HINTS = {"SIGKILL": "out of memory?", "SIGSEGV": "a crash in native code", "SIGABRT": "a crash in native code", "SIGBUS": "a crash in native code"}


def how_it_ended(returncode: int) -> str:
    """``exited with code 3`` or ``killed by SIGKILL (out of memory?)``, from a subprocess's return code."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"killed by signal {-returncode}"
    hint = _SIGNAL_HINTS.get(name)
    return f"killed by {name}" + (f" ({hint})" if hint else "")


def run_fresh_process(module: str, arguments: list[str], threads: int, timeout_s: float | None = None) -> str:
    """Run ``python -m module arguments`` and return its result line; its one-line error becomes ours.

    A child that fails without an ``error:`` line (a traceback, a signal, a native abort) is
    reported by how it ended and its last meaningful stderr line, never just an exit code.
    """
    command = [sys.executable, "-m", module, *arguments]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore", TQDM_DISABLE="1")
    try:
        completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise EdgegenError(f"python -m {module} did not finish within {timeout_s:g} s and was stopped") from None
    if completed.returncode != 0:
        lines = without_toolchain_noise(completed.stderr)  # a crash's last line, not a C++ log line
        errors = [line for line in lines if line.startswith("error: ")]
        if errors:
            raise EdgegenError(errors[-1][len("error: "):])
        last = lines[-1].strip() if lines else "nothing on stderr"
        last = last if len(last) <= 300 else last[:297] + "..."
        raise EdgegenError(f"python -m {module} {how_it_ended(completed.returncode)}: {last}")
    return result_line(completed.stdout, module)


def measuring_main(measure: Callable[[], str]) -> int:
    """The measuring process's side of ``run_fresh_process``: a result line, or one error line."""
    try:
        line = measure()
    except EdgegenError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(line)
    return 0


def profiling_arguments(artifact_dir: str, warmup: int, runs: int, threads: int) -> list[str]:
    """The arguments of ``python -m edgegen.measure.profiling``, here or on a remote device."""
    return [artifact_dir, "--warmup", str(warmup), "--runs", str(runs), "--threads", str(threads)]


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
    memory = memory_since(baseline)
    return artifact_result("profile", artifact, session.runtime_name, threads, latency=summarize(times, warmup, load_ms), memory=memory)


def artifact_result(kind: str, artifact: Any, runtime: str, threads: int, **measured: Any) -> Result:
    """A component result: what the artifact is (from its manifest) and what was measured on it."""
    manifest = artifact.manifest
    return Result(
        kind=kind,
        artifact_dir=str(Path(artifact.folder).resolve()),
        target=manifest.target,
        backend=manifest.backend,
        component=manifest.component,
        quantization=manifest.precision,
        runtime=runtime,
        host=host_info(threads),
        **measured,
    )


def profile_artifact(artifact_dir: Path, warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS, threads: int = 1) -> Result:
    """Profile in a fresh subprocess; its one-line error becomes ours."""
    from edgegen.artifact import load_artifact
    from edgegen.session import runtime_for

    check_counts(warmup, runs)
    artifact = load_artifact(artifact_dir)  # fail fast, in this process, on a bad folder
    reason = runtime_for(artifact.manifest).unavailable_reason(artifact.manifest)
    if reason:
        raise EdgegenError(f"cannot profile {artifact_dir} here: {reason}")
    line = run_fresh_process("edgegen.measure.profiling", profiling_arguments(str(artifact_dir), warmup, runs, threads), threads)
    return Result.model_validate_json(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgegen.measure.profiling")
    parser.add_argument("artifact_dir", type=Path)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    return measuring_main(lambda: profile_in_this_process(args.artifact_dir, args.warmup, args.runs, args.threads).model_dump_json())


if __name__ == "__main__":
    sys.exit(main())
