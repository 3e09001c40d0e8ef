"""Decoder distillation: train a decoder student (``edgegen student init --component vae_decoder``)
to reproduce the teacher VAE decoder's images from the same latents.

Latents are the teacher VAE's encodings of the training images, with Gaussian noise of a random
strength (up to ``latent_noise``, in units of the latents' standard deviation) added to half of
them: a few-step sampler's latents sit off the encoder's manifold, and a decoder trained only on
clean encodings mis-renders them. The loss is the mean squared error between the two decoders'
images; only the student decoder trains (the folder's denoiser and text encoder are untouched).

    edgegen train decoder teacher=path/to/teacher student=path/to/decoder-student output=out/decoder
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import Field

from edgegen.trainers.config import TrainConfig
from edgegen.trainers.loop import Context, Recipe, Trainee, make_optimizer, optimise, warmup_cosine


class DecoderConfig(TrainConfig):
    teacher: Path  # the folder whose VAE the student reproduces
    student: Path  # a decoder student folder
    learning_rate: float = Field(2e-3, gt=0)
    latent_noise: float = Field(0.5, ge=0)


def prepare(config: DecoderConfig, context: Context) -> Trainee:
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny

    from edgegen.errors import EdgegenError
    from edgegen.families.base import vae_decoder_module
    from edgegen.models.decoder_student import read_decoder_manifest, weights_sha256
    from edgegen.trainers.denoising import encode_images

    manifest = read_decoder_manifest(config.student)
    if manifest is None:
        raise EdgegenError(f"{config.student} is not a decoder student (no edgegen_decoder.json); make one with `edgegen student init --component vae_decoder`")
    if not (Path(config.teacher) / "vae").is_dir():
        raise EdgegenError(f"{config.teacher} has no vae/ folder")
    teacher_vae = AutoencoderKL.from_pretrained(Path(config.teacher) / "vae").requires_grad_(False).eval()
    if weights_sha256(teacher_vae) != manifest.teacher_vae_sha256:
        raise EdgegenError(f"{config.student}'s decoder was made from another VAE than {config.teacher}/vae")
    student_vae = AutoencoderTiny.from_pretrained(Path(config.student) / "vae")
    student_vae.encoder.requires_grad_(False)  # the sampler hands the decoder latents; the encoder stays as made
    teacher_decode, student_decode = vae_decoder_module(teacher_vae), vae_decoder_module(student_vae)
    optimizer = make_optimizer([p for p in student_vae.decoder.parameters()], config)
    schedule = warmup_cosine(optimizer, config)

    def step(batch: dict[str, Any], index: int, ctx: Context) -> dict[str, float]:
        generator = ctx.generator(index)
        with torch.no_grad():
            latents = encode_images(teacher_vae, batch["pixel_values"], generator)
            count = latents.shape[0]
            strength = torch.rand((count, 1, 1, 1), generator=generator) * config.latent_noise
            strength[: count // 2] = 0.0
            latents = latents + strength * latents.std() * torch.randn(latents.shape, generator=generator)
            target = teacher_decode(latents)
        image = student_decode(latents)
        loss = torch.nn.functional.mse_loss(image, target)
        optimise(optimizer, loss, [student_vae.decoder], ctx)
        return {"loss": loss.item()}

    def save(folder: Path, summary: dict[str, Any]) -> None:
        from edgegen.models.checkpoint import forget_learned_scales
        from edgegen.schema.base import write_json
        from edgegen.schema.decoder_student import DECODER_MANIFEST_FILENAME
        from edgegen.schema.training import TRAINING_MANIFEST_FILENAME
        from edgegen.trainers.outputs import write_training_manifest

        # Everything but the decoder is the student folder's own, kept byte for byte (a few-step
        # student's schedule and SCMAN state included).
        shutil.copytree(config.student, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("vae", DECODER_MANIFEST_FILENAME, TRAINING_MANIFEST_FILENAME))
        student_vae.eval().save_pretrained(folder / "vae", safe_serialization=True)
        forget_learned_scales(folder, "vae")  # the decoder's weights moved; its learned scales went with the old vae/
        recipe = {"name": summary["recipe"], "config": summary["config"], "config_sha256": summary["config_sha256"]}
        write_json(folder / DECODER_MANIFEST_FILENAME, manifest.model_copy(update={"recipe": recipe}))
        write_training_manifest(folder, config.student, summary, {}, ("torch", "diffusers"))

    return Trainee(
        modules={"decoder": student_vae.decoder},
        optimizers={"decoder": optimizer},
        schedulers={"decoder": schedule},
        step=step,
        save=save,
        summary={"student_parameters": manifest.student_parameters, "teacher_parameters": manifest.teacher_parameters},
    )


RECIPE = Recipe("decoder", DecoderConfig, prepare, "Decoder distillation: a tiny decoder student reproduces the teacher VAE's images")
