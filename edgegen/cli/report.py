"""``edgegen report RESULTS... -o report.html``: the self-contained HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgegen.cli.bounds import file_output
from edgegen.terminal import console


def report_command(
    results: Annotated[list[Path], typer.Argument(help="Results files (JSON Lines) from `edgegen compare --prompts`, `edgegen sweep` or `edgegen demo`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.", callback=file_output)] = Path("report.html"),
    title: Annotated[str, typer.Option(help="The page title.")] = "edgegen report",
    screenshot: Annotated[Path | None, typer.Option(help="Also render the page with headless Chromium to this PNG.", show_default=False, callback=file_output)] = None,
) -> None:
    """Write one self-contained HTML page: key table, image grid, latency tables and trade-off plots."""
    from edgegen.report.html import write_report

    path = write_report(results, output, title)
    console.print(f"report: {path} ({path.stat().st_size / 1024:.0f} KiB)")
    if screenshot is not None:
        from edgegen.report.render import screenshot as render

        console.print(f"screenshot: {render(path, screenshot)}")
