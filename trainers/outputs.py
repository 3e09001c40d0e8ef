"""Write a trained pipeline folder: diffusers' save_pretrained, plus how the weights were made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgegen.schema.base import write_json
from edgegen.schema.training import TRAINING_MANIFEST_FILENAME, TrainingManifest


def save_trained_pipeline(pipeline: Any, parent_dir: Path, folder: Path, summary: dict[str, Any], details: dict[str, Any] | None = None) -> None:
    """Save ``pipeline`` into ``folder`` (a staging folder) with its training manifest.

    A student keeps its ``edgegen_student.json`` (SCMAN's config lives there) with ``recipe`` set
    to what this run did, so the exporters and the pipeline runner rebuild it exactly.
    """
    import torch

    from edgegen.models.checkpoint import read_student_manifest, write_student
    from edgegen.schema.checkpoint import FewStepSchedule, QatState

    for module in pipeline.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    details = dict(details or {})
    student = read_student_manifest(parent_dir)
    if student is not None:
        # This run's schedule and QAT state (if any) become the manifest's typed fields; the
        # parent's go, as does the rest of its recipe.
        sampling, qat = details.get("sampling"), details.get("qat")
        typed = {
            "recipe": {"name": summary["recipe"], "config": summary["config"], "config_sha256": summary["config_sha256"], **{k: v for k, v in details.items() if k not in ("sampling", "qat")}},
            "sampling": FewStepSchedule(**{k: sampling[k] for k in ("steps", "timesteps", "prediction") if k in sampling}) if sampling else None,
            # The parent's QAT states go too: only this run's state file is written beside its weights.
            "qat": [QatState(component=qat["component"], state_file=qat["state"])] if isinstance(qat, dict) else [],
        }
        write_student(pipeline, student.model_copy(update=typed), folder)
    else:
        pipeline.save_pretrained(folder, safe_serialization=True)
    write_training_manifest(folder, parent_dir, summary, details, ("torch", "diffusers", "transformers", "peft", "torchao"))


def write_training_manifest(folder: Path, parent_dir: Path, summary: dict[str, Any], details: dict[str, Any], packages: tuple[str, ...]) -> None:
    """``edgegen_training.json`` in ``folder``: the run's summary, its recipe's details and ``packages``' versions."""
    from edgegen.families import components_with_role, family_of
    from edgegen.families.loading import checkpoint_sha256
    from edgegen.versions import versions_of

    known = {"recipe", "config", "config_sha256", "data", "steps", "resumed_from_step", "world_size", "ranks_in_sync", "final_losses", "seconds", "finished_at"}
    manifest = TrainingManifest(
        parent_dir=str(Path(parent_dir).resolve()),
        parent_unet_sha256=checkpoint_sha256(parent_dir, components_with_role(family_of(parent_dir), "denoiser")[0].subfolder),
        details={**{k: v for k, v in summary.items() if k not in known}, **details},
        versions=versions_of(packages),
        **{k: summary[k] for k in known},
    )
    write_json(folder / TRAINING_MANIFEST_FILENAME, manifest)
