"""``edgegen probe``: the caption-faithfulness probe of the built-in shapes data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgegen.cli.bounds import file_output, folder_output
from edgegen.terminal import console, quiet

probe_app = typer.Typer(help="The caption-faithfulness probe: train it, score images, export its features for FID/KID.", no_args_is_help=True)


@probe_app.command("train")
def train_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Probe folder to create.", callback=folder_output)],
    steps: Annotated[int, typer.Option(help="Training steps (batches of 64 shapes).", min=1)] = 600,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
) -> None:
    """Train the colour/shape/position classifier on the built-in shapes and save it."""
    quiet()
    from edgegen.embedded.probe import save_probe, train_probe

    probe = train_probe(steps=steps, seed=seed)
    save_probe(probe, output)
    accuracy = ", ".join(f"{k} {v:.1%}" for k, v in probe.manifest.held_out_accuracy.items())
    console.print(f"wrote the probe to {output}; held-out accuracy: {accuracy}")


@probe_app.command("score")
def score_command(
    probe: Annotated[Path, typer.Argument(help="Probe folder.")],
    images: Annotated[Path, typer.Argument(help="A folder of PNGs named like `edgegen compare` writes them (0.png, 1.png, ...).")],
    prompts: Annotated[Path, typer.Option(help="The prompt file the images were generated from, one per line in order.")],
) -> None:
    """Fraction of images whose colour, shape and position match their prompt."""
    quiet()
    import numpy as np
    from PIL import Image

    from edgegen.errors import EdgegenError
    from edgegen.measure.pipeline_fidelity import read_prompts
    from edgegen.embedded.probe import faithfulness, load_probe

    model = load_probe(probe)
    captions = read_prompts(prompts)
    paths = [images / f"{index}.png" for index in range(len(captions))]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise EdgegenError(f"{images} lacks {', '.join(missing[:3])} for the {len(captions)} prompts")
    size = model.manifest.image_size
    batch = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size)), np.float32).transpose(2, 0, 1) / 127.5 - 1 for p in paths])
    score = faithfulness(model, batch, captions)
    parts = ", ".join(f"{k} {v:.0%}" for k, v in score.per_attribute.items())
    console.print(f"faithful: {score.fraction_all:.0%} of {score.count} ({parts})")


@probe_app.command("export-features")
def export_features_command(
    probe: Annotated[Path, typer.Argument(help="Probe folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.", callback=file_output)] = Path("features.onnx"),
) -> None:
    """Write the probe's feature extractor as ONNX, for `edgegen compare --feature-extractor`."""
    quiet()
    from edgegen.embedded.probe import export_feature_extractor, load_probe

    console.print(f"wrote {export_feature_extractor(load_probe(probe), output)}")
