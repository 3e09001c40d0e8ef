"""What every benchmark shares: its table, its JSON, and training through the recipe registry.

Each benchmark prints one rich table for people, then the JSON it measured (the source of every
speed and quality figure quoted elsewhere), and saves that JSON when given a folder. Training
goes through ``edgegen.registry.RECIPES`` exactly as ``edgegen train`` does, in this process.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def emit(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], payload: Any, save_as: Path | None = None) -> None:
    """Print the table, then the JSON; write the JSON to ``save_as`` too when given."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*("-" if cell is None else str(cell) for cell in row))
    Console(width=max(120, Console().width)).print(table)
    text = json.dumps(payload, indent=2)
    if save_as is not None:
        save_as.parent.mkdir(parents=True, exist_ok=True)
        save_as.write_text(text + "\n")
    print(text)


def fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def train(recipe: str, settings: list[str]) -> Path:
    """Run a training recipe with ``key=value`` settings, as ``edgegen train`` does; its pipeline folder."""
    from edgegen.registry import RECIPES

    entry = RECIPES.get(recipe)
    config = entry.resolve(None, settings)
    return entry.run(config, resume=False, command=" ".join(["edgegen train", recipe, *settings]))


def train_qat_student(teacher: Path, student: Path, output: Path, steps: int, batch_size: int, data: str) -> Path:
    """Quantization-aware KD-MMG from ``student`` (``edgegen train distill qat=true``); its pipeline folder."""
    return train("distill", [
        f"teacher={teacher}", f"student={student}", f"output={output}", f"steps={steps}", f"batch_size={batch_size}",
        "learning_rate=1e-4", "qat=true", f"checkpoint_every={steps + 1}", f"data={data}",
    ])


def executorch_side_by_side(pipeline: Path | None, output: Path) -> Path:
    """Quiet logs, one thread for torch and for XNNPACK's threadpool (so two programs timed in
    turn compete alike); the pipeline folder, the embedded default's when none is given."""
    import torch
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    from edgegen.embedded.demo import ensure_default_pipeline
    from edgegen.terminal import quiet

    quiet()
    torch.set_num_threads(1)
    _unsafe_reset_threadpool(1)
    return pipeline or ensure_default_pipeline(output / "teacher")
