"""``edgegen train RECIPE [CONFIG.yaml] [key=value ...]``: run a training recipe.

Recipes come from ``edgegen.registry.RECIPES``; a new recipe is one module under ``trainers/``
plus one registry line, and appears here without a change to this file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from edgegen.terminal import console, quiet


def train_command(
    recipe: Annotated[str, typer.Argument(help="finetune, lora, distill or adversarial.")],
    settings: Annotated[list[str] | None, typer.Argument(help="An optional CONFIG.yaml, then key=value overrides (dotted keys).", show_default=False)] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint in the output folder.")] = False,
    show_config: Annotated[bool, typer.Option("--show-config", help="Print the resolved config as YAML and exit.")] = False,
) -> None:
    """Train with RECIPE; the resolved config is saved as OUTPUT/config.yaml, the model in OUTPUT/pipeline/."""
    quiet()
    from edgegen.errors import EdgegenError
    from edgegen.registry import RECIPES

    entry = RECIPES.get(recipe)
    settings = list(settings or [])
    config_path = None
    if settings and "=" not in settings[0]:
        config_path = Path(settings.pop(0))
        if config_path.suffix not in (".yaml", ".yml"):
            raise EdgegenError(f"{config_path}: expected a .yaml config file or key=value")
    config = entry.resolve(config_path, settings)
    if show_config:
        console.print(entry.yaml(config), end="", markup=False, highlight=False)
        return
    if Path(config.output).exists() and not Path(config.output).is_dir():
        raise EdgegenError(f"output {config.output} is a file, not a folder")
    command = "edgegen train " + " ".join([recipe, *(sys.argv[3:] if len(sys.argv) > 3 else [])])
    threads = config.threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None
    if threads:
        import torch

        torch.set_num_threads(threads)
    pipeline_dir = entry.run(config, resume=resume, command=command)
    if int(os.environ.get("RANK", "0")) == 0:
        from edgegen.schema.base import load_strict_json
        from edgegen.schema.training import TRAINING_MANIFEST_FILENAME, TRAINING_SCHEMA_VERSION, TrainingManifest

        manifest = load_strict_json(pipeline_dir / TRAINING_MANIFEST_FILENAME, TrainingManifest, TRAINING_SCHEMA_VERSION, "training manifest")
        losses = ", ".join(f"{k} {v:.4f}" for k, v in manifest.final_losses.items())
        console.print(f"{recipe}: {manifest.steps} steps in {manifest.seconds:.0f} s; final {losses}")
        console.print(f"model: {pipeline_dir}  logs: {Path(config.output) / 'metrics.csv'}, {Path(config.output) / 'tb'}")
