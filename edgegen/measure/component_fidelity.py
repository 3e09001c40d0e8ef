"""Compare an exported artifact with its teacher's eager component on the same inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgegen.artifact import Artifact, load_artifact
from edgegen.families import family_of
from edgegen.errors import EdgegenError
from edgegen.measure.metrics import worst_fidelity
from edgegen.measure.profiling import artifact_result
from edgegen.schema.results import Quality, Result
from edgegen.session import open_artifact
from edgegen.families.loading import checkpoint_sha256, load_pipeline


def compare_with_pipeline(artifact: Artifact, pipeline: Any, pipeline_dir: Path, threads: int = 1) -> Result:
    manifest = artifact.manifest
    batch_size = manifest.eager_inputs[0].shape[0] if manifest.eager_inputs and manifest.eager_inputs[0].shape else 1
    component = family_of(pipeline_dir).build_component(pipeline, manifest.component, batch_size=batch_size)
    declared = [(s.name, s.shape) for s in component.inputs]
    recorded = [(s.name, s.shape) for s in manifest.eager_inputs]
    if declared != recorded:
        raise EdgegenError(
            f"the teacher's {manifest.component} takes {declared}, the artifact was made for {recorded}"
        )
    import torch

    inputs, _ = artifact.reference_tensors()
    teacher_outputs = {
        name: tensor.numpy()
        for name, tensor in component.run_eager({k: torch.from_numpy(v.copy()) for k, v in inputs.items()}).items()
    }
    session = open_artifact(artifact, threads)
    produced = session.run(inputs)
    score = worst_fidelity(teacher_outputs, produced)
    same = checkpoint_sha256(pipeline_dir, component.source_subfolder) == manifest.source.checkpoint_sha256
    return artifact_result(
        "compare",
        artifact,
        session.runtime_name,
        threads,
        quality=Quality(
            reference=f"teacher eager {manifest.component} ({pipeline_dir})",
            psnr_db=score.psnr_db,
            max_abs_error=score.max_abs_error,
            cosine=score.cosine,
            same_checkpoint=same,
        ),
    )


def compare_artifact(artifact_dir: Path, teacher_dir: Path, threads: int = 1) -> Result:
    artifact = load_artifact(artifact_dir)
    return compare_with_pipeline(artifact, load_pipeline(teacher_dir), Path(teacher_dir), threads)
