"""Core ML: converts and compresses on any host; prediction (and so parity) only on macOS."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgegen.cli import app
from edgegen.families.stable_diffusion import COMPONENT_NAMES, build_component
from edgegen.exporting.orchestration import MIN_PSNR_DB_INT8, ExportOptions, export_component
from edgegen.registry import EXPORTERS

ON_MACOS = platform.system() == "Darwin"
QUANTIZATIONS = [scheme for scheme in EXPORTERS.get("coreml").quantizations if scheme != "none"]


def _spec_io(model_path):
    """(name, shape, numpy dtype) of each feature, read straight from the package's spec."""
    import coremltools as ct
    from coremltools.proto import FeatureTypes_pb2

    array_types = FeatureTypes_pb2.ArrayFeatureType
    dtypes = {array_types.FLOAT32: "float32", array_types.FLOAT16: "float16", array_types.INT32: "int32"}
    spec = ct.utils.load_spec(str(model_path))
    assert spec.WhichOneof("Type") == "mlProgram"

    def features(values):
        return [(f.name, list(f.type.multiArrayType.shape), dtypes[f.type.multiArrayType.dataType]) for f in values]

    return features(spec.description.input), features(spec.description.output)


def _manifest_io(specs):
    return [(s.name, s.shape, s.dtype) for s in specs]


@pytest.mark.slow
@pytest.mark.parametrize("component", COMPONENT_NAMES)
def test_float_package_matches_its_manifest(exported, component):
    artifact = exported(component, "coreml")
    manifest = artifact.manifest
    assert artifact.model_path.is_dir() and artifact.model_path.name == "model.mlpackage"
    assert any(f.path.startswith("model.mlpackage/") and f.path.endswith("weight.bin") for f in manifest.files)
    details = dict(manifest.quantization.details)
    assert manifest.quantization.scheme == "none"
    # Which coremltools frontend converted it: torch.export, except where it lacks an op (CLIP's
    # text encoder: ``alias``), where tracing does and the manifest says why.
    frontend = details.pop("frontend")
    if component == "text_encoder":
        assert frontend.startswith("torch.jit.trace (torch.export frontend: ") and "alias" in frontend
    else:
        assert frontend == "torch.export"
    assert details == {"precision": "float32", "deployment_target": "iOS17", "compute_units": "ALL"}
    # The typed field says the same; the runtime reads it, or the details of a manifest without it.
    from edgegen.runtimes.coreml import deployment_of

    assert manifest.coreml.model_dump() == details
    assert deployment_of(manifest.model_copy(update={"coreml": None})) == manifest.coreml

    # The spec loads on any host; its I/O is what the manifest recorded.
    inputs, outputs = _spec_io(artifact.model_path)
    assert inputs == _manifest_io(manifest.inputs) and outputs == _manifest_io(manifest.outputs)
    assert [s.name for s in manifest.inputs] == [s.name for s in manifest.eager_inputs]
    assert [s.shape for s in manifest.inputs] == [s.shape for s in manifest.eager_inputs]
    assert [(s.name, s.shape) for s in manifest.outputs] == [(s.name, s.shape) for s in manifest.eager_outputs]
    assert all(s.dtype == "float32" for s in manifest.outputs)
    for converted, eager in zip(manifest.inputs, manifest.eager_inputs, strict=True):
        # Core ML has no int64 features: token ids arrive as int32.
        assert converted.dtype == ("int32" if eager.dtype == "int64" else eager.dtype)

    delegation = manifest.delegation
    assert delegation.backend == "coreml" and delegation.delegate_subgraphs == 1
    assert delegation.total_nodes == delegation.delegated_nodes > 0 and delegation.fallback_ops == {}
    assert manifest.toolchain.get("coremltools")


@pytest.mark.slow
def test_op_counts_are_the_compute_ops_of_the_program(exported):
    from edgegen.exporters.coreml import mil_op_counts

    artifact = exported("denoiser", "coreml")
    ops = mil_op_counts(artifact.model_path)
    assert ops["conv"] > 0 and ops["softmax"] > 0
    assert not any(name == "const" or name.startswith("constexpr_") for name in ops)
    assert sum(ops.values()) == artifact.manifest.delegation.total_nodes


@pytest.mark.slow
@pytest.mark.skipif(ON_MACOS, reason="on macOS Core ML runs the package and parity is measured")
@pytest.mark.parametrize("component", COMPONENT_NAMES)
def test_parity_is_not_claimed_off_macos(exported, component):
    parity = exported(component, "coreml").manifest.parity
    assert parity.measured is False and "macOS" in parity.reason and parity.psnr_db is None


@pytest.mark.slow
@pytest.mark.parametrize("scheme", QUANTIZATIONS)
@pytest.mark.parametrize("component", COMPONENT_NAMES)
def test_compressed_package_is_smaller_than_float(exported, component, scheme):
    artifact = exported(component, "coreml", scheme)
    manifest = artifact.manifest
    float_manifest = exported(component, "coreml").manifest
    details = manifest.quantization.details
    assert manifest.quantization.scheme == scheme and details["precision"] == "float16"
    assert manifest.coreml.precision == "float16"
    assert details["compressed_weights"] > 0
    assert manifest.parity.min_psnr_db == MIN_PSNR_DB_INT8
    assert manifest.inputs == float_manifest.inputs and manifest.outputs == float_manifest.outputs
    assert artifact.size_bytes < exported(component, "coreml").size_bytes
    inputs, outputs = _spec_io(artifact.model_path)
    assert inputs == _manifest_io(manifest.inputs) and outputs == _manifest_io(manifest.outputs)
    if not ON_MACOS:
        assert manifest.parity.measured is False and "macOS" in manifest.parity.reason


@pytest.mark.slow
@pytest.mark.skipif(not ON_MACOS, reason="Core ML prediction needs macOS")
@pytest.mark.parametrize("scheme", ["none", *QUANTIZATIONS])
@pytest.mark.parametrize("component", COMPONENT_NAMES)
def test_prediction_matches_eager_on_macos(exported, pipeline, component, scheme):
    from edgegen.measure.metrics import psnr_db
    from edgegen.session import open_artifact

    artifact = exported(component, "coreml", scheme)
    gate = artifact.manifest.parity.min_psnr_db
    assert artifact.manifest.parity.measured and artifact.manifest.parity.psnr_db >= gate
    fresh = build_component(pipeline, component, prompt="a green triangle at the bottom right", seed=7)
    produced = open_artifact(artifact).run(fresh.reference_inputs)
    for name, reference in fresh.run_eager().items():
        assert psnr_db(reference.numpy(), produced[name]) >= gate


@pytest.mark.slow
@pytest.mark.skipif(ON_MACOS, reason="on macOS the package can be profiled")
def test_profile_off_macos_is_a_one_line_error(exported):
    artifact = exported("vae_decoder", "coreml")
    result = CliRunner().invoke(app, ["profile", str(artifact.folder)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "needs macOS" in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_targets_says_coreml_exports_but_does_not_run_here():
    import json

    rows = {row["target"]: row for row in json.loads(CliRunner().invoke(app, ["targets", "--json"]).stdout)}
    assert rows["coreml"]["export"] is True
    assert rows["coreml"]["run"] is ON_MACOS
    if not ON_MACOS:
        assert rows["coreml"]["run_reason"] == "Core ML prediction needs macOS"


def test_unsupported_quantization_lists_what_coreml_supports(pipeline_dir, tmp_path):
    result = CliRunner().invoke(
        app, ["export", str(pipeline_dir), "-o", str(tmp_path), "--target", "coreml", "--quantize", "int8"]
    )
    assert result.exit_code == 2, result.output
    assert "supports: none, int8-weights, palettize-6bit, palettize-4bit" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_export_leaves_no_temporary_package_behind(pipeline, pipeline_dir, tmp_path):
    # coremltools keeps each converted model in a temporary .mlpackage of its own, never deleted:
    # a second copy of every artifact (10 GiB for SDXL's UNet) in the system's temporary folder.
    import tempfile

    def packages() -> set:
        return set(Path(tempfile.gettempdir()).glob("*.mlpackage"))

    before = packages()
    for quantize in ("none", "int8-weights"):
        export_component(pipeline, pipeline_dir, "vae_decoder", "coreml", tmp_path / quantize, ExportOptions(quantize=quantize))
    assert packages() - before == set()
