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
