"""What every bundle format needs to fit a model to an app's fixed sampling loop: the app's
scaled-linear schedule, the model's own, and the model timestep at each app timestep's noise level."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError


def scaled_linear_alphas_cumprod(beta_start: float, beta_end: float, train_timesteps: int) -> np.ndarray:
    """The cumulative alphas of scaled-linear betas in float32, as the apps compute them."""
    start, end = np.sqrt(np.float32(beta_start)), np.sqrt(np.float32(beta_end))  # in float32, as the apps take it
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
    model, app = _log_snr(model_alphas), _log_snr(app_alphas)
    # np.interp needs increasing x: the model's log SNR decreases with t.
    return np.interp(app, model[::-1], np.arange(len(model), dtype=np.float64)[::-1]).astype(np.float32)


def _log_snr(alphas: np.ndarray) -> np.ndarray:
    alphas = np.clip(np.asarray(alphas, dtype=np.float64), 1e-20, 1 - 1e-12)
    return np.log(alphas) - np.log1p(-alphas)


def beyond_the_model(model_alphas: np.ndarray, app_alphas: np.ndarray) -> str | None:
    """A fit's note when some app timesteps are noisier (or cleaner) than any the model trained at:
    those run at the model's own end of the schedule, which is the nearest it knows."""
    model, app = _log_snr(model_alphas), _log_snr(app_alphas)
    # A tolerance for the same schedule computed in float32 (the apps) and float64 (diffusers).
    noisier, cleaner = int(np.sum(app < model.min() - 1e-3)), int(np.sum(app > model.max() + 1e-3))
    if not noisier and not cleaner:
        return None
    parts = ([f"{noisier} of the app's timesteps are noisier than the model's last"] if noisier else []) + (
        [f"{cleaner} cleaner than its first"] if cleaner else []
    )
    return "noise range: " + " and ".join(parts) + "; they run at that end of the model's schedule"


def config(pipeline_dir: Path, subfolder: str) -> dict[str, Any]:
    return config_file(pipeline_dir, subfolder, "config.json")


def config_index(pipeline_dir: Path) -> dict[str, Any]:
    """The folder's model_index.json."""
    return config_file(pipeline_dir, ".", "model_index.json")


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


def clip_ids_as_the_pipeline_tokenizes(ids: Any, tokens: int, bos: int, eos: int, pad: int) -> Any:
    """An app's CLIP token ids ([1, N], N >= ``tokens``) made the ids the pipeline's own tokenizer
    gives, in the graph, for what apps are known to send: no start or end token (a tokenizer
    that does not apply its post-processor), a doubled start (the literal ``<|startoftext|>``
    prompt through a post-processor that adds one), the end token dropped on truncation, or
    another padding than the model's (``<|endoftext|>``, ``!``). Static shapes, no
    data-dependent control flow: each case is a select."""
    import torch

    first, second = ids[:, :1], ids[:, 1:2]
    shifted_left = torch.cat([ids[:, 1:], torch.full_like(first, pad)], dim=1)
    shifted_right = torch.cat([torch.full_like(first, bos), ids[:, :-1]], dim=1)
    starts = first == bos
    ids = torch.where(torch.logical_and(starts, second == bos), shifted_left, torch.where(starts, ids, shifted_right))
    ids = ids[:, :tokens]
    # A prompt cut at the encoder's length keeps its end token in the last place, as truncation does.
    # (The last place only: a padding token such as "!" may also occur inside a prompt.)
    ended = torch.logical_or(ids[:, -1:] == eos, ids[:, -1:] == pad)
    last = torch.where(ended, ids[:, -1:], torch.full_like(first, eos))
    ids = torch.cat([ids[:, :-1], last], dim=1)
    # Everything after the first end token is padding, in the model's own token, whatever the app
    # padded with (Swift's second SDXL tokenizer pads with "!").
    is_end = (ids == eos).to(torch.int32)
    after_end = (torch.cumsum(is_end, dim=1) - is_end) > 0
    return torch.where(after_end, torch.full_like(ids, pad), ids)


@dataclass
class ScheduleFit:
    prediction: str  # the model's: epsilon or v_prediction
    timestep_table: np.ndarray  # app timestep -> the model's timestep at the same noise level
    adaptations: list[str]  # what bundle.json says of the timesteps


def fit_schedule(scheduler: Any, app_alphas: np.ndarray, schedulers: str, reads: str) -> ScheduleFit:
    """The model's training schedule (``scheduler``, from ``training_scheduler``) against an app's
    fixed one: its prediction type (``schedulers`` ``reads`` names the app's in a refusal), and the
    table the UNet reads app timesteps through. Any training length: looked up by noise level."""
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise EdgegenError(f"{schedulers} {reads}; a {prediction} model is not converted")
    model = model_alphas_cumprod(scheduler)
    table = noise_level_timesteps(model, app_alphas)
    adaptations = []
    shift = float(np.max(np.abs(table - np.arange(len(table)))))
    if shift > 1e-3:
        adaptations.append(
            f"timesteps: the app's scaled-linear schedule differs from the model's ({describe_schedule(scheduler.config)}); "
            f"the UNet runs each app timestep at the model timestep of the same noise level (up to {shift:.1f} apart)"
        )
    beyond = beyond_the_model(model, app_alphas)
    if beyond:
        adaptations.append(beyond)
    return ScheduleFit(prediction, table, adaptations)


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """A CLIP tokenizer's start, end and padding ids (padding is the end token where none is set)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return tokenizer.bos_token_id, tokenizer.eos_token_id, pad


def program_component(name: str, module: Any, example: tuple, input_names: list[str], output_names: str | list[str]) -> Any:
    """``module`` on ``example`` as a Component an exporter takes, for a bundle's own graphs."""
    import torch

    from edgegen.families.base import Component, tensor_spec

    names = [output_names] if isinstance(output_names, str) else list(output_names)
    with torch.no_grad():
        expected = module(*example)
    expected = expected if isinstance(expected, tuple) else (expected,)
    return Component(
        name=name, module=module, inputs=[tensor_spec(n, t) for n, t in zip(input_names, example, strict=True)],
        outputs=[tensor_spec(n, t) for n, t in zip(names, expected, strict=True)], reference_inputs=dict(zip(input_names, example, strict=True)),
        source_subfolder="-", source_class=type(module).__name__,
    )
