"""The sampling loop, written once against runtime-neutral component runners.

A case is a pipeline folder (its tokenizers and scheduler config, and the eager weights) plus,
optionally, exported artifacts of one target for its components. The same loop runs the eager
teacher, the eager float student and a student on any runtime: prompt conditioning -> N
denoising steps (classifier-free guidance as two batch-1 denoiser calls per step, or the scale as
a denoiser input for families with embedded guidance) -> decoder.
The model family says how a prompt becomes conditioning, what the denoiser and decoder take and
the latent shape; the scheduler is diffusers' own, on CPU tensors; the initial latents are
injected by the caller so that every case starts from the same noise.

Few-step students (``edgegen train adversarial``) carry their schedule in
``edgegen_student.json`` (``sampling``): x0 is predicted at each of its timesteps and moved to
the next by DDIM with eta 0, so the output is a function of the initial latents alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import EdgegenError
from edgegen.families import Family, components_with_role, family_of

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class SamplingPlan:
    steps: int
    guidance_scale: float
    few_step_timesteps: tuple[int, ...] | None = None  # a few-step student's own schedule
    # How the family takes guidance (its guidance_modes[0]): "classifier-free" runs the denoiser
    # twice per step; "embedded" hands the scale to the denoiser as an input (LCM, Flux-dev).
    guidance_mode: str = "classifier-free"

    @property
    def classifier_free(self) -> bool:
        return self.guidance_mode == "classifier-free" and self.guidance_scale > 1.0

    @property
    def calls_per_step(self) -> int:
        return 2 if self.classifier_free else 1


@dataclass
class Generation:
    image: np.ndarray  # 3xHxW float32 in [-1, 1]
    step_latents: list[np.ndarray]
    call_ms: dict[str, list[float]]
    total_ms: float


@dataclass
class EdgePipeline:
    family: Family
    runners: dict[str, Runner]
    tokenizers: dict[str, Any]
    scheduler: Any
    plan: SamplingPlan
    latent_shape: tuple[int, ...]
    description: str
    call_ms: dict[str, list[float]] = field(default_factory=dict)

    def _timed(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        outputs = self.runners[name](inputs)
        self.call_ms.setdefault(name, []).append((time.perf_counter() - start) * 1000.0)
        return outputs

    def _denoise(self, latents: np.ndarray, timestep: float, conditional: dict[str, np.ndarray], unconditional: dict[str, np.ndarray] | None) -> np.ndarray:
        family, denoiser = self.family, self._denoiser
        prediction = self._timed(denoiser, family.denoiser_inputs(latents, timestep, conditional))[family.denoiser_output]
        if unconditional is None:
            return prediction
        plain = self._timed(denoiser, family.denoiser_inputs(latents, timestep, unconditional))[family.denoiser_output]
        return plain + self.plan.guidance_scale * (prediction - plain)

    @property
    def _denoiser(self) -> str:
        return components_with_role(self.family, "denoiser")[0].name

    def generate(self, prompt: str, latents: np.ndarray, seed: int) -> Generation:
        import torch

        self.call_ms = {}
        start = time.perf_counter()
        conditional = self.family.encode_prompt(self.tokenizers, self._timed, prompt)
        unconditional = self.family.encode_prompt(self.tokenizers, self._timed, "") if self.plan.classifier_free else None
        if self.plan.guidance_mode == "embedded":
            conditional = {**conditional, "guidance_scale": np.full((latents.shape[0],), self.plan.guidance_scale, dtype=np.float32)}
        x = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32))
        step_latents = []
        if self.plan.few_step_timesteps:
            from edgegen.sampling.schedules import few_step_update, predicted_clean

            steps = list(self.plan.few_step_timesteps)
            for index, t in enumerate(steps):
                prediction = torch.from_numpy(self._denoise(x.numpy(), float(t), conditional, unconditional))
                clean = predicted_clean(self.scheduler, x, prediction, torch.tensor([t]))
                x = few_step_update(self.scheduler, x, clean, t, steps[index + 1]) if index + 1 < len(steps) else clean
                step_latents.append(x.numpy().copy())
        else:
            # Schedulers that add noise while stepping (Euler ancestral, LCM) draw it from this
            # seeded generator, so a case is reproducible and every case draws the same noise.
            generator = torch.Generator().manual_seed(seed)
            self.family.prepare_timesteps(self.scheduler, self.plan.steps, self.latent_shape)
            # Flow-matching schedulers neither scale the initial noise nor the model input.
            x = x * getattr(self.scheduler, "init_noise_sigma", 1.0)
            scale_input = getattr(self.scheduler, "scale_model_input", None)
            for t in self.scheduler.timesteps:
                model_input = scale_input(x, t) if scale_input else x
                prediction = torch.from_numpy(self._denoise(model_input.numpy(), float(t), conditional, unconditional))
                x = _step(self.scheduler, prediction, t, x, generator)
                step_latents.append(x.numpy().copy())
        decoder = components_with_role(self.family, "decoder")[0].name
        image = self._timed(decoder, self.family.decoder_inputs(x.numpy()))[self.family.decoder_output]
        total = (time.perf_counter() - start) * 1000.0
        return Generation(image=np.clip(image[0], -1, 1), step_latents=step_latents, call_ms=self.call_ms, total_ms=total)


@dataclass
class OneCallPipeline:
    """A one-call pipeline artifact (``edgegen export --component pipeline``) as a case: the host
    tokenizes, the program does the rest in one call. It exposes no intermediate latents."""

    family: Family
    runner: Runner
    tokenizer: Any
    max_length: int
    plan: SamplingPlan
    latent_shape: tuple[int, ...]
    description: str
    call_ms: dict[str, list[float]] = field(default_factory=dict)

    def generate(self, prompt: str, latents: np.ndarray, seed: int) -> Generation:
        from edgegen.exporting.one_call import PIPELINE_COMPONENT
        from edgegen.families.base import tokenize

        start = time.perf_counter()
        ids = tokenize(self.tokenizer, [prompt], self.max_length, tensors="np").input_ids.astype(np.int64)
        called = time.perf_counter()
        image = self.runner({"input_ids": ids, "latents": np.ascontiguousarray(latents, dtype=np.float32)})["image"]
        end = time.perf_counter()
        self.call_ms = {PIPELINE_COMPONENT: [(end - called) * 1000.0]}
        return Generation(image=np.clip(image[0], -1, 1), step_latents=[], call_ms=self.call_ms, total_ms=(end - start) * 1000.0)


def _step(scheduler: Any, prediction: Any, t: Any, x: Any, generator: Any) -> Any:
    import inspect

    if "generator" in inspect.signature(scheduler.step).parameters:
        return scheduler.step(prediction, t, x, generator=generator).prev_sample
    return scheduler.step(prediction, t, x).prev_sample


# ---------------------------------------------------------------------------------------------
# loading


def load_tokenizers_and_scheduler(model_dir: Path, family: Family | None = None) -> tuple[dict[str, Any], Any]:
    """The family's tokenizers (by subfolder) and the folder's scheduler, without loading any network."""
    import diffusers
    import transformers

    from edgegen.families import read_model_index
    from edgegen.families.loading import quiet_toolchains

    quiet_toolchains()
    family = family or family_of(model_dir)
    index = read_model_index(model_dir)
    tokenizers = {}
    try:
        for encoder in family.encoders:
            sub = encoder.tokenizer_subfolder
            tokenizer_class = getattr(transformers, index[sub][1])
            tokenizers[sub] = tokenizer_class.from_pretrained(str(Path(model_dir) / sub), local_files_only=True)
        scheduler_class = getattr(diffusers, index["scheduler"][1])
        scheduler = scheduler_class.from_pretrained(str(Path(model_dir) / "scheduler"), local_files_only=True)
    except (KeyError, TypeError, AttributeError, OSError, ValueError) as error:
        raise EdgegenError(f"cannot read the tokenizer and scheduler of {model_dir}: {str(error).splitlines()[0]}") from None
    return tokenizers, scheduler


def sampling_plan(
    model_dir: Path, steps: int, guidance_scale: float, use_student_schedule: bool = True, few_steps: int | None = None
) -> SamplingPlan:
    """The folder's own few-step schedule if it has one (and it is wanted), else ``steps`` of its scheduler.

    ``few_steps`` runs a few-step student on the first timesteps of its schedule only: each step
    predicts the clean latents, so the last one taken is the image (a 2-step student run in 1
    step decodes its prediction from pure noise).
    """
    from edgegen.models.checkpoint import read_student_manifest

    if steps < 1 or (few_steps is not None and few_steps < 1):
        raise EdgegenError("--steps must be at least 1")
    manifest = read_student_manifest(model_dir)
    sampling = (manifest.sampling if manifest else None) if use_student_schedule else None
    mode = guidance_mode(family_of(model_dir), guidance_scale)
    if sampling:
        timesteps = tuple(int(t) for t in sampling.timesteps)
        if few_steps is not None and few_steps > len(timesteps):
            raise EdgegenError(f"{model_dir} is a {len(timesteps)}-step student (timesteps {list(timesteps)}); it runs in at most {len(timesteps)} steps")
        timesteps = timesteps[:few_steps]
        return SamplingPlan(len(timesteps), guidance_scale, timesteps, mode)
    return SamplingPlan(steps, guidance_scale, guidance_mode=mode)


def guidance_mode(family: Family, guidance_scale: float) -> str:
    """How ``family`` takes ``guidance_scale``, or one line if it takes none."""
    if family.guidance_modes:
        return family.guidance_modes[0]
    if guidance_scale > 1.0:
        raise EdgegenError(f"{family.name} pipelines take no guidance; use --guidance-scale 1")
    return "none"


def pipeline_family(model_dir: Path) -> str:
    """What must agree for two pipelines' images to be comparable: family, tokenizers, latent space."""
    family = family_of(model_dir)
    return f"{family.name}:{family.fingerprint(model_dir)}"


def eager_runners(model_dir: Path, pipeline: Any = None) -> tuple[dict[str, Runner], Any]:
    """Each component of ``model_dir``'s family run eagerly, on ``pipeline`` if it is loaded already."""
    import torch

    from edgegen.families.loading import load_pipeline

    family = family_of(model_dir)
    pipeline = pipeline if pipeline is not None else load_pipeline(model_dir)
    runners = {}
    for spec in family.components:
        component = family.build_component(pipeline, spec.name)

        def run(inputs: dict[str, np.ndarray], component=component) -> dict[str, np.ndarray]:
            tensors = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in inputs.items()}
            return {key: value.numpy() for key, value in component.run_eager(tensors).items()}

        runners[spec.name] = run
    return runners, pipeline


def check_artifacts(model_dir: Path, artifact_dirs: dict[str, Path]) -> dict[str, Any]:
    """Load the artifacts and refuse a set that did not come from ``model_dir``'s weights."""
    from edgegen.artifact import load_artifact
    from edgegen.exporting.one_call import PIPELINE_COMPONENT, check_program
    from edgegen.families.loading import checkpoint_sha256

    family = family_of(model_dir)
    if PIPELINE_COMPONENT in artifact_dirs:
        if len(artifact_dirs) > 1:
            raise EdgegenError("a one-call pipeline artifact holds every component; it runs on its own")
        artifact = load_artifact(Path(artifact_dirs[PIPELINE_COMPONENT]))
        check_program(model_dir, artifact)
        return {PIPELINE_COMPONENT: artifact}
    names = [spec.name for spec in family.components]
    missing = [name for name in names if name not in artifact_dirs]
    if missing:
        raise EdgegenError(f"a {family.name} pipeline needs {', '.join(names)} artifacts; missing: {', '.join(missing)}")
    artifacts = {name: load_artifact(Path(folder)) for name, folder in artifact_dirs.items()}
    targets = {(a.manifest.target, a.manifest.backend) for a in artifacts.values()}
    if len(targets) > 1:
        raise EdgegenError(f"artifacts of one pipeline must share a target; got {sorted(map(str, targets))}")
    adapters = {tuple((a.file, a.sha256, a.scale) for a in art.manifest.source.adapters) for art in artifacts.values()}
    if len(adapters) > 1:
        raise EdgegenError("artifacts of one pipeline must be exported with the same --lora adapters; these differ")
    for spec in family.components:
        artifact = artifacts[spec.name]
        if artifact.manifest.component != spec.name:
            raise EdgegenError(f"{artifact.folder} is a {artifact.manifest.component} artifact, not {spec.name}")
        expected = checkpoint_sha256(model_dir, spec.subfolder)
        if artifact.manifest.source.checkpoint_sha256 != expected:
            raise EdgegenError(
                f"artifacts of different pipelines mixed: {artifact.folder} was exported from "
                f"{artifact.manifest.source.pipeline_dir}, not from the weights in {model_dir}"
            )
    return artifacts


def artifact_runners(artifacts: dict[str, Any], threads: int = 1) -> dict[str, Runner]:
    from edgegen.session import open_artifact

    return {name: open_artifact(artifact, threads).run for name, artifact in artifacts.items()}


def load_case(
    model_dir: Path, artifact_dirs: dict[str, Path] | None, plan: SamplingPlan, threads: int = 1, pipeline: Any = None
) -> EdgePipeline | OneCallPipeline:
    """``model_dir``'s sampling loop on its artifacts (one call where the artifact is a one-call program), or eagerly (on ``pipeline`` if it is loaded already)."""
    from edgegen.exporting.one_call import PIPELINE_COMPONENT

    model_dir = Path(model_dir)
    family = family_of(model_dir)
    plan = replace(plan, guidance_mode=guidance_mode(family, plan.guidance_scale))
    tokenizers, scheduler = load_tokenizers_and_scheduler(model_dir, family)
    if artifact_dirs and PIPELINE_COMPONENT in artifact_dirs:
        artifact = check_artifacts(model_dir, artifact_dirs)[PIPELINE_COMPONENT]
        check_program_plan(artifact, plan)
        manifest, program = artifact.manifest, artifact.manifest.program
        runner = artifact_runners({PIPELINE_COMPONENT: artifact}, threads)[PIPELINE_COMPONENT]
        tokenizer = tokenizers[family.encoders[0].tokenizer_subfolder]
        description = f"{manifest.target}{'/' + manifest.backend if manifest.backend else ''} {manifest.quantization.scheme} one call"
        return OneCallPipeline(family, runner, tokenizer, program.max_length, plan, family.latent_shape(model_dir), description)
    if artifact_dirs:
        artifacts = check_artifacts(model_dir, artifact_dirs)
        runners = artifact_runners(artifacts, threads)
        first = next(iter(artifacts.values())).manifest
        description = f"{first.target}{'/' + first.backend if first.backend else ''} {first.quantization.scheme}"
    else:
        runners, _ = eager_runners(model_dir, pipeline)
        description = "eager float32"
    return EdgePipeline(family, runners, tokenizers, scheduler, plan, family.latent_shape(model_dir), description)


def load_case_with_artifact(model_dir: Path, pipeline: Any, plan: SamplingPlan, artifact_folder: Path) -> EdgePipeline | OneCallPipeline:
    """``model_dir``'s loop with one artifact in place of its component, the others eager on
    ``pipeline`` (a one-call program runs alone): what one component's export costs the pipeline."""
    from edgegen.artifact import load_artifact
    from edgegen.exporting.one_call import PIPELINE_COMPONENT
    from edgegen.families.loading import checkpoint_sha256

    model_dir = Path(model_dir)
    artifact = load_artifact(Path(artifact_folder))
    name = artifact.manifest.component
    if name == PIPELINE_COMPONENT:
        return load_case(model_dir, {name: Path(artifact_folder)}, plan)
    family = family_of(model_dir)
    spec = next((spec for spec in family.components if spec.name == name), None)
    if spec is None or artifact.manifest.source.checkpoint_sha256 != checkpoint_sha256(model_dir, spec.subfolder):
        raise EdgegenError(f"{artifact_folder} was not exported from the {name} in {model_dir}")
    plan = replace(plan, guidance_mode=guidance_mode(family, plan.guidance_scale))
    tokenizers, scheduler = load_tokenizers_and_scheduler(model_dir, family)
    runners, _ = eager_runners(model_dir, pipeline)
    runners[name] = artifact_runners({name: artifact})[name]
    description = f"{artifact.manifest.target} {artifact.manifest.quantization.scheme} {name}, the rest eager float32"
    return EdgePipeline(family, runners, tokenizers, scheduler, plan, family.latent_shape(model_dir), description)


def check_program_plan(artifact: Any, plan: SamplingPlan) -> None:
    """Refuse to run a one-call program as a case it does not compute (other steps or guidance)."""
    program = artifact.manifest.program
    wanted = list(plan.few_step_timesteps or ())
    guidance = plan.guidance_scale if plan.classifier_free else 1.0
    if program.timesteps != wanted:
        asked = f"timesteps {wanted}" if wanted else f"{plan.steps} steps of its scheduler"
        raise EdgegenError(f"{artifact.folder} runs timesteps {program.timesteps} in one call; this case asks for {asked}")
    if program.guidance_scale != guidance:
        raise EdgegenError(f"{artifact.folder} was exported with guidance scale {program.guidance_scale}; this case asks for {guidance}")


def initial_latents(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The injected starting noise for one seed, identical for every case."""
    import torch

    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).numpy()


# The decoder's int8 calibration: latents the pipeline itself samples, a few steps per prompt.
DECODER_CALIBRATION_STEPS = 8
DECODER_CALIBRATION_GUIDANCE = 4.0


def sampled_decoder_inputs(model_dir: Path, pipeline: Any, prompts: Sequence[str], batch_size: int = 1) -> list[dict[str, Any]]:
    """The decoder's inputs for the latents that the eager ``pipeline`` samples for ``prompts``.

    A decoder calibrated on Gaussian latents (its reference inputs) meets other activation ranges
    in the latents a sampler ends on: on the embedded default, int8 decoding of sampled latents
    was 17.7 dB against float (10 dB on some prompts, yellow turned green) and 40.4 dB calibrated
    on sampled latents instead. Few-step students sample on their own schedule.
    """
    import torch

    family = family_of(model_dir)
    guidance = DECODER_CALIBRATION_GUIDANCE if family.guidance_modes else 1.0
    sampler = load_case(model_dir, None, sampling_plan(model_dir, DECODER_CALIBRATION_STEPS, guidance), pipeline=pipeline)
    sets = []
    for index, prompt in enumerate(prompts):
        seed = 2000 + index
        final = sampler.generate(prompt, initial_latents(sampler.latent_shape, seed), seed).step_latents[-1]
        batch = np.repeat(final[:1], batch_size, axis=0)
        sets.append({name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in family.decoder_inputs(batch).items()})
    return sets
