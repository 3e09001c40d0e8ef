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
