"""Model families as plug-ins: one file per diffusers pipeline class, one registry line each.

``family_of(folder)`` reads the folder's ``model_index.json`` and returns the family that claims
it, or refuses in one line naming the pipeline class and the supported families, before any
weights are loaded or anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.families.base import (
    Component,
    ComponentSpec,
    ConditioningEncoder,
    Family,
    Networks,
    component_names,
    component_spec,
    components_with_role,
    networks,
)

__all__ = [
    "Component",
    "ComponentSpec",
    "ConditioningEncoder",
    "Family",
    "Networks",
    "all_families",
    "component_names",
    "component_spec",
    "components_with_role",
    "denoiser_model",
    "family_of",
    "networks",
    "networks_of",
]


def all_families() -> list[Family]:
    from edgegen.registry import FAMILIES

    return [FAMILIES.get(name) for name in FAMILIES.names()]


def read_model_index(folder: Path) -> dict[str, Any]:
    from edgegen.families.loading import check_pipeline_dir, parse_model_index

    return parse_model_index(check_pipeline_dir(folder) / "model_index.json")


def family_of(folder: Path) -> Family:
    """The family of a pipeline folder, or one line saying its class is not supported."""
    index = read_model_index(folder)
    families = all_families()
    for family in families:
        if family.claims(Path(folder), index):
            # A family whose components depend on the folder (SD3 saved without its T5 encoder)
            # gives that folder's own variant.
            variant = getattr(family, "for_folder", None)
            return variant(Path(folder), index) if variant else family
    supported = "; ".join(family.description for family in families)
    raise EdgegenError(f"{folder}: pipeline class {index.get('_class_name', '(none)')} is not supported; supported families: {supported}")


def denoiser_model(family: Family, pipeline: Any) -> tuple[Any, str]:
    """The loaded pipeline's denoiser network (a UNet or transformer) and its subfolder."""
    spec = components_with_role(family, "denoiser")[0]
    model = getattr(pipeline, spec.subfolder, None)
    if model is None:
        raise EdgegenError(f"{type(pipeline).__name__} has no '{spec.subfolder}' denoiser")
    return model, spec.subfolder


def networks_of(folder: Path, pipeline: Any) -> Networks:
    """``pipeline`` (loaded from ``folder``) by role: denoiser, conditioning encoder, tokenizer, decoder."""
    return networks(family_of(folder), pipeline)
