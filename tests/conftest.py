"""Session fixtures: the embedded default pipeline is built once, each artifact exported once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory) -> Path:
    from edgegen.embedded.builders import build_embedded_default

    return build_embedded_default(tmp_path_factory.mktemp("teacher") / "pipeline")


@pytest.fixture(scope="session")
def pipeline(pipeline_dir):
    from edgegen.terminal import quiet
    from edgegen.families.loading import load_pipeline

    quiet()
    return load_pipeline(pipeline_dir)


@pytest.fixture(scope="session")
def artifact_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def exported(pipeline, pipeline_dir, artifact_root):
    """``exported(component, target)`` -> Artifact, exported on first request only."""
    from edgegen.exporting.orchestration import ExportOptions, export_component

    cache = {}

    def get(component: str, target: str, quantize: str = "none"):
        key = (component, target, quantize)
        if key not in cache:
            cache[key] = export_component(
                pipeline, pipeline_dir, component, target, artifact_root, ExportOptions(quantize=quantize)
            )
        return cache[key]

    return get

