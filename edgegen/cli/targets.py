"""``edgegen targets``: which export targets and runtimes work on this machine, and why not."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgegen.terminal import console, print_json


def target_status() -> list[dict]:
    from edgegen.registry import EXPORTERS
    from edgegen.session import host_description, runtimes_of

    rows = []
    for name in EXPORTERS.names():
        exporter = EXPORTERS.get(name)
        runtimes = runtimes_of(name)
        export_reason = exporter.unavailable_reason()
        # Runs here when any of the target's runtimes does; otherwise the preferred one says why.
        reasons = [runtime.unavailable_reason() for runtime in runtimes]
        run_reason = None if None in reasons else (reasons[0] if reasons else "no runtime is registered for it")
        rows.append(
            {
                "target": name,
                "backends": list(exporter.backends),
                "quantizations": list(exporter.quantizations),
                "export": export_reason is None,
                "export_reason": export_reason,
                "run": run_reason is None,
                "run_reason": run_reason,
                "host": host_description(),
            }
        )
    return rows


def targets_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
) -> None:
    """List export targets and whether this machine can export to and run each."""
    rows = target_status()
    if json_output:
        print_json(rows)
        return
    table = Table("target", "backends", "quantize", "export here", "run here")
    for row in rows:
        table.add_row(
            row["target"],
            ", ".join(row["backends"]) or "-",
            ", ".join(row["quantizations"]),
            "yes" if row["export"] else f"no: {row['export_reason']}",
            "yes" if row["run"] else f"no: {row['run_reason']}",
        )
    console.print(table)
