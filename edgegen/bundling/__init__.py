"""Bundles that an app-side runtime someone else wrote loads unchanged: one module per consumer,
each holding that consumer's contract (docs/consumers/ says where each rule comes from)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_bundle(format_name: str, pipeline_dir: Path, output: Path, force: bool = False, **options: Any) -> Path:
    """``format_name``'s bundle of ``pipeline_dir``; ``options`` left None take the format's default,
    and one a format does not take is refused in one line."""
    from edgegen.errors import EdgegenError
    from edgegen.registry import BUNDLE_FORMATS

    bundle_format = BUNDLE_FORMATS.get(format_name)
    given = {name: value for name, value in options.items() if value is not None}
    for name in given:
        if name not in getattr(bundle_format, "options", ()):
            raise EdgegenError(f"--{name.replace('_', '-')} is not an option of the {format_name} format")
    return bundle_format.write(Path(pipeline_dir), Path(output), force=force, **given)
