"""``edgegen train qat``: any component of a student learns its int8 scales, in XNNPACK's scheme or
LiteRT's, and each target lowers the scheme it can (the other calibrates and says why)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgegen.cli import app
from tests.test_one_call import _few_step_folder

SMALL_DATA = "data=builtin:shapes?count=16"


def train_qat(student: Path, output: Path, *args: str) -> Path:
    result = CliRunner().invoke(app, ["train", "qat", f"student={student}", f"output={output}", "log_every=5", SMALL_DATA, *args])
    assert result.exit_code == 0, result.output
    return output / "pipeline"


@pytest.fixture(scope="module")
def few_step_dir(pipeline_dir, tmp_path_factory) -> Path:
    return _few_step_folder(pipeline_dir, tmp_path_factory.mktemp("qat-recipe") / "student")


@pytest.fixture(scope="module")
def litert_decoder(few_step_dir, tmp_path_factory) -> Path:
    return train_qat(few_step_dir, tmp_path_factory.mktemp("qat-decoder"), "component=vae_decoder", "scheme=litert", "steps=20")


def fake_quant_parity(artifact, folder: Path, component_name: str) -> float:
    """The artifact against the fake-quant model its student was trained as, measured here."""
    import torch

    from edgegen.exporting.quantize import fake_quant_module
    from edgegen.families import family_of
    from edgegen.families.loading import load_pipeline
    from edgegen.measure.metrics import psnr_db
    from edgegen.models.checkpoint import learned_scales
    from edgegen.session import open_artifact

    inputs, _ = artifact.reference_tensors()
    pipeline = load_pipeline(folder)
    if component_name == "pipeline":
        from edgegen.exporting.one_call import build_program

        program = artifact.manifest.program
        component = build_program(pipeline, folder, len(program.timesteps), program.guidance_scale)
    else:
        component = family_of(folder).build_component(pipeline, component_name)
    component.quantization_source = learned_scales(folder, component_name)
    names = [spec.name for spec in component.inputs]
    with torch.no_grad():
        expected = fake_quant_module(component)(*(torch.from_numpy(inputs[name].copy()) for name in names))
    output = component.outputs[0].name
    return psnr_db(expected.numpy(), open_artifact(artifact).run(inputs)[output])


@pytest.mark.slow
def test_a_litert_qat_decoder_is_lowered_by_litert_and_recalibrated_elsewhere(litert_decoder, few_step_dir, tmp_path):
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.families.loading import load_pipeline
    from edgegen.models.checkpoint import read_student_manifest

    manifest = read_student_manifest(litert_decoder)
    assert [state.model_dump(exclude_none=True) for state in manifest.qat] == [
        {"scheme": "pt2e-litert-int8-qat", "component": "vae_decoder", "state_file": "vae/qat.safetensors"}
    ]
    assert manifest.sampling == read_student_manifest(few_step_dir).sampling  # the schedule is kept
    # Only the decoder's subfolder changed: the denoiser and text encoder are the parent's bytes.
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (litert_decoder / name).read_bytes() == (few_step_dir / name).read_bytes()
    pipeline = load_pipeline(litert_decoder)
    litert = export_component(pipeline, litert_decoder, "vae_decoder", "tflite", tmp_path, ExportOptions(quantize="int8"))
    details = litert.manifest.quantization.details
    assert details["source"] == "checkpoint (QAT)" and details["recalibrated"] is False
    measured = fake_quant_parity(litert, litert_decoder, "vae_decoder")
    assert litert.manifest.parity.vs_fake_quant.psnr_db == pytest.approx(measured, abs=0.05)
    assert measured > 30  # measured 37 dB: int8 kernels against fake-quant arithmetic, rounding only
    executorch = export_component(pipeline, litert_decoder, "vae_decoder", "executorch", tmp_path, ExportOptions(quantize="int8"))
    reason = executorch.manifest.quantization.details["qat_scales"]
    assert "learned as pt2e-litert-int8-qat" in reason and reason.endswith("recalibrated")


@pytest.mark.slow
def test_an_xnnpack_qat_text_encoder_is_lowered_by_executorch(few_step_dir, tmp_path):
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.families.loading import load_pipeline
    from edgegen.trainers.loop import read_metrics

    out = tmp_path / "qat"
    student = train_qat(few_step_dir, out, "component=text_encoder", "scheme=xnnpack", "steps=10")
    losses = [row["loss"] for row in read_metrics(out)]
    assert all(loss == loss and loss < 1.0 for loss in losses)  # finite and well under the outputs' power
    artifact = export_component(load_pipeline(student), student, "text_encoder", "executorch", tmp_path / "artifacts", ExportOptions(quantize="int8"))
    assert artifact.manifest.quantization.details["source"] == "checkpoint (QAT)"
    assert fake_quant_parity(artifact, student, "text_encoder") > 30


@pytest.mark.slow
def test_litert_qat_converts_diffusers_test_unet_whose_skip_is_padded_and_concatenated(tmp_path):
    """diffusers' fast-test UNet: a down block's output is zero-padded for the strided convolution
    and concatenated in the up path. Observed apart, the two scales drift in training and LiteRT
    refuses the graph ('tfl.concatenation' ... same scale constraint); one observer serves both."""
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.families.loading import load_pipeline
    from tests.dummy_pipelines import stable_diffusion

    student = _few_step_folder(stable_diffusion.build(tmp_path / "teacher"), tmp_path / "student")
    trained = train_qat(student, tmp_path / "qat", "component=denoiser", "scheme=litert", "steps=10", "learning_rate=1e-4")
    artifact = export_component(load_pipeline(trained), trained, "denoiser", "tflite", tmp_path / "artifacts", ExportOptions(quantize="int8"))
    assert artifact.manifest.quantization.details["source"] == "checkpoint (QAT)"
    assert fake_quant_parity(artifact, trained, "denoiser") > 30  # measured 40 dB


def test_litert_int8_gives_a_padded_and_concatenated_tensor_one_observer(tmp_path):
    """The annotation itself: the pad's reader shares the concatenation's group."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from edgegen.exporters.tflite import STATIC_OPS, _float_boundary_quantizer

    class SkipThroughPad(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.down, self.up = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, stride=2), torch.nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skip = torch.nn.functional.silu(self.first(x))  # float: its readers quantize it
            low = self.down(torch.nn.functional.pad(skip, (1, 1, 1, 1)))
            high = self.up(torch.nn.functional.interpolate(low, scale_factor=2.0))  # a quantized input
            return torch.cat([high, skip], dim=1).sum(dim=1)

    example = (torch.randn(1, 4, 8, 8),)
    graph = torch.export.export(SkipThroughPad(), example, strict=False).module()
    prepared = prepare_pt2e(graph, _float_boundary_quantizer(STATIC_OPS))
    nodes = {node.name: node for node in prepared.graph.nodes}
    pad = next(node for node in nodes.values() if "pad" in str(node.target) and node.op == "call_function")
    cat = next(node for node in nodes.values() if "cat" in str(node.target))
    # torchao names each use of a shared observer apart; the module is one object.
    pad_observer = getattr(prepared, next(iter(pad.users)).target)
    cat_observers = [getattr(prepared, source.target) for source in cat.args[0]]
    assert cat_observers[0] is cat_observers[1] and pad_observer is cat_observers[1]


def test_bad_qat_requests_are_one_line(pipeline_dir, few_step_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "qat", f"student={few_step_dir}", f"output={tmp_path / 'a'}", "component=vae_encoder", "steps=1"])
    assert result.exit_code == 2 and "has no component 'vae_encoder'; it has text_encoder, denoiser, vae_decoder" in result.output
    result = runner.invoke(app, ["train", "qat", f"student={pipeline_dir}", f"output={tmp_path / 'b'}", "component=vae_decoder", "steps=1"])
    assert result.exit_code == 2 and "is not a student" in result.output
    result = runner.invoke(app, ["train", "qat", f"student={few_step_dir}", f"output={tmp_path / 'c'}", "component=vae_decoder", "scheme=coreml"])
    assert result.exit_code == 2 and "scheme" in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "pipeline").exists()


def test_a_schema_2_student_manifest_lifts_its_qat_state_into_the_list(few_step_dir, tmp_path):
    import shutil

    from edgegen.models.checkpoint import read_student_manifest
    from edgegen.schema.checkpoint import STUDENT_MANIFEST_FILENAME

    folder = tmp_path / "v2"
    shutil.copytree(few_step_dir, folder)
    path = folder / STUDENT_MANIFEST_FILENAME
    data = json.loads(path.read_text())
    data.update(schema_version=2, qat={"scheme": "pt2e-xnnpack-int8-qat", "component": "denoiser", "state_file": "unet/qat.safetensors"})
    path.write_text(json.dumps(data))
    assert [state.component for state in read_student_manifest(folder).qat] == ["denoiser"]
    data.update(qat=None)
    path.write_text(json.dumps(data))
    assert read_student_manifest(folder).qat == []


@pytest.mark.slow
def test_a_decoder_student_forgets_the_replaced_decoders_learned_scales(litert_decoder, tmp_path):
    result = CliRunner().invoke(app, ["student", "init", "--teacher", str(litert_decoder), "-o", str(tmp_path / "tiny"), "--component", "vae_decoder", "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    from edgegen.models.checkpoint import read_student_manifest

    assert read_student_manifest(tmp_path / "tiny").qat == []


@pytest.mark.slow
def test_a_one_call_program_learns_litert_int8_for_its_own_schedule(litert_decoder, tmp_path):
    from edgegen.exporting.orchestration import ExportOptions, export_component
    from edgegen.families.loading import load_pipeline
    from edgegen.models.checkpoint import read_student_manifest

    out = tmp_path / "qat"
    program = train_qat(litert_decoder, out, "component=pipeline", "scheme=litert", "steps=10", "steps_in_program=2")
    states = read_student_manifest(program).qat
    # The program trains every component: the decoder's own scales no longer describe its weights.
    assert [(state.component, state.timesteps, state.guidance_scale) for state in states] == [("pipeline", [999, 499], 1.0)]
    assert not (program / "vae" / "qat.safetensors").exists()
    frozen = json.loads((program / "edgegen_training.json").read_text())["details"]["activation_ranges_frozen"]
    assert frozen > 10  # calibrated as the export calibrates, then frozen: only the weights train
    pipeline = load_pipeline(program)
    artifact = export_component(pipeline, program, "pipeline", "tflite", tmp_path / "a", ExportOptions(quantize="int8", pipeline_steps=2))
    assert artifact.manifest.quantization.details["source"] == "checkpoint (QAT)"
    assert artifact.manifest.parity.psnr_db > 35  # measured 42 dB (calibrated int8: 41.5)
    assert fake_quant_parity(artifact, program, "pipeline") > 30
    # Another schedule is another graph: calibrated, and the manifest says why.
    other = export_component(pipeline, program, "pipeline", "tflite", tmp_path / "b", ExportOptions(quantize="int8", pipeline_steps=1))
    reason = other.manifest.quantization.details["qat_scales"]
    assert "learned for the program on timesteps [999, 499] at guidance 1; this one runs [999] at 1" in reason
    assert other.manifest.parity.vs_fake_quant is None
