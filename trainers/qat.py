"""Quantization-aware training: ``qat=true`` on distill and adversarial (the denoiser, while it
distils), and the ``qat`` recipe, which fine-tunes any one component of a student as its int8
fake-quant graph.

Distill and adversarial export the student's denoiser and prepare it with PT2E int8 fake-quant
(``edgegen.exporting.quantize``), at the training batch size, and train it as that graph.
torchao's ``move_exported_model_to_train`` is not called: it rewrites dropout and batch-norm
patterns, and a diffusers UNet has neither in a form that needs it (it broke dropout in a spike
here). The saved student carries the trained float weights in its denoiser's subfolder as usual
and the whole fake-quant state beside them (``<subfolder>/qat.safetensors``), declared in its
manifest's ``qat`` list.

The ``qat`` recipe teaches one component (text encoder, denoiser or decoder) to answer as its
float self does while it computes in int8: the loss is the fake-quant graph's error against the
float outputs on input sets drawn from the pipeline as an int8 export calibrates (other prompts,
seeds and timesteps; for a decoder, the latents the student samples). ``scheme`` picks whose
int8 it learns: XNNPACK's (ExecuTorch and ONNX Runtime lower it) or LiteRT's, whose graph keeps
one scale across each concatenation's and pad's inputs as LiteRT's converter requires. The rest
of the student folder is kept byte for byte, other components' QAT states included.

    edgegen train qat student=path/to/student component=vae_decoder scheme=litert output=out/qat
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgegen.trainers.config import TrainConfig
from edgegen.trainers.loop import Context, Recipe, Trainee, make_optimizer, optimise, warmup_cosine


def _denoiser_component(student: Any, student_dir: Path, batch_size: int) -> Any:
    from edgegen.families import components_with_role, family_of

    family = family_of(student_dir)
    return family.build_component(student, components_with_role(family, "denoiser")[0].name, batch_size=batch_size)


def prepare_qat_denoiser(student: Any, student_dir: Path, batch_size: int) -> Any:
    from edgegen.exporting.quantize import prepare_fake_quant

    component = _denoiser_component(student, student_dir, batch_size)
    return prepare_fake_quant(component.module, component.example_args())


def save_qat_student(student: Any, prepared: Any, parent_dir: Path, folder: Path, summary: dict[str, Any], details: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from edgegen.exporting.quantize import QAT_STATE_FILENAME
    from edgegen.families import networks_of
    from edgegen.trainers.outputs import save_trained_pipeline

    component = _denoiser_component(student, parent_dir, 1)
    # The graph's parameters are the denoiser's, under its component wrapper's attribute name.
    prefix = next(name for name, _ in component.module.named_children()) + "."
    state = {key: value.detach().clone() for key, value in prepared.state_dict().items()}
    weights = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    nets = networks_of(parent_dir, student)
    nets.denoiser.load_state_dict(weights, strict=False)
    state_file = f"{nets.subfolders['denoiser']}/{QAT_STATE_FILENAME}"
    qat = {"component": component.name, "scheme": "int8", "quantizer": "XNNPACKQuantizer symmetric, per-channel weights, QAT", "state": state_file}
    save_trained_pipeline(student, parent_dir, folder, summary, {**details, "qat": qat})
    save_file(state, str(folder / state_file))


class QatConfig(TrainConfig):
    student: Path  # a student folder (its manifest records the learned scales)
    component: str  # text_encoder, denoiser, vae_decoder, ... or pipeline: the one-call program
    scheme: Literal["xnnpack", "litert"] = "xnnpack"
    learning_rate: float = Field(1e-5, gt=0)
    batch_size: int = Field(2, gt=0)  # input sets per step (a program takes one per call)
    input_sets: int = Field(32, gt=1)  # a component's, drawn from the pipeline once, before step 1
    steps_in_program: int | None = Field(None, gt=0)  # component=pipeline: its denoiser steps (default: all the student's)
    guidance_scale: float = Field(1.0, ge=1.0)  # component=pipeline: classifier-free guidance inside it


def _input_sets(pipeline: Any, folder: Path, family: Any, component: Any, config: QatConfig) -> list[dict[str, Any]]:
    from edgegen.families import components_with_role
    from edgegen.families.prompts import CALIBRATION_PROMPTS

    sets = family.calibration_inputs(pipeline, component.name, config.batch_size, count=config.input_sets)
    if component.name in {spec.name for spec in components_with_role(family, "decoder")}:
        # Gaussian latents are not what a decoder meets (see sampled_decoder_inputs).
        from edgegen.sampling.loop import sampled_decoder_inputs

        prompts = [CALIBRATION_PROMPTS[index % len(CALIBRATION_PROMPTS)] for index in range(config.input_sets)]
        sets = sets[: config.input_sets // 2] + sampled_decoder_inputs(folder, pipeline, prompts[: config.input_sets - config.input_sets // 2], config.batch_size)
    return sets


def _component_draws(pipeline: Any, folder: Path, family: Any, component: Any, config: QatConfig) -> Any:
    """``draw(batch, index, ctx) -> [(inputs, target)]`` over input sets drawn once, with the
    float component's answers taken before any weight moves (the graph trains the pipeline's
    own tensors)."""
    import torch

    sets = _input_sets(pipeline, folder, family, component, config)
    targets = [component.run_eager(inputs) for inputs in sets]

    def draw(batch: dict[str, Any], index: int, ctx: Context) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        choice = int(torch.randint(len(sets), (1,), generator=ctx.generator(index)))
        return [(sets[choice], targets[choice])]

    return draw, targets


def _program_draws(pipeline: Any, folder: Path, family: Any, program: Any, config: QatConfig) -> Any:
    """``draw`` for a one-call program: the data set's captions and fresh noise, one call each,
    answered by a frozen float copy of the program (its few steps make every draw cheap)."""
    import copy

    import torch

    from edgegen.exporting.one_call import calibration_inputs
    from edgegen.families.base import tokenize

    reference = copy.deepcopy(program.module).eval().requires_grad_(False)
    encoder = family.encoders[0]
    tokenizer = getattr(pipeline, encoder.tokenizer_subfolder)
    shape = tuple(program.reference_inputs["latents"].shape)

    def answer(inputs: dict[str, Any]) -> dict[str, Any]:
        with torch.no_grad():
            return {program.outputs[0].name: reference(*(inputs[spec.name] for spec in program.inputs))}

    def draw(batch: dict[str, Any], index: int, ctx: Context) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        generator = ctx.generator(index, stream=1)
        draws = []
        for caption in batch["caption"][: config.batch_size]:
            inputs = {"input_ids": tokenize(tokenizer, [caption], encoder.max_length).input_ids, "latents": torch.randn(shape, generator=generator)}
            draws.append((inputs, answer(inputs)))
        return draws

    return draw, [answer(inputs) for inputs in calibration_inputs(pipeline, folder, program, 4)]


def prepare(config: QatConfig, context: Context) -> Trainee:
    from edgegen.errors import EdgegenError
    from edgegen.exporting import one_call
    from edgegen.exporting.quantize import QAT_STATE_FILENAME, calibrate_then_freeze_activations, fake_quant_graph, positional_call
    from edgegen.families import components_with_role, family_of
    from edgegen.families.loading import load_pipeline
    from edgegen.families.prompts import CALIBRATION_PROMPTS
    from edgegen.models.checkpoint import read_student_manifest
    from edgegen.schema.checkpoint import QAT_SCHEMES

    folder = Path(config.student)
    manifest = read_student_manifest(folder)
    if manifest is None:
        raise EdgegenError(f"{folder} is not a student (no edgegen_student.json): its manifest records the learned scales; make one with `edgegen student init`")
    family = family_of(folder)
    specs = {spec.name: spec for spec in family.components}
    is_program = config.component == one_call.PIPELINE_COMPONENT
    if not is_program and config.component not in specs:
        raise EdgegenError(f"{folder} ({family.name}) has no component '{config.component}'; it has {', '.join([*specs, one_call.PIPELINE_COMPONENT])}")
    if not is_program and (config.steps_in_program is not None or config.guidance_scale != 1.0):
        raise EdgegenError(f"steps_in_program and guidance_scale describe a one-call program (component={one_call.PIPELINE_COMPONENT}), not {config.component}")
    scheme = QAT_SCHEMES[config.scheme]
    pipeline = load_pipeline(folder)
    if is_program:
        component = one_call.build_program(pipeline, folder, config.steps_in_program, config.guidance_scale)
        draw, samples = _program_draws(pipeline, folder, family, component, config)
        # The program trains its encoder, denoiser and decoder together.
        trained = [components_with_role(family, role)[0] for role in ("encoder", "denoiser", "decoder")]
    else:
        component = family.build_component(pipeline, config.component, batch_size=config.batch_size)
        draw, samples = _component_draws(pipeline, folder, family, component, config)
        trained = [specs[config.component]]
    # Each output's error relative to its mean power, so that outputs of any scale weigh alike
    # and a near-zero answer (a mid-grey image) does not dominate.
    power = {spec.name: float(sum(sample[spec.name].pow(2).mean() for sample in samples) / len(samples)) or 1.0 for spec in component.outputs}
    graph = fake_quant_graph(component, scheme)
    model = positional_call(graph, component, scheme)
    # The export's own calibration sets (the same prompts, seeds and timesteps): training starts
    # from the ranges post-training int8 would choose.
    calibration = one_call.calibration_inputs(pipeline, folder, component, len(CALIBRATION_PROMPTS)) if is_program else family.calibration_inputs(pipeline, component.name, config.batch_size)
    frozen = calibrate_then_freeze_activations(graph, model, [[inputs[spec.name] for spec in component.inputs] for inputs in calibration])
    parameters = [parameter for parameter in graph.parameters() if parameter.is_floating_point()]
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = make_optimizer(parameters, config)
    schedule = warmup_cosine(optimizer, config)

    def step(batch: dict[str, Any], index: int, ctx: Context) -> dict[str, float]:
        import torch

        draws = draw(batch, index, ctx)
        loss = 0.0
        for inputs, target in draws:
            result = model(*(inputs[spec.name] for spec in component.inputs))
            results = result if isinstance(result, tuple) else (result,)
            loss = loss + sum(
                torch.nn.functional.mse_loss(produced, target[spec.name]) / power[spec.name]
                for spec, produced in zip(component.outputs, results, strict=True)
            )
        loss = loss / len(draws)
        optimise(optimizer, loss, [graph], ctx)
        return {"loss": loss.item()}

    program = component.program
    state = {
        "scheme": scheme,
        "component": component.name,
        "state_file": f"qat-{component.name}.safetensors" if is_program else f"{trained[0].subfolder}/{QAT_STATE_FILENAME}",
        "timesteps": list(program.timesteps) if is_program else None,
        "guidance_scale": program.guidance_scale if is_program else None,
    }

    def save(output: Path, summary: dict[str, Any]) -> None:
        _save(config, pipeline, manifest, trained, graph, state, output, summary)

    return Trainee(
        modules={"fake_quant": graph},
        optimizers={"fake_quant": optimizer},
        schedulers={"fake_quant": schedule},
        step=step,
        save=save,
        summary={"component": config.component, "scheme": scheme, "activation_ranges_frozen": frozen},
    )


def _save(config: QatConfig, pipeline: Any, manifest: Any, trained: list[Any], graph: Any, state: dict[str, Any], output: Path, summary: dict[str, Any]) -> None:
    import shutil
    import tempfile

    from safetensors.torch import save_file

    from edgegen.models.checkpoint import forget_learned_scales, read_student_manifest, write_student
    from edgegen.schema.base import write_json
    from edgegen.schema.checkpoint import STUDENT_MANIFEST_FILENAME, QatState
    from edgegen.schema.training import TRAINING_MANIFEST_FILENAME
    from edgegen.trainers.outputs import write_training_manifest

    for module in pipeline.components.values():
        if hasattr(module, "eval"):
            module.eval()
    source = Path(config.student)
    shutil.copytree(source, output, dirs_exist_ok=True, ignore=shutil.ignore_patterns(TRAINING_MANIFEST_FILENAME))
    rewritten = [spec.subfolder for spec in trained]
    with tempfile.TemporaryDirectory(dir=output) as scratch:
        if any(spec.role == "denoiser" for spec in trained):
            write_student(pipeline, manifest, Path(scratch))  # the denoiser's SCMAN state is written beside it
        else:
            for subfolder in rewritten:
                getattr(pipeline, subfolder).save_pretrained(Path(scratch) / subfolder, safe_serialization=True)
        for subfolder in rewritten:
            shutil.rmtree(output / subfolder)
            shutil.move(str(Path(scratch) / subfolder), output / subfolder)
    # States of weights this run moved go (the trained subfolders' and the one-call program's),
    # before this run's state file is written: it may have the same path as one of them.
    for subfolder in rewritten:
        forget_learned_scales(output, subfolder)
    save_file({key: value.detach().clone().contiguous() for key, value in graph.state_dict().items()}, str(output / state["state_file"]))
    kept = read_student_manifest(output)
    write_json(output / STUDENT_MANIFEST_FILENAME, kept.model_copy(update={"qat": [*kept.qat, QatState(**state)]}))
    details = {"qat": {key: value for key, value in state.items() if value is not None}}
    write_training_manifest(output, source, summary, details, ("torch", "diffusers", "transformers", "torchao", "litert-torch"))


RECIPE = Recipe("qat", QatConfig, prepare, "Quantization-aware training of one component (XNNPACK's or LiteRT's int8)")
