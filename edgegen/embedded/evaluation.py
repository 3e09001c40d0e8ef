"""The shapes-grid evaluation of a pipeline: does it draw what every caption of the built-in data asks?

Every colour x shape x position caption (48), seed i for caption i, sampled by the pipeline
runner (``edgegen.sampling.loop``, eager components, one image at a time) and scored by the
caption-faithfulness probe; optionally also image PSNR against reference images made from the
same seeds (the teacher's), which is how close a student stays to its teacher image by image.
Used by ``scripts/train_embedded_default.py`` and ``benchmarks/embedded_default_faithfulness.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


def grid_prompts() -> list[str]:
    from edgegen.data.shapes import COLOURS, POSITIONS, SHAPES, caption_for

    return [caption_for(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]


@dataclass(frozen=True)
class GridImages:
    images: Any  # float32 [N, 3, H, W] in [-1, 1], one per grid prompt
    steps: int  # denoiser steps actually run (a few-step student's own schedule wins)
    ms_per_image: list[float]  # end to end, text encoder to decoded image


def generate_grid(model_dir: Path, steps: int, guidance_scale: float) -> GridImages:
    import numpy as np

    from edgegen.sampling.loop import initial_latents, load_case, sampling_plan

    case = load_case(model_dir, None, sampling_plan(model_dir, steps, guidance_scale))
    generations = [case.generate(p, initial_latents(case.latent_shape, i), i) for i, p in enumerate(grid_prompts())]
    return GridImages(np.stack([g.image for g in generations]), case.plan.steps, [g.total_ms for g in generations])


def evaluate_grid(model_dir: Path, probe_dir: Path, steps: int, guidance_scale: float, reference: Any = None) -> dict[str, Any]:
    """Faithfulness (all three attributes, and each), steps, median ms per image, PSNR vs ``reference``."""
    import numpy as np

    from edgegen.measure.metrics import psnr_db
    from edgegen.embedded.probe import faithfulness, load_probe

    grid = generate_grid(model_dir, steps, guidance_scale)
    score = faithfulness(load_probe(probe_dir), grid.images, grid_prompts())
    result = {
        "steps": grid.steps,
        "guidance_scale": guidance_scale,
        "all": score.fraction_all,
        **score.per_attribute,
        "ms_per_image_p50": float(np.median(grid.ms_per_image)),
    }
    if reference is not None:
        result["psnr_vs_teacher_db"] = float(np.mean([psnr_db(r, i) for r, i in zip(reference, grid.images)]))
    return result
