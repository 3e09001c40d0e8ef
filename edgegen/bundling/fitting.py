"""What every bundle format needs to fit a model to an app's fixed sampling loop: the app's
scaled-linear schedule, the model's own, and the model timestep at each app timestep's noise level."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError


def scaled_linear_alphas_cumprod(beta_start: float, beta_end: float, train_timesteps: int) -> np.ndarray:
    """The cumulative alphas of scaled-linear betas in float32, as the apps compute them."""
    start, end = np.float32(math.sqrt(beta_start)), np.float32(math.sqrt(beta_end))
    step = (end - start) / np.float32(train_timesteps - 1)
    betas = (start + step * np.arange(train_timesteps, dtype=np.float32)) ** 2
    return np.cumprod(1.0 - betas, dtype=np.float32)


def model_alphas_cumprod(scheduler: Any) -> np.ndarray:
    return np.asarray(scheduler.alphas_cumprod, dtype=np.float64)


def noise_level_timesteps(model_alphas: np.ndarray, app_alphas: np.ndarray) -> np.ndarray:
    """For each app timestep, the (fractional) model timestep at the same signal-to-noise ratio.

    Both schedules fall monotonically in SNR; interpolating the model's timestep linearly in
    log SNR between its integer timesteps gives the one whose noise level equals the app's.
    Where the app's level lies outside the model's range (a zero-terminal-SNR model has none
    below its last step), the nearest end is taken.
    """
    def log_snr(alphas: np.ndarray) -> np.ndarray:
        alphas = np.clip(alphas, 1e-20, 1 - 1e-12)
        return np.log(alphas) - np.log1p(-alphas)

    model, app = log_snr(model_alphas), log_snr(app_alphas.astype(np.float64))
    # np.interp needs increasing x: the model's log SNR decreases with t.
    return np.interp(app, model[::-1], np.arange(len(model), dtype=np.float64)[::-1]).astype(np.float32)


def config(pipeline_dir: Path, subfolder: str) -> dict[str, Any]:
    return config_file(pipeline_dir, subfolder, "config.json")


def config_file(pipeline_dir: Path, subfolder: str, name: str) -> dict[str, Any]:
    path = Path(pipeline_dir) / subfolder / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EdgegenError(f"cannot read {path}: {error}") from None


def training_scheduler(pipeline_dir: Path) -> Any:
    """The pipeline's scheduler, loaded from its config alone: its alphas are the training schedule."""
    import diffusers

    scheduler_class = getattr(diffusers, str(config_file(pipeline_dir, "scheduler", "scheduler_config.json").get("_class_name")), None)
    if scheduler_class is None or not hasattr(scheduler_class, "set_timesteps"):
        scheduler_class = diffusers.DDIMScheduler
    scheduler = scheduler_class.from_pretrained(str(Path(pipeline_dir) / "scheduler"))
    if getattr(scheduler, "alphas_cumprod", None) is None:
        raise EdgegenError(f"the bundle formats run a discrete DDPM schedule; this pipeline's {type(scheduler).__name__} has none")
    return scheduler


def describe_schedule(config: Any) -> str:
    parts = [str(config.get("beta_schedule", "?"))]
    if config.get("rescale_betas_zero_snr"):
        parts.append("zero terminal SNR")
    return ", ".join(parts)
