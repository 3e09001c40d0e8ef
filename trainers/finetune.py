"""Full fine-tuning of a diffusers text-to-image pipeline with the denoising objective.

The UNet is trained (and the text encoder too with ``train_text_encoder``); the VAE is frozen.
This is how the embedded default teacher learned the shapes data from its random
initialisation, and the baseline that LoRA-MMG is measured against.

    edgegen train finetune teacher=path/to/pipeline output=out/finetune steps=200
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from edgegen.trainers.config import TrainConfig
from edgegen.trainers.loop import Context, Recipe, Trainee, make_optimizer, optimise, warmup_cosine


class FinetuneConfig(TrainConfig):
    teacher: Path  # the diffusers pipeline folder to train
    train_text_encoder: bool = False
    text_encoder_learning_rate: float | None = Field(None, gt=0)


def denoising_step(pipeline: Any, nets: Any, batch: dict[str, Any], step: int, context: Context, caption_dropout: float) -> Any:
    """The denoising loss of one batch (not yet backpropagated); ``nets``: the pipeline's networks by role."""
    import torch

    from edgegen.trainers.denoising import drop_captions, encode_images, encode_text, noisy_latents, predict, prediction_target

    generator = context.generator(step)
    latents = encode_images(nets.decoder, batch["pixel_values"], generator)
    captions = drop_captions(batch["caption"], caption_dropout, generator)
    embeddings = encode_text(nets.tokenizer, nets.encoder, captions)
    noisy, timesteps, noise = noisy_latents(pipeline.scheduler, latents, generator)
    prediction = predict(nets.denoiser, noisy, timesteps, embeddings)
    return torch.nn.functional.mse_loss(prediction, prediction_target(pipeline.scheduler, latents, noise, timesteps))


def prepare(config: FinetuneConfig, context: Context) -> Trainee:
    from edgegen.families import networks_of
    from edgegen.families.loading import load_pipeline
    from edgegen.trainers.outputs import save_trained_pipeline

    pipeline = load_pipeline(config.teacher)
    nets = networks_of(config.teacher, pipeline)
    denoiser, text_encoder = nets.denoiser, nets.encoder
    nets.decoder.requires_grad_(False).eval()
    text_encoder.requires_grad_(config.train_text_encoder)
    modules = {nets.subfolders["denoiser"]: denoiser}
    groups = [{"params": [p for p in denoiser.parameters() if p.requires_grad]}]
    if config.train_text_encoder:
        modules[nets.subfolders["encoder"]] = text_encoder
        groups.append({"params": list(text_encoder.parameters()), "lr": config.text_encoder_learning_rate or config.learning_rate})
    else:
        text_encoder.eval()
    optimizer = make_optimizer(groups, config)
    schedule = warmup_cosine(optimizer, config)

    def step(batch: dict[str, Any], index: int, ctx: Context) -> dict[str, float]:
        loss = denoising_step(pipeline, nets, batch, index, ctx, config.caption_dropout)
        optimise(optimizer, loss, list(modules.values()), ctx)
        return {"loss": loss.item()}

    trainable = sum(p.numel() for m in modules.values() for p in m.parameters() if p.requires_grad)
    total = sum(p.numel() for m in nets.all() for p in m.parameters())
    return Trainee(
        modules=modules,
        optimizers={"model": optimizer},
        schedulers={"model": schedule},
        step=step,
        save=lambda folder, summary: save_trained_pipeline(pipeline, config.teacher, folder, summary),
        summary={"trainable_parameters": trainable, "total_parameters": total, "trainable_fraction": trainable / total},
    )


RECIPE = Recipe("finetune", FinetuneConfig, prepare, "full fine-tuning of the UNet (and optionally the text encoder)")
