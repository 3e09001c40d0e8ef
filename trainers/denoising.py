"""The denoising objective of a diffusers text-to-image pipeline, as plain functions.

Images are VAE-encoded (frozen), noised at random timesteps with the pipeline's scheduler, and
the denoiser predicts the noise (or v, per ``prediction_type``) conditioned on the caption's text
embeddings. Every random draw takes a generator so that runs resume exactly.
"""

from __future__ import annotations

from typing import Any


def encode_images(vae: Any, pixel_values: Any, generator: Any) -> Any:
    import torch

    if type(vae).__name__ == "AutoencoderTiny":
        from edgegen.errors import EdgegenError

        raise EdgegenError("this folder's VAE is a decoder student (AutoencoderTiny), which encodes nothing it was trained for; train on a folder with the teacher's VAE")
    with torch.no_grad():
        posterior = vae.encode(pixel_values).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator)
        latents = posterior.mean + posterior.std * noise
    # diffusers' convention: (latents - shift) * scaling; the shift is 0 for SD 1.x/2.x VAEs.
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def drop_captions(captions: list[str], probability: float, generator: Any) -> list[str]:
    import torch

    if probability <= 0:
        return list(captions)
    keep = torch.rand(len(captions), generator=generator) >= probability
    return [caption if kept else "" for caption, kept in zip(captions, keep.tolist())]


def encode_text(tokenizer: Any, text_encoder: Any, captions: list[str]) -> Any:
    from edgegen.families.base import tokenize

    return text_encoder(tokenize(tokenizer, captions).input_ids, return_dict=False)[0]


def noisy_latents(scheduler: Any, latents: Any, generator: Any, timesteps: Any = None) -> tuple[Any, Any, Any]:
    """(noisy latents, timesteps, the noise that was added)."""
    import torch

    noise = torch.randn(latents.shape, generator=generator)
    if timesteps is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    return scheduler.add_noise(latents, noise, timesteps), timesteps, noise


def prediction_target(scheduler: Any, latents: Any, noise: Any, timesteps: Any) -> Any:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unsupported prediction_type {kind}")


def predict(unet: Any, noisy: Any, timesteps: Any, embeddings: Any) -> Any:
    return unet(noisy, timesteps, encoder_hidden_states=embeddings, return_dict=False)[0]


def predicted_clean(scheduler: Any, noisy: Any, prediction: Any, timesteps: Any) -> Any:
    from edgegen.sampling.schedules import predicted_clean as clean

    return clean(scheduler, noisy, prediction, timesteps)
