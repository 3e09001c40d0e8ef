"""Every component exported to every registered target, run for real against eager.

A target this host cannot run (Core ML off macOS) skips with the reason; a pinned toolchain
that is missing fails (tests/helpers.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgegen.families.stable_diffusion import COMPONENT_NAMES, build_component
from edgegen.exporting.orchestration import MIN_PSNR_DB_FLOAT32, MIN_PSNR_DB_INT8
from edgegen.measure.metrics import psnr_db
from edgegen.registry import EXPORTERS
from edgegen.session import open_artifact
from tests.helpers import require_runtime

# Float32 exports differ from eager only by kernel ordering.
FLOAT32_ATOL = 1e-4

CASES = [(component, target) for target in EXPORTERS.names() for component in COMPONENT_NAMES]
QUANTIZED_CASES = [
    (component, target, scheme)
    for target in EXPORTERS.names()
    for scheme in EXPORTERS.get(target).quantizations
    if scheme != "none"
    for component in COMPONENT_NAMES
]
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("component, target", CASES)
def test_export_runs_and_matches_eager(exported, pipeline, component, target):
    require_runtime(target)
    artifact = exported(component, target)
    manifest = artifact.manifest
    assert manifest.target == target and manifest.component == component
    assert manifest.quantization.scheme == "none"
    assert manifest.parity.measured and manifest.parity.psnr_db >= MIN_PSNR_DB_FLOAT32
    assert artifact.model_path.is_file()
    assert [s.name for s in manifest.inputs] == [s.name for s in manifest.eager_inputs]
    assert [s.shape for s in manifest.outputs] == [s.shape for s in manifest.eager_outputs]
    assert set(manifest.toolchain) >= {"torch"}

    # Fresh inputs the export never saw: a new prompt / new latents, seed 7.
    fresh = build_component(pipeline, component, prompt="a green triangle at the bottom right", seed=7)
    expected = {k: v.numpy() for k, v in fresh.run_eager().items()}
    produced = open_artifact(artifact).run(fresh.reference_inputs)
    for name, reference in expected.items():
        np.testing.assert_allclose(produced[name], reference, atol=FLOAT32_ATOL, rtol=0)


@pytest.mark.parametrize("component, target, scheme", QUANTIZED_CASES)
def test_quantized_export_stays_close_to_float(exported, pipeline, component, target, scheme):
    require_runtime(target)
    artifact = exported(component, target, scheme)
    manifest = artifact.manifest
    assert manifest.quantization.scheme == scheme and manifest.quantization.details
    assert manifest.parity.measured and manifest.parity.psnr_db >= MIN_PSNR_DB_INT8
    # Smaller than float: int8 weights.
    assert artifact.size_bytes < exported(component, target).size_bytes

    fresh = build_component(pipeline, component, prompt="a green triangle at the bottom right", seed=7)
    expected = fresh.run_eager()
    produced = open_artifact(artifact).run(fresh.reference_inputs)
    for name, reference in expected.items():
        assert psnr_db(reference.numpy(), produced[name]) >= MIN_PSNR_DB_INT8


def test_failed_parity_leaves_nothing(pipeline, pipeline_dir, tmp_path):
    from edgegen.errors import EdgegenError
    from edgegen.exporting.orchestration import ExportOptions, export_component

    with pytest.raises(EdgegenError, match="failed parity"):
        export_component(pipeline, pipeline_dir, "text_encoder", "onnx", tmp_path, ExportOptions(min_psnr_db=1e9))
    assert list(tmp_path.iterdir()) == []


def test_existing_artifact_is_not_overwritten_without_force(exported, pipeline, pipeline_dir, artifact_root):
    from edgegen.errors import EdgegenError
    from edgegen.exporting.orchestration import export_component

    artifact = exported("text_encoder", "onnx")
    before = artifact.manifest.created_at
    with pytest.raises(EdgegenError, match="--force"):
        export_component(pipeline, pipeline_dir, "text_encoder", "onnx", artifact_root)
    from edgegen.artifact import load_artifact

    assert load_artifact(artifact.folder).manifest.created_at == before


def test_quantization_a_target_lacks_lists_what_it_supports(pipeline, pipeline_dir, tmp_path):
    from edgegen.errors import EdgegenError
    from edgegen.exporting.orchestration import ExportOptions, export_component

    with pytest.raises(EdgegenError, match="supports: "):
        export_component(pipeline, pipeline_dir, "text_encoder", "onnx", tmp_path, ExportOptions(quantize="int3"))
