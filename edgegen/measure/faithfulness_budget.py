"""A faithfulness budget for ``--quantize auto``: the pipeline with one int8 artifact in place of its
eager component must keep a share of the float pipeline's caption faithfulness.

PSNR against float says how far one component's numbers moved; whether the images still show
what their captions asked for is the pipeline's question. Given a probe (``edgegen probe``),
the export runs the whole pipeline on the probe's captions twice, from the same seeds and
initial latents: eagerly in float, and with the new artifact (the other components eager),
and compares the fractions of images whose every attribute the probe reads as asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError

DEFAULT_CAPTIONS = 16
DEFAULT_STEPS = 20  # a few-step student runs its own schedule


@dataclass(frozen=True)
class FaithfulnessBudget:
    probe_dir: Path
    min_share: float  # of the float pipeline's faithfulness, in (0, 1]
    captions: int = DEFAULT_CAPTIONS


@dataclass(frozen=True)
class FaithfulnessCheck:
    reached: float  # with the artifact
    float_pipeline: float
    captions: int

    def meets(self, budget: FaithfulnessBudget) -> bool:
        return self.reached >= budget.min_share * self.float_pipeline

    def as_dict(self, budget: FaithfulnessBudget) -> dict[str, Any]:
        return {
            "probe": str(Path(budget.probe_dir).resolve()), "min_share_of_float": budget.min_share, "captions": self.captions,
            "float_pipeline": self.float_pipeline, "reached": self.reached,
        }


def check_budget(budget: FaithfulnessBudget) -> None:
    """Refuse a budget that cannot be measured, before anything loads."""
    if not 0 < budget.min_share <= 1:
        raise EdgegenError(f"--min-faithfulness {budget.min_share} is not a share of the float pipeline's faithfulness in (0, 1]")
    from edgegen.embedded.probe import PROBE_MANIFEST

    if not (Path(budget.probe_dir) / PROBE_MANIFEST).is_file():
        raise EdgegenError(f"{budget.probe_dir} is not a probe folder (no probe.json); make one with `edgegen probe`")


def _captions(count: int) -> list[str]:
    from edgegen.data.shapes import attributes_of, caption_for

    return [caption_for(**attributes_of(index)) for index in range(count)]


def _images(case: Any, captions: list[str]) -> np.ndarray:
    from edgegen.sampling.loop import initial_latents

    return np.stack([case.generate(caption, initial_latents(case.latent_shape, seed), seed).image for seed, caption in enumerate(captions)])


def measure(
    pipeline_dir: Path, pipeline: Any, artifact_folder: Path, budget: FaithfulnessBudget, few_steps: int | None = None, guidance_scale: float = 1.0
) -> FaithfulnessCheck:
    """The probe's faithfulness with the artifact in ``artifact_folder`` against the eager float pipeline's."""
    from edgegen.embedded.probe import faithfulness, load_probe
    from edgegen.sampling.loop import load_case, load_case_with_artifact, sampling_plan

    probe = load_probe(Path(budget.probe_dir))
    captions = _captions(budget.captions)
    plan = sampling_plan(pipeline_dir, DEFAULT_STEPS, guidance_scale, few_steps=few_steps)
    reference = faithfulness(probe, _images(load_case(pipeline_dir, None, plan, pipeline=pipeline), captions), captions).fraction_all
    reached = faithfulness(probe, _images(load_case_with_artifact(pipeline_dir, pipeline, plan, artifact_folder), captions), captions).fraction_all
    return FaithfulnessCheck(reached=reached, float_pipeline=reference, captions=len(captions))
