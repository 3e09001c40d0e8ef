"""KD-MMG: distil a teacher pipeline into a compact student (``edgegen student init``).

The loss is a weighted sum of three terms, on the same noisy latents, timesteps and caption
embeddings for both networks:
- ``denoise_weight``: the ordinary denoising loss against the true noise (or v);
- ``output_weight``: output-level KD, the student's prediction against the teacher's;
- ``feature_weight``: feature-level KD, chosen block outputs through 1x1 projection heads.
Both networks are conditioned by the teacher's text encoder, which the student inherits (the
student folder is saved with it). With ``qat=true`` the student denoiser trains as a PT2E
fake-quantized graph (output-level KD and the denoising loss only) and the checkpoint carries
the learned int8 scales (see ``edgegen.trainers.qat``).

    edgegen train distill teacher=path/to/teacher student=path/to/student output=out/distill
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from edgegen.trainers.config import TrainConfig
from edgegen.trainers.loop import Context, Recipe, Trainee, make_optimizer, optimise, warmup_cosine


class DistillConfig(TrainConfig):
    teacher: Path
    student: Path
    learning_rate: float = Field(5e-4, gt=0)
    denoise_weight: float = Field(1.0, ge=0)
    output_weight: float = Field(1.0, ge=0)
    feature_weight: float = Field(0.5, ge=0)
    feature_blocks: list[str] | None = None  # default: every block of both with the same resolution
    qat: bool = False


@dataclass
class Pair:
    """Teacher and student pipelines with their networks by role (edgegen.families.Networks)."""

    teacher: Any
    student: Any
    teacher_nets: Any
    student_nets: Any


def load_pair(config: Any) -> Pair:
    """Teacher and student pipelines, checked for matching conditioning before any training."""
    from edgegen.errors import EdgegenError
    from edgegen.families import networks_of
    from edgegen.families.loading import load_pipeline
    from edgegen.models.checkpoint import read_student_manifest
    from edgegen.trainers.kd import check_compatible

    teacher = load_pipeline(config.teacher)
    student = load_pipeline(config.student)
    if read_student_manifest(config.student) is None:
        raise EdgegenError(f"{config.student} is not a student folder (no edgegen_student.json); make one with `edgegen student init`")
    teacher_nets, student_nets = networks_of(config.teacher, teacher), networks_of(config.student, student)
    check_compatible(teacher_nets, student_nets)
    for module in teacher_nets.all():
        module.requires_grad_(False).eval()
    # One conditioning for both: the student ships with the teacher's encoder, tokenizer and VAE.
    shared = {teacher_nets.subfolders[role]: getattr(teacher_nets, role) for role in ("encoder", "decoder", "tokenizer")}
    for name, module in shared.items():
        setattr(student, name, module)
    student.register_modules(**shared)
    return Pair(teacher, student, teacher_nets, networks_of(config.student, student))


def kd_batch(pair: Pair, batch: dict[str, Any], step: int, context: Context, caption_dropout: float) -> dict[str, Any]:
    """Noisy latents, timesteps, embeddings and targets shared by teacher and student."""
    import torch

    from edgegen.trainers.denoising import drop_captions, encode_images, encode_text, noisy_latents, prediction_target

    teacher, nets = pair.teacher, pair.teacher_nets
    generator = context.generator(step)
    latents = encode_images(nets.decoder, batch["pixel_values"], generator)
    captions = drop_captions(batch["caption"], caption_dropout, generator)
    with torch.no_grad():
        embeddings = encode_text(nets.tokenizer, nets.encoder, captions)
    noisy, timesteps, noise = noisy_latents(teacher.scheduler, latents, generator)
    return {
        "latents": latents,
        "noisy": noisy,
        "timesteps": timesteps,
        "embeddings": embeddings,
        "target": prediction_target(teacher.scheduler, latents, noise, timesteps),
    }


def prepare(config: DistillConfig, context: Context) -> Trainee:
    import torch

    from edgegen.errors import EdgegenError
    from edgegen.trainers.denoising import predict
    from edgegen.trainers.kd import FeatureTap, feature_loss, matching_blocks, projection_heads
    from edgegen.trainers.outputs import save_trained_pipeline

    pair = load_pair(config)
    student = pair.student
    teacher_unet, student_unet = pair.teacher_nets.denoiser, pair.student_nets.denoiser
    size = student_unet.config.sample_size
    example = (
        torch.zeros(1, student_unet.config.in_channels, size, size),
        torch.tensor([500]),
        torch.zeros(1, pair.student_nets.tokenizer.model_max_length, student_unet.config.cross_attention_dim),
    )
    use_features = config.feature_weight > 0 and not config.qat
    channels = matching_blocks(teacher_unet, student_unet, example) if use_features else {}
    if config.feature_blocks is not None and use_features:
        unknown = [name for name in config.feature_blocks if name not in channels]
        if unknown:
            raise EdgegenError(f"feature_blocks {', '.join(unknown)} are not blocks of both networks at the same resolution; choose from {', '.join(channels)}")
        channels = {name: channels[name] for name in config.feature_blocks}
    heads = projection_heads(channels)
    teacher_tap = FeatureTap(teacher_unet, list(channels)) if channels else None
    student_tap = FeatureTap(student_unet, list(channels)) if channels else None

    if config.qat:
        from edgegen.trainers.qat import prepare_qat_denoiser

        denoiser = prepare_qat_denoiser(student, config.student, config.batch_size)
        modules = {"student": denoiser}

        def student_predict(noisy, timesteps, embeddings):
            return denoiser(noisy, timesteps.float(), embeddings)
    else:
        modules = {"student": student_unet}
        if channels:
            modules["heads"] = heads

        def student_predict(noisy, timesteps, embeddings):
            return predict(student_unet, noisy, timesteps, embeddings)

    optimizer = make_optimizer([p for m in modules.values() for p in m.parameters() if p.requires_grad], config)
    schedule = warmup_cosine(optimizer, config)

    def step(batch: dict[str, Any], index: int, ctx: Context) -> dict[str, float]:
        shared = kd_batch(pair, batch, index, ctx, config.caption_dropout)
        with torch.no_grad():
            teacher_prediction = predict(teacher_unet, shared["noisy"], shared["timesteps"], shared["embeddings"])
        prediction = student_predict(shared["noisy"], shared["timesteps"], shared["embeddings"])
        terms = {
            "denoise": torch.nn.functional.mse_loss(prediction, shared["target"]),
            "output_kd": torch.nn.functional.mse_loss(prediction, teacher_prediction),
        }
        loss = config.denoise_weight * terms["denoise"] + config.output_weight * terms["output_kd"]
        if channels:
            terms["feature_kd"] = feature_loss(heads, student_tap.features, teacher_tap.features)
            loss = loss + config.feature_weight * terms["feature_kd"]
        optimise(optimizer, loss, list(modules.values()), ctx)
        return {"loss": loss.item(), **{name: value.item() for name, value in terms.items()}}

    def save(folder: Path, summary: dict[str, Any]) -> None:
        from edgegen.models.checkpoint import read_student_manifest

        details = {"feature_blocks": list(channels), "qat": config.qat}
        teacher_manifest = read_student_manifest(config.teacher)
        if teacher_manifest is not None and teacher_manifest.sampling:
            # Distilled from a few-step student at every timestep, the student answers as it does:
            # its fixed schedule is this student's too (one-call pipelines unroll it).
            details["sampling"] = teacher_manifest.sampling.model_dump()
        if config.qat:
            from edgegen.trainers.qat import save_qat_student

            save_qat_student(student, modules["student"], config.student, folder, summary, details)
            return
        save_trained_pipeline(student, config.student, folder, summary, details)

    trainable = sum(p.numel() for p in student_unet.parameters())
    return Trainee(
        modules=modules,
        optimizers={"student": optimizer},
        schedulers={"student": schedule},
        step=step,
        save=save,
        summary={"student_parameters": trainable, "teacher_parameters": sum(p.numel() for p in teacher_unet.parameters())},
    )


RECIPE = Recipe("distill", DistillConfig, prepare, "KD-MMG: output- and feature-level distillation into a student")
