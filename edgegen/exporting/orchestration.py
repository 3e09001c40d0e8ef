"""Export one pipeline component to one target, prove parity, and write the artifact folder.

The target-specific work (conversion, quantization, reading back the I/O specs the converter
produced, the delegation report) lives in ``edgegen/exporters/<target>.py``; this module owns
what every target shares: reference inputs, the atomic artifact folder, the parity gate and the
manifest.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from edgegen.artifact import Artifact, atomic_folder, describe_files, load_artifact, staged_folder, write_failure, write_manifest
from edgegen.exporting.capacity import check_fits
from edgegen.exporting import one_call
from edgegen.exporting.one_call import PIPELINE_COMPONENT
from edgegen.families import Component, component_spec, components_with_role, family_of
from edgegen.families.base import weights_dtype
from edgegen.errors import EdgegenError, first_line
# What an exporter is and returns (and the parity thresholds) live in edgegen.exporting.base.
from edgegen.exporting.base import (  # noqa: F401 (re-exported for callers)
    MIN_PSNR_DB_FLOAT16,
    MIN_PSNR_DB_FLOAT32,
    MIN_PSNR_DB_INT8,
    ExportedModel,
    Exporter,
    ExportOptions,
)
from edgegen.measure.metrics import worst_fidelity
from edgegen.registry import EXPORTERS
from edgegen.schema.manifest import (
    REFERENCE_FILENAME,
    Adapter,
    ArtifactManifest,
    FakeQuantParity,
    Parity,
    Quantization,
    Source,
)
from edgegen.families.adapters import adapter_records
from edgegen.families.loading import check_dtype, check_load_options, checkpoint_sha256, load_pipeline
from edgegen.versions import edgegen_version, versions_of


def artifact_name(component: str, target: str, options: ExportOptions) -> str:
    parts = [component, target]
    if options.backend:
        parts.append(options.backend)
    if options.quantize != "none":
        parts.append(options.quantize)
    if options.load.dtype != "float32":
        parts.append(options.load.dtype)
    if component == PIPELINE_COMPONENT:
        parts.append(f"{options.pipeline_steps}-steps")
    return "-".join(parts)


def check_program_options(pipeline_dir: Path, names: list[str], options: ExportOptions) -> ExportOptions:
    """A one-call pipeline is exported on its own, from a few-step student; its step count resolved."""
    if PIPELINE_COMPONENT not in names:
        if options.pipeline_steps is not None or options.guidance_scale != 1.0:
            raise EdgegenError("--steps and --guidance-scale apply to --component pipeline (the one-call program) only")
        return options
    if names != [PIPELINE_COMPONENT]:
        raise EdgegenError("--component pipeline is one program holding every component; export it on its own")
    if options.batch_size != 1:
        raise EdgegenError("a one-call pipeline generates one image per call; drop --batch-size")
    from edgegen.sampling.loop import guidance_mode

    family = family_of(pipeline_dir)
    one_call.check_family(family)
    guidance_mode(family, options.guidance_scale)
    return replace(options, pipeline_steps=len(one_call.few_step_schedule(pipeline_dir, options.pipeline_steps)))


def _known_component(family: Any, name: str) -> None:
    """An unknown name lists the choices, the one-call program among them."""
    try:
        component_spec(family, name)
    except EdgegenError as error:
        raise EdgegenError(f"{error}, or {PIPELINE_COMPONENT} (a few-step student's whole pipeline as one program)") from None


def _subfolders(family: Any, names: list[str]) -> dict[str, str]:
    """The pipeline subfolders the named components load (a one-call program loads them all)."""
    if names == [PIPELINE_COMPONENT]:
        return {spec.name: spec.subfolder for spec in family.components}
    return {name: component_spec(family, name).subfolder for name in names}


def check_options(exporter: Exporter, options: ExportOptions) -> ExportOptions:
    check_dtype(options.load.dtype)
    if options.load.dtype != "float32" and options.quantize != "none":
        raise EdgegenError(
            f"--quantize {options.quantize} starts from float32 weights; drop --dtype {options.load.dtype} "
            "(a float16 export is a precision of its own)"
        )
    if options.separate_weights and not exporter.separate_weights:
        able = ", ".join(name for name in EXPORTERS.names() if EXPORTERS.get(name).separate_weights)
        raise EdgegenError(f"target '{exporter.name}' keeps the weights inside its model; --separate-weights applies to {able}")
    if options.quantize == "auto":
        if not getattr(exporter, "mixed_precision", False):
            able = ", ".join(name for name in EXPORTERS.names() if getattr(EXPORTERS.get(name), "mixed_precision", False))
            raise EdgegenError(f"--quantize auto (mixed int8/float by layer sensitivity) is available for {able}, not '{exporter.name}' yet")
        if options.min_psnr_db is None:
            raise EdgegenError("--quantize auto needs --min-psnr DB: the parity the mix must meet")
    elif options.quantize not in exporter.quantizations:
        raise EdgegenError(
            f"target '{exporter.name}' does not support --quantize {options.quantize}; "
            f"it supports: {', '.join(exporter.quantizations)}"
        )
    if options.faithfulness is not None:
        if options.quantize != "auto":
            raise EdgegenError("--min-faithfulness is a budget for --quantize auto's mix; add --quantize auto --min-psnr DB")
        from edgegen.measure.faithfulness_budget import check_budget

        check_budget(options.faithfulness)
    backend = options.backend
    if exporter.backends:
        backend = backend or exporter.backends[0]
        if backend not in exporter.backends:
            raise EdgegenError(
                f"target '{exporter.name}' has no backend '{backend}'; choose one of: {', '.join(exporter.backends)}"
            )
    elif backend:
        raise EdgegenError(f"target '{exporter.name}' takes no --backend")
    if options.batch_size < 1:
        raise EdgegenError("--batch-size must be at least 1")
    return replace(options, backend=backend)


def get_exporter(target: str) -> Exporter:
    exporter = EXPORTERS.get(target)
    reason = exporter.unavailable_reason()
    if reason:
        raise EdgegenError(f"target '{target}' is not usable here: {reason}")
    return exporter


def _to_numpy(tensors: dict[str, Any]) -> dict[str, Any]:
    return {name: tensor.detach().cpu().contiguous().numpy() for name, tensor in tensors.items()}


def _measure_parity(
    folder: Path, manifest: ArtifactManifest, expected: dict[str, Any], fake_quant_expected: dict[str, Any] | None = None
) -> Parity:
    from edgegen.session import open_artifact, runtime_for

    runtime = runtime_for(manifest)  # the runtime open_artifact will use
    reason = runtime.unavailable_reason(manifest)
    if reason:
        return Parity(measured=False, reason=f"not measured on this host: {reason}", min_psnr_db=manifest.parity.min_psnr_db)
    artifact = Artifact(folder=folder, manifest=manifest)
    session = open_artifact(artifact)
    inputs, _ = artifact.reference_tensors()
    produced = session.run(inputs)
    score = worst_fidelity(expected, produced)
    vs_fake_quant = None
    if fake_quant_expected is not None:
        vs_fake_quant = FakeQuantParity(**asdict(worst_fidelity(fake_quant_expected, produced)))
    return Parity(
        vs_fake_quant=vs_fake_quant,
        measured=True,
        runtime=runtime.name,
        min_psnr_db=manifest.parity.min_psnr_db,
        psnr_db=score.psnr_db,
        max_abs_error=score.max_abs_error,
        cosine=score.cosine,
    )


def check_signature(component: Component, exported: ExportedModel, target: str) -> None:
    """Fail loudly where a converted graph's inputs or outputs are not the ones declared.

    A family declares every input its denoiser needs; a wrapper that takes fewer, or a converter
    that drops an input it found unused, would otherwise give an artifact that runs and is wrong.
    """
    import inspect

    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    takes = [p.name for p in inspect.signature(component.module.forward).parameters.values() if p.kind in kinds]
    declared = [spec.name for spec in component.inputs]
    if takes != declared:
        raise EdgegenError(f"{component.name}: its module takes ({', '.join(takes)}) but the family declared ({', '.join(declared)}); nothing was written")
    for kind, produced, wanted in (("inputs", exported.inputs, component.inputs), ("outputs", exported.outputs, component.outputs)):
        got, want = sorted(spec.name for spec in produced), sorted(spec.name for spec in wanted)
        if got != want:
            raise EdgegenError(
                f"{target} export of {component.name} has {kind} ({', '.join(got)}) where ({', '.join(want)}) were declared: "
                "the converter dropped or renamed one; nothing was written"
            )


def _check_destination(destination: Path, force: bool) -> None:
    if destination.exists() and not force:
        raise EdgegenError(f"{destination} already exists; pass --force to replace it")


def _write_artifact(
    pipeline: Any, pipeline_dir: Path, component_name: str, target: str, folder: Path, options: ExportOptions
) -> None:
    """Convert ``component_name``, prove parity and write the whole artifact into ``folder``."""
    from safetensors.numpy import save_file

    from edgegen.models.checkpoint import learned_scales

    exporter = get_exporter(target)
    family = family_of(pipeline_dir)
    if component_name == PIPELINE_COMPONENT:
        component = one_call.build_program(pipeline, pipeline_dir, options.pipeline_steps, options.guidance_scale)
    else:
        component = family.build_component(pipeline, component_name, batch_size=options.batch_size)
    loaded = str(weights_dtype(component.module)).removeprefix("torch.")
    if loaded != options.load.dtype:
        # The manifest, the artifact's name and its parity gate all follow the load dtype.
        raise EdgegenError(f"{component_name} was loaded in {loaded} but the export was asked for --dtype {options.load.dtype}; load the pipeline with the same dtype")
    component.quantization_source = learned_scales(pipeline_dir, component_name)
    if options.quantize != "none" and component.program is not None:
        from edgegen.families.prompts import CALIBRATION_PROMPTS

        component.calibration = one_call.calibration_inputs(pipeline, pipeline_dir, component, len(CALIBRATION_PROMPTS))
    elif options.quantize != "none":
        component.calibration = family.calibration_inputs(pipeline, component_name, options.batch_size)
        if component_name in {spec.name for spec in components_with_role(family, "decoder")}:
            # Gaussian latents alone mis-set its activation ranges for what samplers produce.
            from edgegen.families.prompts import CALIBRATION_PROMPTS
            from edgegen.sampling.loop import sampled_decoder_inputs

            component.calibration += sampled_decoder_inputs(pipeline_dir, pipeline, CALIBRATION_PROMPTS, options.batch_size)
    expected = _to_numpy(component.run_eager())
    fake_quant_expected = None
    if options.quantize == "int8" and component.quantization_source is not None:
        from edgegen.exporting.quantize import fake_quant_module

        fake_quant = fake_quant_module(component)  # None where the scales were learned for another program
        fake_quant_expected = None if fake_quant is None else _to_numpy(component.run_eager(module=fake_quant))
    tensors = {f"input.{k}": v for k, v in _to_numpy(component.reference_inputs).items()}
    tensors.update({f"output.{k}": v for k, v in expected.items()})
    chooser = MixedPrecision(component, component_name, options.min_psnr_db, options.faithfulness) if options.quantize == "auto" else None
    exporter_options = chooser.options(options) if chooser else options
    while True:
        try:
            exported = exporter.export(component, folder, exporter_options)
        except EdgegenError:
            raise
        except Exception as error:  # converters raise anything; the user needs their reason
            if write_failure(error, folder, folder) is not None:
                raise  # a full or read-only disk: the staging folder names the file
            raise EdgegenError(f"{target} could not export {component_name}: {first_line(error)}") from None
        check_signature(component, exported, target)
        if component.program is not None:
            one_call.copy_tokenizer(pipeline_dir, folder)
        save_file(tensors, str(folder / REFERENCE_FILENAME))
        min_psnr = options.min_psnr_db if options.min_psnr_db is not None else exported.min_psnr_db
        if options.min_psnr_db is None and options.load.dtype == "float16":
            # The reference computes in float32 on the float16 weights; the artifact's float16
            # activations are what the gate measures.
            min_psnr = min(min_psnr, MIN_PSNR_DB_FLOAT16)
        quantization = chooser.recorded(exported.quantization) if chooser else exported.quantization
        manifest = _manifest(pipeline, pipeline_dir, component, component_name, target, folder, exporter, exported, quantization, options, min_psnr)
        parity = _measure_parity(folder, manifest, expected, fake_quant_expected)
        if parity.measured and not parity.psnr_db >= min_psnr:  # NaN fails too
            if chooser is not None and chooser.widen(parity.psnr_db):
                exporter_options = chooser.options(options)  # the converted program fell short of the simulation
                continue
            raise EdgegenError(
                f"{target} export of {component_name} failed parity: PSNR {parity.psnr_db:.1f} dB "
                f"< {min_psnr:.1f} dB (max abs error {parity.max_abs_error:.3g})"
                + (f" with {chooser.describe()}" if chooser else "") + "; nothing was written"
            )
        write_manifest(folder, manifest.model_copy(update={"parity": parity}))
        if chooser is not None and options.faithfulness is not None:
            from edgegen.measure.faithfulness_budget import measure

            check = measure(pipeline_dir, pipeline, folder, options.faithfulness, options.pipeline_steps if component.program else None, options.guidance_scale)
            chooser.faithfulness = check
            if not check.meets(options.faithfulness):
                if chooser.widen_for_faithfulness():
                    exporter_options = chooser.options(options)
                    continue
                raise EdgegenError(
                    f"no int8 mix of {component_name} keeps {options.faithfulness.min_share:.0%} of the float pipeline's caption "
                    f"faithfulness ({check.float_pipeline:.0%} of {check.captions}): the last reached {check.reached:.0%} "
                    f"with {chooser.describe()}; raise the share or export it float; nothing was written"
                )
            write_manifest(folder, manifest.model_copy(update={"parity": parity, "quantization": chooser.recorded(exported.quantization)}))
        return


def _source_checkpoint(pipeline_dir: Path, component: Component) -> str:
    """The component's weights' hash; a one-call program's hashes the hashes of all it holds."""
    if component.program is None:
        return checkpoint_sha256(pipeline_dir, component.source_subfolder)
    import hashlib
    import json

    return hashlib.sha256(json.dumps(component.program.components, sort_keys=True).encode()).hexdigest()


def _manifest(
    pipeline: Any, pipeline_dir: Path, component: Component, component_name: str, target: str, folder: Path,
    exporter: Exporter, exported: ExportedModel, quantization: Quantization, options: ExportOptions, min_psnr: float,
) -> ArtifactManifest:
    return ArtifactManifest(
        edgegen_version=edgegen_version(),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        target=target,
        backend=exported.backend or options.backend,
        component=component_name,
        model_file=exported.model_file,
        weight_files=exported.weight_files,
        files=describe_files(folder),
        inputs=exported.inputs,
        outputs=exported.outputs,
        eager_inputs=component.inputs,
        eager_outputs=component.outputs,
        quantization=quantization,
        source=Source(
            pipeline_dir=str(Path(pipeline_dir).resolve()),
            pipeline_class=type(pipeline).__name__,
            component_class=component.source_class,
            checkpoint_sha256=_source_checkpoint(pipeline_dir, component),
            variant=options.load.variant,
            dtype=options.load.dtype,
            adapters=[Adapter(**asdict(record)) for record in adapter_records(options.load.loras)],
        ),
        toolchain=versions_of(("torch", *exporter.packages)),
        graph_rewrites=component.graph_rewrites + exported.graph_rewrites,
        parity=Parity(measured=False, reason="pending", min_psnr_db=min_psnr),
        delegation=exported.delegation,
        coreml=exported.coreml,
        program=component.program,
    )


class MixedPrecision:
    """``--quantize auto``: the int8 mix a sensitivity analysis picks for the parity budget, widened
    (more layers float) when the converted program falls short of the simulation; at most
    ``ATTEMPTS`` exports."""

    ATTEMPTS = 4
    FAITHFULNESS_STEP_DB = 3.0  # how much higher each mix aims after the pipeline lost captions

    def __init__(self, component: Component, component_name: str, min_psnr_db: float, budget: Any = None):
        from edgegen.exporting.sensitivity import choose_float_layers, measure_sensitivity

        self.min_psnr_db, self.budget = min_psnr_db, budget
        self.faithfulness: Any = None  # the last FaithfulnessCheck against ``budget`` (a FaithfulnessBudget)
        self.report, self.simulation = measure_sensitivity(component)
        self.mix = choose_float_layers(self.report, self.simulation, min_psnr_db)
        self.attempts = 1
        if not self.mix.meets_budget:
            best = max(self.mix.simulated_psnr_db, self.report.all_int8_psnr_db)
            raise EdgegenError(
                f"no int8 mix of {component_name} meets {min_psnr_db:.1f} dB: the best simulated is {best:.1f} dB "
                f"(all {len(self.report.layers)} weighted layers int8: {self.report.all_int8_psnr_db:.1f} dB); lower --min-psnr or export it float"
            )

    def options(self, options: ExportOptions) -> ExportOptions:
        return replace(options, quantize="int8", float_layers=tuple(self.mix.float_layers))

    def widen(self, converted_psnr_db: float) -> bool:
        from edgegen.exporting.sensitivity import choose_float_layers

        kept = len(self.mix.float_layers)
        if self.attempts >= self.ATTEMPTS:
            return False
        # Aim the simulation above the budget by what the converter lost beyond it (its own
        # kernels, ops it quantizes that are no weighted layer), still cheapest first.
        shortfall = max(self.mix.simulated_psnr_db - converted_psnr_db, 0.5)
        wider = choose_float_layers(self.report, self.simulation, self.min_psnr_db + shortfall, start=kept + 1)
        if not wider.meets_budget:
            return False
        self.mix, self.attempts = wider, self.attempts + 1
        return True

    def widen_for_faithfulness(self) -> bool:
        """More layers float after the pipeline lost captions: the next mix aims ``FAITHFULNESS_STEP_DB`` higher."""
        from edgegen.exporting.sensitivity import choose_float_layers

        if self.attempts >= self.ATTEMPTS:
            return False
        aim = max(self.mix.simulated_psnr_db, self.min_psnr_db) + self.FAITHFULNESS_STEP_DB
        wider = choose_float_layers(self.report, self.simulation, aim, start=len(self.mix.float_layers) + 1)
        if not wider.meets_budget:
            return False
        self.mix, self.attempts = wider, self.attempts + 1
        return True

    def describe(self) -> str:
        return f"{len(self.mix.float_layers)} of {len(self.report.layers)} weighted layers float"

    def recorded(self, quantization: Quantization) -> Quantization:
        details = dict(quantization.details)
        details["mixed_precision"] = {
            "chosen_by": "--quantize auto: per-layer sensitivity (edgegen.exporting.sensitivity), float layers by PSNR gain per parameter",
            "min_psnr_db": self.min_psnr_db,
            "float_layers": list(self.mix.float_layers),
            "float_parameters": self.mix.float_parameters,
            "simulated_psnr_db": self.mix.simulated_psnr_db,
            "exports": self.attempts,
            "sensitivity": self.report.as_dict(top=20),
        }
        if self.faithfulness is not None:
            details["mixed_precision"]["faithfulness"] = self.faithfulness.as_dict(self.budget)
        return quantization.model_copy(update={"details": details})


def export_component(
    pipeline: Any,
    pipeline_dir: Path,
    component_name: str,
    target: str,
    output_root: Path,
    options: ExportOptions = ExportOptions(),
    force: bool = False,
) -> Artifact:
    """Export ``component_name`` of an already loaded ``pipeline`` to ``output_root/<name>``."""
    exporter = get_exporter(target)
    options = check_program_options(Path(pipeline_dir), [component_name], check_options(exporter, options))
    if component_name != PIPELINE_COMPONENT:
        _known_component(family_of(pipeline_dir), component_name)
    destination = Path(output_root) / artifact_name(component_name, target, options)
    _check_destination(destination, force)
    with atomic_folder(destination, force=force) as staging:
        _write_artifact(pipeline, pipeline_dir, component_name, target, staging, options)
    return load_artifact(destination)


def export_pipeline(
    pipeline_dir: Path,
    target: str,
    output_root: Path,
    components: list[str] | None = None,
    options: ExportOptions = ExportOptions(),
    force: bool = False,
) -> list[Artifact]:
    """Export every component of the folder's family (or ``components``): all of them, or none.

    The folder's family is decided, the names and destinations checked, before anything loads;
    each artifact is written into a staging folder and all of them are moved into place only
    once every one has converted and passed its parity gate.
    """
    import contextlib

    exporter = get_exporter(target)
    options = check_options(exporter, options)
    family = family_of(pipeline_dir)
    names = list(components) if components else [spec.name for spec in family.components]
    for name in names:
        if name != PIPELINE_COMPONENT:
            _known_component(family, name)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise EdgegenError(f"component {', '.join(repeated)} named more than once; name each component once")
    options = check_program_options(Path(pipeline_dir), names, options)
    destinations = {name: Path(output_root) / artifact_name(name, target, options) for name in names}
    for destination in destinations.values():
        _check_destination(destination, force)
    check_load_options(Path(pipeline_dir), options.load)
    if options.check_memory:
        subfolders = _subfolders(family, names)
        check_fits(Path(pipeline_dir), subfolders, target, options.quantize, options.load.variant, options.load.dtype)
    with contextlib.ExitStack() as stack:
        # The destinations are locked before the pipeline loads: a second export into the same
        # folder is refused at once, not after the load.
        stagings = {name: stack.enter_context(staged_folder(destinations[name], force=force)) for name in names}
        pipeline = load_pipeline(pipeline_dir, options.load)
        for name in names:
            _write_artifact(pipeline, pipeline_dir, name, target, stagings[name].folder, options)
        for staging in stagings.values():
            staging.commit()
    return [load_artifact(destinations[name]) for name in names]
