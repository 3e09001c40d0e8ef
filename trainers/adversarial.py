"""HDG-MMS: a hybrid diffusion-GAN objective that makes a student sample in 1-4 steps.

In the spirit of adversarial diffusion distillation (Sauer et al., 2023). Each step draws pure
noise, lets the frozen teacher sample it with ``teacher_steps`` DDIM steps (its deterministic
ODE solution), and runs the student's own K-step sampler from the same noise: x0 predicted at
each of its timesteps, moved to the next by DDIM with eta 0 (re-noising with fresh noise, as ADD
does, would make the student's output a random function of the seed that no regression target
can match). The student's loss is
- ``distill_weight`` * distillation: every one of its K x0 estimates matches the teacher's sample
  from the same noise, so the few-step student keeps the teacher's layout for a given seed;
- ``adversarial_weight`` * the hinge generator loss of a discriminator built on frozen teacher
  UNet features with small trainable heads, conditioned on the caption
  (``edgegen.trainers.discriminator``), which learns to tell real latents from the student's
  final ones; this term keeps the outputs sharp where the regression alone would blur.
Gradients flow through all K steps, as the sampler will chain them. The student's sampling
schedule is saved in ``edgegen_student.json`` under ``recipe.sampling`` so the pipeline runner
samples it the same way.

    edgegen train adversarial teacher=path/to/teacher student=path/to/student output=out/hdg sampling_steps=2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from edgegen.trainers.config import TrainConfig
from edgegen.trainers.loop import Context, Recipe, Trainee, make_optimizer, optimise, warmup_cosine


class AdversarialConfig(TrainConfig):
    teacher: Path
    student: Path
    learning_rate: float = Field(1e-4, gt=0)
    discriminator_learning_rate: float = Field(2e-4, gt=0)
    sampling_steps: int = Field(2, ge=1, le=4)
    distill_weight: float = Field(1.0, ge=0)
    adversarial_weight: float = Field(0.1, ge=0)
    discriminator_noise: int = Field(200, ge=0)  # the discriminator sees latents noised up to this timestep
    teacher_steps: int = Field(20, ge=1, le=1000)  # DDIM steps of the teacher samples the student matches
    qat: bool = False


def sampling_timesteps(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """K evenly spaced timesteps from the noisiest down, e.g. 2 -> [999, 499]."""
    stride = num_train_timesteps // steps
    return [num_train_timesteps - 1 - i * stride for i in range(steps)]


def few_step_estimates(denoise: Any, scheduler: Any, latents: Any, embeddings: Any, timesteps: list[int]) -> list[Any]:
    """The few-step sampler's x0 estimate at each of its timesteps; the last one is its output.

    ``denoise(x, t, embeddings)`` returns the model's raw prediction; ``latents`` is pure noise
    (the initial latents at the first timestep). Between steps the sampler moves exactly as
    ``edgegen.sampling.loop`` samples a few-step student (``edgegen.sampling.schedules.few_step_update``).
    """
    import torch

    from edgegen.sampling.schedules import few_step_update
    from edgegen.trainers.denoising import predicted_clean

    x, estimates = latents, []
    for index, t in enumerate(timesteps):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long)
        clean = predicted_clean(scheduler, x, denoise(x, t_batch, embeddings), t_batch)
        estimates.append(clean)
        if index + 1 < len(timesteps):
            x = few_step_update(scheduler, x, clean, t, timesteps[index + 1])
    return estimates


def teacher_sample(unet: Any, scheduler_config: Any, latents: Any, embeddings: Any, steps: int) -> Any:
    """The teacher's deterministic DDIM sample (eta 0) from ``latents``, in latent space."""
    import torch
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    x = latents * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            prediction = unet(scheduler.scale_model_input(x, t), t, encoder_hidden_states=embeddings, return_dict=False)[0]
            x = scheduler.step(prediction, t, x).prev_sample
    return x


def prepare(config: AdversarialConfig, context: Context) -> Trainee:
    import torch

    from edgegen.trainers.denoising import predict
    from edgegen.trainers.discriminator import Discriminator, hinge_discriminator_loss, hinge_generator_loss
    from edgegen.trainers.distill import kd_batch, load_pair
    from edgegen.trainers.outputs import save_trained_pipeline

    pair = load_pair(config)
    student = pair.student
    teacher_unet, student_unet = pair.teacher_nets.denoiser, pair.student_nets.denoiser
    scheduler = pair.teacher.scheduler
    schedule = sampling_timesteps(config.sampling_steps, scheduler.config.num_train_timesteps)
    size = teacher_unet.config.sample_size
    example = (
        torch.zeros(1, teacher_unet.config.in_channels, size, size),
        torch.tensor([0]),
        torch.zeros(1, pair.teacher_nets.tokenizer.model_max_length, teacher_unet.config.cross_attention_dim),
    )
    discriminator = Discriminator(teacher_unet, pair.teacher_nets.encoder.config.hidden_size, example)

    if config.qat:
        from edgegen.trainers.qat import prepare_qat_denoiser

        network = prepare_qat_denoiser(student, config.student, config.batch_size)

        def student_predict(x, t, e):
            return network(x, t.float(), e)
    else:
        network = student_unet

        def student_predict(x, t, e):
            return predict(student_unet, x, t, e)

    generator_optimizer = make_optimizer([p for p in network.parameters() if p.requires_grad], config, betas=(0.0, 0.99))
    discriminator_optimizer = make_optimizer(list(discriminator.heads.parameters()), config, config.discriminator_learning_rate, betas=(0.0, 0.99))
    generator_schedule = warmup_cosine(generator_optimizer, config)

    def step(batch: dict[str, Any], index: int, ctx: Context) -> dict[str, float]:
        shared = kd_batch(pair, batch, index, ctx, config.caption_dropout)
        draw = ctx.generator(index, stream=1)
        real, embeddings = shared["latents"], shared["embeddings"]
        batch_size = real.shape[0]
        start = torch.randn(real.shape, generator=draw)
        target = teacher_sample(teacher_unet, scheduler.config, start, embeddings, config.teacher_steps)
        estimates = few_step_estimates(student_predict, scheduler, start, embeddings, schedule)
        fake = estimates[-1]

        d_t = torch.randint(0, config.discriminator_noise + 1, (batch_size,), generator=draw)
        d_noise = torch.randn(real.shape, generator=draw)
        real_noisy = scheduler.add_noise(real, d_noise, d_t)
        fake_noisy = scheduler.add_noise(fake, d_noise, d_t)
        d_loss = hinge_discriminator_loss(discriminator(real_noisy, d_t, embeddings), discriminator(fake_noisy.detach(), d_t, embeddings))
        optimise(discriminator_optimizer, d_loss, [discriminator.heads], ctx)

        distill = torch.stack([torch.nn.functional.mse_loss(estimate, target) for estimate in estimates]).mean()
        adversarial = hinge_generator_loss(discriminator(fake_noisy, d_t, embeddings))
        g_loss = config.distill_weight * distill + config.adversarial_weight * adversarial
        optimise(generator_optimizer, g_loss, [network], ctx)
        return {
            "loss": g_loss.item(),
            "distill": distill.item(),
            "final_vs_teacher": torch.nn.functional.mse_loss(fake.detach(), target).item(),
            "adversarial": adversarial.item(),
            "discriminator": d_loss.item(),
        }

    def save(folder: Path, summary: dict[str, Any]) -> None:
        sampling = {"steps": config.sampling_steps, "timesteps": schedule, "prediction": "x0 from the model output, moved to the next timestep by DDIM (eta 0)",
                    "teacher_steps": config.teacher_steps}
        details = {"sampling": sampling, "qat": config.qat}
        if config.qat:
            from edgegen.trainers.qat import save_qat_student

            save_qat_student(student, network, config.student, folder, summary, details)
            return
        save_trained_pipeline(student, config.student, folder, summary, details)

    return Trainee(
        modules={"student": network, "discriminator": discriminator.heads},
        optimizers={"student": generator_optimizer, "discriminator": discriminator_optimizer},
        schedulers={"student": generator_schedule},
        step=step,
        save=save,
        summary={"sampling_steps": config.sampling_steps, "sampling_timesteps": schedule},
    )


RECIPE = Recipe("adversarial", AdversarialConfig, prepare, "HDG-MMS: diffusion-GAN training of a 1-4 step student")
