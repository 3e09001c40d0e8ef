"""ExecuTorch specifics: the delegation report, and the Core ML delegate built on Linux."""

from __future__ import annotations

import platform

import pytest
from typer.testing import CliRunner

from edgegen.cli import app
from edgegen.exporting.orchestration import ExportOptions, export_component

pytestmark = pytest.mark.slow


def test_xnnpack_takes_the_whole_denoiser_and_decoder(exported):
    # The exact rewrites (decomposed norms, concat upsampling, ...) leave nothing to portable kernels.
    for component in ("denoiser", "vae_decoder"):
        manifest = exported(component, "executorch").manifest
        delegation = manifest.delegation
        assert delegation.backend == "xnnpack"
        assert delegation.delegated_nodes == delegation.total_nodes and not delegation.fallback_ops
        assert delegation.delegate_subgraphs == 1
        assert any("GroupNorm" in rewrite for rewrite in manifest.graph_rewrites)


def test_delegation_report_names_what_fell_back(exported):
    # CLIP's text encoder still leaves a few ops outside XNNPACK; the report lists them.
    delegation = exported("text_encoder", "executorch").manifest.delegation
    assert 0 < delegation.delegated_nodes < delegation.total_nodes
    assert sum(delegation.fallback_ops.values()) == delegation.total_nodes - delegation.delegated_nodes
    # ... and why each fell off: the partitioner's own reason, or that it has no support at all.
    assert set(delegation.fallback_reasons) == set(delegation.fallback_ops)
    assert all(reason for reason in delegation.fallback_reasons.values())


def test_the_partitioners_reasons_are_collected_without_printing(caplog):
    import logging

    from edgegen.exporters.executorch import partitioner_refusals

    logger = logging.getLogger("executorch.backends.xnnpack.partition.config.node_configs")

    class Node:
        name = "aten_mean_dim_3"

    from executorch.exir.backend.utils import WhyNoPartition

    with caplog.at_level(logging.DEBUG), partitioner_refusals("xnnpack") as reasons:
        WhyNoPartition(logger=logger)(Node(), reason="mean.dim only supports averaging 4D tensors")
    assert reasons == {"aten_mean_dim": "mean.dim only supports averaging 4D tensors"}
    assert not [r for r in caplog.records if r.name.startswith("executorch.backends.xnnpack")]
    assert logging.getLogger("executorch.backends.xnnpack.partition").propagate  # restored


@pytest.fixture(scope="module")
def coreml_pte(pipeline, pipeline_dir, artifact_root):
    return export_component(
        pipeline, pipeline_dir, "vae_decoder", "executorch", artifact_root, ExportOptions(backend="coreml")
    )


def test_coreml_delegate_takes_the_whole_graph(coreml_pte):
    manifest = coreml_pte.manifest
    assert coreml_pte.folder.name == "vae_decoder-executorch-coreml"
    assert manifest.backend == "coreml" and manifest.quantization.details["precision"] == "float16"
    assert manifest.coreml.model_dump() == manifest.quantization.details  # typed, and kept in details for old readers
    assert manifest.delegation.delegated_nodes == manifest.delegation.total_nodes
    assert manifest.delegation.delegate_subgraphs == 1
    assert [s.shape for s in manifest.inputs] == [[1, 4, 8, 8]]


@pytest.mark.skipif(platform.system() == "Darwin", reason="on macOS the Core ML delegate may be registered")
def test_coreml_pte_is_not_run_on_linux(coreml_pte):
    parity = coreml_pte.manifest.parity
    assert not parity.measured and "CoreMLBackend" in parity.reason
    result = CliRunner().invoke(app, ["profile", str(coreml_pte.folder)])
    assert result.exit_code == 2 and "CoreMLBackend" in result.stderr


def test_coreml_backend_refuses_int8(pipeline, pipeline_dir, tmp_path):
    from edgegen.errors import EdgegenError

    with pytest.raises(EdgegenError, match="--target coreml"):
        export_component(pipeline, pipeline_dir, "vae_decoder", "executorch", tmp_path, ExportOptions(backend="coreml", quantize="int8"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("family", "component"), [("stable_diffusion_3", "text_encoder_3"), ("sana", "text_encoder")])
def test_int8_text_encoders_with_integer_position_arithmetic(tmp_path, family, component):
    """T5 (SD3) and Gemma-2 (Sana) compute positions in integers; their int8 export used to fail
    with "Tensor dtype mismatch! Expected: Long, Got: float"."""
    import importlib

    from typer.testing import CliRunner

    from edgegen.artifact import load_artifact
    from edgegen.cli import app
    from edgegen.exporting.base import MIN_PSNR_DB_INT8

    folder = importlib.import_module(f"tests.dummy_pipelines.{family}").build(tmp_path / "pipeline")
    result = CliRunner().invoke(app, ["export", str(folder), "-o", str(tmp_path / "out"), "--target", "executorch", "--quantize", "int8", "--component", component])
    assert result.exit_code == 0, result.output
    manifest = load_artifact(tmp_path / "out" / f"{component}-executorch-xnnpack-int8").manifest
    assert manifest.quantization.scheme == "int8"
    assert manifest.parity.measured and manifest.parity.psnr_db >= MIN_PSNR_DB_INT8


def test_an_export_leaves_no_lowered_graph_behind(pipeline, pipeline_dir, tmp_path):
    # ExecuTorch's memoized is_same_node would otherwise keep the lowered graph, and the
    # delegate's copy of the weights, alive while parity loads the program beside it.
    import gc

    from executorch.exir.lowered_backend_module import LoweredBackendModule

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, LoweredBackendModule) for o in gc.get_objects())

    before = alive()
    export_component(pipeline, pipeline_dir, "vae_decoder", "executorch", tmp_path, ExportOptions())
    assert alive() <= before
