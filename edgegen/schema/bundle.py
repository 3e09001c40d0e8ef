"""``bundle.json``: what an app-side bundle holds, for which consumer, and how the model was fitted to it."""

from __future__ import annotations

from pathlib import Path

from edgegen.schema.base import StrictModel, validate_strict

BUNDLE_SCHEMA_VERSION = 1
BUNDLE_MANIFEST = "bundle.json"


class BundleFile(StrictModel):
    role: str  # the consumer's name for it: tokenizer, scheduler, encoder, unet, decoder
    path: str  # relative to the bundle folder
    sha256: str
    bytes: int
    parity_psnr_db: float | None = None  # a model file against its eager graph on the same inputs


class BundleManifest(StrictModel):
    schema_version: int = BUNDLE_SCHEMA_VERSION
    edgegen_version: str
    created_at: str
    format: str  # the consumer, e.g. react-native-executorch
    consumer: str  # the consumer's source the contract was read from (repository, commit)
    source_dir: str
    family: str
    checkpoint_sha256: str  # the source's weights, hashed as exports hash them
    image_size: int  # the image the app asks for (pixels, square)
    steps_hint: int  # a step count the bundle was checked at
    files: list[BundleFile]
    # Where the model differs from the consumer's contract, what each graph does about it (exactly).
    adaptations: list[str]
    toolchain: dict[str, str]
    next_steps: list[str]  # what the app developer does with it


def read_bundle_manifest(folder: Path) -> BundleManifest:
    import json

    path = Path(folder) / BUNDLE_MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        from edgegen.errors import EdgegenError

        raise EdgegenError(f"cannot read {path}: {error}") from None
    return validate_strict(data, BundleManifest, BUNDLE_SCHEMA_VERSION, str(path), "bundle manifest")
