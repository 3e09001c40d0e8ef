"""Bundles that an app-side runtime someone else wrote loads unchanged: one module per consumer,
each holding that consumer's contract (docs/consumers/ says where each rule comes from)."""

from __future__ import annotations

from pathlib import Path


def write_bundle(format_name: str, pipeline_dir: Path, output: Path, force: bool = False) -> Path:
    from edgegen.registry import BUNDLE_FORMATS

    return BUNDLE_FORMATS.get(format_name).write(Path(pipeline_dir), Path(output), force=force)
