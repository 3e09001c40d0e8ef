"""The training manifest written beside a trained pipeline: how these weights were made."""

from __future__ import annotations

from typing import Any

from edgegen.schema.base import StrictModel

TRAINING_SCHEMA_VERSION = 1
TRAINING_MANIFEST_FILENAME = "edgegen_training.json"


class TrainingManifest(StrictModel):
    schema_version: int = TRAINING_SCHEMA_VERSION
    recipe: str
    config: dict[str, Any]  # the resolved config
    config_sha256: str
    parent_dir: str  # the teacher (or student) the run started from
    parent_unet_sha256: str
    data: dict[str, Any]  # source, kept, dropped per reason
    steps: int
    resumed_from_step: int
    world_size: int
    ranks_in_sync: bool  # every rank ended with bit-identical weights
    final_losses: dict[str, float]
    seconds: float
    finished_at: str
    details: dict[str, Any] = {}  # recipe-specific: trainable fraction, sampling schedule, QAT, ...
    versions: dict[str, str]
