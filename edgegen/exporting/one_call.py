"""One-call pipeline programs: a few-step student's whole pipeline as ONE exported program.

text encoder -> K denoiser steps unrolled on the student's fixed schedule -> decoder, with token
ids and the initial noise in and the image out. An app embeds one file and makes one call: no
scheduler, no tensors crossing between runtime calls, no host loop. The program is built from the
family's own component modules (the ones exported one by one), so the components' rewrites and
static shapes hold, and its arithmetic between steps is the sampling loop's few-step update
(``edgegen.sampling.schedules``) with the scheduler's constants baked in.

Only few-step students have a fixed schedule to unroll; a teacher's sampler depends on its
scheduler's state and step count, and is refused.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.families import Component, components_with_role, family_of
from edgegen.families.base import Family, tensor_spec
from edgegen.schema.manifest import OneCallProgram

PIPELINE_COMPONENT = "pipeline"
TOKENIZER_FOLDER = "tokenizer"
DENOISER_INPUTS = ["sample", "timestep", "encoder_hidden_states"]
UPDATE = "x0 predicted at each timestep, moved to the next by DDIM (eta 0); the last prediction is decoded"


def check_family(family: Family) -> None:
    """One line if ``family``'s conditioning is more than one text encoder's hidden states."""
    encoders = family.encoders
    if len(encoders) != 1 or encoders[0].attention_mask or encoders[0].pooled_output or "embedded" in family.guidance_modes:
        raise EdgegenError(
            f"one-call pipelines are built for families conditioned on one text encoder's hidden states "
            f"(stable-diffusion); {family.name} pipelines are not supported yet: export their components"
        )


def few_step_schedule(pipeline_dir: Path, steps: int | None) -> tuple[int, ...]:
    """The student's fixed schedule (its first ``steps`` timesteps), or one line why there is none."""
    from edgegen.models.checkpoint import read_student_manifest

    manifest = read_student_manifest(pipeline_dir)
    sampling = manifest.sampling if manifest else None
    if not sampling:
        what = "a student without a few-step schedule" if manifest else "not a student"
        raise EdgegenError(
            f"{pipeline_dir} is {what}: a one-call pipeline unrolls a few-step student's fixed schedule "
            "(train one with `edgegen train adversarial`); export its components instead"
        )
    timesteps = tuple(int(t) for t in sampling.timesteps)
    if steps is not None:
        if not 1 <= steps <= len(timesteps):
            raise EdgegenError(f"{pipeline_dir} is a {len(timesteps)}-step student (timesteps {list(timesteps)}); --steps must be 1..{len(timesteps)}")
        timesteps = timesteps[:steps]
    return timesteps


def _step_coefficients(alphas: list[float], prediction_type: str) -> list[dict[str, tuple[float, float]]]:
    """Per step, the (a, b) of each ``a * u + b * v`` the few-step update makes (schedules.py's
    arithmetic with the scheduler's constants): x0 from (x, prediction), the implied noise from
    (x, x0), and the next latents from (x0, implied noise)."""
    steps = []
    for index, now in enumerate(alphas):
        step = {}
        if prediction_type == "epsilon":
            step["clean"] = (1 / math.sqrt(now), -math.sqrt(1 - now) / math.sqrt(now))
        elif prediction_type == "v_prediction":
            step["clean"] = (math.sqrt(now), -math.sqrt(1 - now))
        if index + 1 < len(alphas):
            then = alphas[index + 1]
            step["noise"] = (1 / math.sqrt(1 - now), -math.sqrt(now) / math.sqrt(1 - now))
            step["next"] = (math.sqrt(then), math.sqrt(1 - then))
        steps.append(step)
    return steps


def few_step_loop(denoiser: Any, alphas: list[float], timesteps: tuple[int, ...], prediction_type: str, guidance_scale: float | None) -> Any:
    """The student's few-step sampling loop as a module: ``(latents, embeddings) -> x0``, the last
    step's clean prediction. With ``guidance_scale`` (classifier-free), ``embeddings`` holds the
    conditional then the unconditional states and each step runs the denoiser on both."""
    import torch

    classifier_free = guidance_scale is not None
    batch = 2 if classifier_free else 1
    steps = _step_coefficients(alphas, prediction_type)

    class Loop(torch.nn.Module):
        # The scheduler's constants are [1, 1, 1, 1] tensors, not Python scalars: a tensor product
        # is an op XNNPACK takes, so the steps stay inside one delegate instead of crossing to
        # portable kernels between them.
        def __init__(self):
            super().__init__()
            self.denoiser = denoiser
            self.values: dict[str, float] = {}
            if classifier_free:
                self._constant("guidance", guidance_scale)
            for index, t in enumerate(timesteps):
                self.register_buffer(f"timestep_{index}", torch.full((batch,), float(t)), persistent=False)
                for name, (a, b) in steps[index].items():
                    self._constant(f"step{index}_{name}_a", a)
                    self._constant(f"step{index}_{name}_b", b)

        def _constant(self, name: str, value: float) -> None:
            self.values[name] = value
            self.register_buffer(name, torch.full((1, 1, 1, 1), value), persistent=False)

        def _weighted(self, name: str, u, v):
            """``a * u + b * v`` with exact 0 and 1 coefficients folded away: a zero-terminal-SNR
            schedule has alpha 0 at its first timestep, and LiteRT's converter turns
            ``0.0 * u - 1.0 * v`` into ``+v`` (8 dB against eager on the embedded student)."""
            result = None
            for suffix, tensor in (("a", u), ("b", v)):
                key = f"{name}_{suffix}"
                if self.values[key] == 0.0:
                    continue
                term = tensor if self.values[key] == 1.0 else getattr(self, key) * tensor
                result = term if result is None else result + term
            return result if result is not None else u * 0.0

        def forward(self, latents, embeddings):
            x = latents
            for index in range(len(timesteps)):
                timestep = getattr(self, f"timestep_{index}")
                if classifier_free:
                    conditional, plain = self.denoiser(torch.cat([x, x]), timestep, embeddings).chunk(2)
                    prediction = plain + self.guidance * (conditional - plain)
                else:
                    prediction = self.denoiser(x, timestep, embeddings)
                clean = self._weighted(f"step{index}_clean", x, prediction) if f"step{index}_clean_a" in self.values else prediction
                if index + 1 < len(timesteps):
                    implied_noise = self._weighted(f"step{index}_noise", x, clean)
                    x = self._weighted(f"step{index}_next", clean, implied_noise)
                else:
                    x = clean
            return x

    return Loop().eval()


def _program_module(encoder: Any, denoiser: Any, decoder: Any, alphas: list[float], timesteps: tuple[int, ...], prediction_type: str, guidance_scale: float, unconditional_ids: Any) -> Any:
    import torch

    classifier_free = unconditional_ids is not None
    loop = few_step_loop(denoiser, alphas, timesteps, prediction_type, guidance_scale if classifier_free else None)

    class OneCallPipeline(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.loop, self.decoder = encoder, loop, decoder
            if classifier_free:
                self.register_buffer("unconditional_ids", unconditional_ids, persistent=False)

        def forward(self, input_ids, latents):
            if classifier_free:
                embeddings = self.encoder(torch.cat([input_ids, self.unconditional_ids]))
            else:
                embeddings = self.encoder(input_ids)
            return self.decoder(self.loop(latents, embeddings)).clamp(-1.0, 1.0)

    return OneCallPipeline().eval()


def build_program(pipeline: Any, pipeline_dir: Path, steps: int | None, guidance_scale: float, prompt: str | None = None, seed: int = 0) -> Component:
    """The one-call program of the few-step student in ``pipeline_dir`` (loaded as ``pipeline``)."""
    import torch

    from edgegen.families.base import tokenize
    from edgegen.families.loading import checkpoint_sha256
    from edgegen.families.prompts import DEFAULT_PROMPT
    from edgegen.sampling.loop import guidance_mode, initial_latents

    family = family_of(pipeline_dir)
    check_family(family)
    timesteps = few_step_schedule(pipeline_dir, steps)
    mode = guidance_mode(family, guidance_scale)
    parts = {role: components_with_role(family, role)[0] for role in ("encoder", "denoiser", "decoder")}
    built = {role: family.build_component(pipeline, spec.name) for role, spec in parts.items()}
    denoiser_inputs = [spec.name for spec in built["denoiser"].inputs]
    if denoiser_inputs != DENOISER_INPUTS:
        raise EdgegenError(f"a one-call pipeline unrolls a denoiser of ({', '.join(DENOISER_INPUTS)}); {family.name}'s takes ({', '.join(denoiser_inputs)})")
    encoder_spec = family.encoders[0]
    tokenizer = getattr(pipeline, encoder_spec.tokenizer_subfolder)
    classifier_free = mode == "classifier-free" and guidance_scale > 1.0
    unconditional = tokenize(tokenizer, [""], encoder_spec.max_length).input_ids if classifier_free else None
    scheduler = pipeline.scheduler
    alphas = [float(scheduler.alphas_cumprod[t]) for t in timesteps]
    prediction_type = scheduler.config.prediction_type
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise EdgegenError(f"the scheduler predicts '{prediction_type}'; a one-call pipeline takes epsilon, v_prediction or sample")
    module = _program_module(
        built["encoder"].module, built["denoiser"].module, built["decoder"].module, alphas, timesteps, prediction_type, guidance_scale, unconditional
    )
    latent_shape = family.latent_shape(pipeline_dir)
    input_ids = tokenize(tokenizer, [prompt or DEFAULT_PROMPT], encoder_spec.max_length).input_ids
    inputs = {"input_ids": input_ids, "latents": torch.from_numpy(initial_latents(latent_shape, seed))}
    with torch.no_grad():
        image = module(*inputs.values())
    checkpoints = {spec.name: checkpoint_sha256(pipeline_dir, spec.subfolder) for spec in parts.values()}
    program = OneCallProgram(
        family=family.name,
        timesteps=list(timesteps),
        alphas_cumprod=alphas,
        prediction_type=prediction_type,
        update=UPDATE,
        guidance_scale=guidance_scale if classifier_free else 1.0,
        latent_shape=list(latent_shape),
        tokenizer_folder=TOKENIZER_FOLDER,
        max_length=int(input_ids.shape[1]),
        components=checkpoints,
    )
    rewrites = [rewrite for part in built.values() for rewrite in part.graph_rewrites]
    return Component(
        name=PIPELINE_COMPONENT,
        module=module,
        inputs=[tensor_spec(name, value) for name, value in inputs.items()],
        outputs=[tensor_spec("image", image)],
        reference_inputs=inputs,
        source_subfolder=parts["denoiser"].subfolder,
        source_class=f"{family.name} one-call pipeline ({len(timesteps)} steps)",
        graph_rewrites=[*rewrites, f"{len(timesteps)} denoiser step(s) unrolled on timesteps {list(timesteps)}"],
        program=program,
    )


def calibration_inputs(pipeline: Any, pipeline_dir: Path, program: Component, count: int) -> list[dict[str, Any]]:
    """Other prompts and initial noise than the reference: the program's int8 calibration."""
    import torch

    from edgegen.families.base import tokenize
    from edgegen.families.prompts import CALIBRATION_PROMPTS
    from edgegen.sampling.loop import initial_latents

    family = family_of(pipeline_dir)
    encoder_spec = family.encoders[0]
    tokenizer = getattr(pipeline, encoder_spec.tokenizer_subfolder)
    shape = tuple(program.reference_inputs["latents"].shape)
    return [
        {
            "input_ids": tokenize(tokenizer, [CALIBRATION_PROMPTS[index % len(CALIBRATION_PROMPTS)]], encoder_spec.max_length).input_ids,
            "latents": torch.from_numpy(initial_latents(shape, 1000 + index)),
        }
        for index in range(count)
    ]


def copy_tokenizer(pipeline_dir: Path, folder: Path) -> None:
    """The tokenizer files beside the program: the app tokenizes exactly as the program expects."""
    from edgegen.families.base import TOKENIZER_FILES

    family = family_of(pipeline_dir)
    source = Path(pipeline_dir) / family.encoders[0].tokenizer_subfolder
    destination = Path(folder) / TOKENIZER_FOLDER
    destination.mkdir(parents=True, exist_ok=True)
    copied = 0
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and not (source / name).is_symlink():
            shutil.copyfile(source / name, destination / name)
            copied += 1
    if not copied:
        raise EdgegenError(f"{source} holds none of the tokenizer files ({', '.join(TOKENIZER_FILES)}); nothing was written")


def check_program(model_dir: Path, artifact: Any) -> None:
    """Refuse a one-call program that was not exported from ``model_dir``'s weights."""
    from edgegen.families.loading import checkpoint_sha256

    program = artifact.manifest.program
    if artifact.manifest.component != PIPELINE_COMPONENT or program is None:
        raise EdgegenError(f"{artifact.folder} is a {artifact.manifest.component} artifact, not a one-call pipeline")
    family = family_of(model_dir)
    for spec in family.components:
        if program.components.get(spec.name) != checkpoint_sha256(model_dir, spec.subfolder):
            raise EdgegenError(
                f"{artifact.folder} was exported from {artifact.manifest.source.pipeline_dir}, not from the weights in {model_dir} ({spec.name} differs)"
            )
