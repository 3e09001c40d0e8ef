"""Scheduler arithmetic shared by the trainers and the pipeline runner."""

from __future__ import annotations

from typing import Any


def predicted_clean(scheduler: Any, noisy: Any, prediction: Any, timesteps: Any) -> Any:
    """x0 from the model output at ``timesteps`` (epsilon, v or sample parameterisation)."""
    alphas = scheduler.alphas_cumprod.to(noisy.dtype)[timesteps].view(-1, 1, 1, 1)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (noisy - (1 - alphas).sqrt() * prediction) / alphas.sqrt()
    if kind == "v_prediction":
        return alphas.sqrt() * noisy - (1 - alphas).sqrt() * prediction
    return prediction


def few_step_update(scheduler: Any, noisy: Any, clean: Any, timestep: int, following: int) -> Any:
    """A few-step sampler's move from ``timestep`` to ``following``: DDIM with eta 0.

    The x0 estimate is re-noised with the noise the model implies, not fresh noise, so the
    sampler is a deterministic function of its initial latents: a student can then be trained
    to land where the teacher's own sampler lands from the same seed.
    """
    alphas = scheduler.alphas_cumprod.to(noisy.dtype)
    now, then = alphas[timestep], alphas[following]
    implied_noise = (noisy - now.sqrt() * clean) / (1 - now).sqrt()
    return then.sqrt() * clean + (1 - then).sqrt() * implied_noise
