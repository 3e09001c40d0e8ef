"""``edgegen families``: the model families edgegen supports and what each splits a pipeline into."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgegen.terminal import console, print_json


def family_rows() -> list[dict]:
    from edgegen.families import all_families

    return [
        {
            "family": family.name,
            "description": family.description,
            "pipeline_classes": list(family.pipeline_classes),
            "components": [{"name": s.name, "subfolder": s.subfolder, "role": s.role} for s in family.components],
            "guidance": list(family.guidance_modes),
        }
        for family in all_families()
    ]


def families_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
) -> None:
    """List the supported model families: pipeline classes and the components each exports."""
    rows = family_rows()
    if json_output:
        print_json(rows)
        return
    table = Table("family", "pipeline classes", "components (subfolder)", "guidance")
    for row in rows:
        components = ", ".join(f"{c['name']} ({c['subfolder']})" for c in row["components"])
        table.add_row(row["family"], ", ".join(row["pipeline_classes"]), components, ", ".join(row["guidance"]) or "-")
    console.print(table)
