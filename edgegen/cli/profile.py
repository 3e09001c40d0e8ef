"""``edgegen profile``: latency and peak memory of one artifact, in a fresh process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgegen.terminal import console, fmt_ms, print_json, quiet
from edgegen.measure.profiling import DEFAULT_RUNS, DEFAULT_WARMUP


def profile_command(
    artifact_dir: Annotated[Path, typer.Argument(help="An artifact folder written by `edgegen export`.")],
    warmup: Annotated[int, typer.Option(help="Untimed runs first.", min=0)] = DEFAULT_WARMUP,
    runs: Annotated[int, typer.Option(help="Timed runs.", min=1)] = DEFAULT_RUNS,
    threads: Annotated[int, typer.Option(help="CPU threads for the runtime.", min=1)] = 1,
    device: Annotated[str | None, typer.Option(help="Profile on a remote device instead: ssh://user@host (needs edgegen there).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Time ARTIFACT_DIR on its runtime (warm-up, p50/p90, load time) and measure peak memory."""
    quiet()
    from edgegen.measure.profiling import profile_artifact
    from edgegen.measure.remote import profile_on_device

    from rich.markup import escape

    # The device string is the user's: shown as text, never read as rich markup.
    with console.status(escape(f"profiling {artifact_dir}{' on ' + device if device else ''}...")):
        if device:
            result = profile_on_device(artifact_dir, device, warmup, runs, threads)
        else:
            result = profile_artifact(artifact_dir, warmup=warmup, runs=runs, threads=threads)
    if json_output:
        print_json(result.model_dump(mode="json"))
        return
    latency, memory = result.latency, result.memory
    console.print(
        f"{result.component} on {result.runtime}: p50 {fmt_ms(latency.p50_ms)} ms, p90 {fmt_ms(latency.p90_ms)} ms, "
        f"load {fmt_ms(latency.load_ms)} ms, peak memory +{memory.added_mb:.1f} MiB "
        f"over a {memory.baseline_rss_mb:.0f} MiB runtime baseline ({latency.timed_runs} runs)"
    )
