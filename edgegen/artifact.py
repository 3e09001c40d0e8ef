"""Read and write exported artifact folders: model file(s), manifest.json, reference tensors.

An artifact is written into a hidden temporary folder beside its destination and renamed into
place only when complete, so an interrupted or failed export never leaves half an artifact and
never replaces an existing one unless asked to.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgegen.errors import EdgegenError, first_line
from edgegen.schema.base import load_strict_json, write_json
from edgegen.schema.manifest import (
    ARTIFACT_SCHEMA_VERSION,
    MANIFEST_FILENAME,
    ArtifactFile,
    ArtifactManifest,
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_files(folder: Path, exclude: tuple[str, ...] = (MANIFEST_FILENAME,)) -> list[ArtifactFile]:
    """Every file under ``folder`` (packages such as .mlpackage are folders) with its hash."""
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative in exclude:
            continue
        entries.append(ArtifactFile(path=relative, sha256=sha256_file(path), bytes=path.stat().st_size))
    return entries


@dataclass
class Staging:
    """A hidden folder beside ``destination`` that becomes it on ``commit()``."""

    folder: Path
    destination: Path

    def commit(self) -> None:
        if self.destination.exists():
            retired = self.destination.with_name(f".{self.destination.name}.replaced-{os.getpid()}")
            os.replace(self.destination, retired)
            os.replace(self.folder, self.destination)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(self.folder, self.destination)


@contextlib.contextmanager
def staged_folder(destination: Path, force: bool = False) -> Iterator[Staging]:
    """Yield a staging folder for ``destination``; whatever was not committed is removed on exit.

    Several of these in one ``ExitStack``, committed together at the end, make a
    multi-artifact write all-or-nothing.
    """
    destination = destination.resolve()
    if destination.exists() and not force:
        raise EdgegenError(f"{destination} already exists; pass --force to replace it")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Staging(Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent)), destination)
    try:
        yield staging
    finally:
        if staging.folder.exists():
            shutil.rmtree(staging.folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(destination: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``destination`` only if the block completes."""
    with staged_folder(destination, force) as staging:
        yield staging.folder
        staging.commit()


@dataclass(frozen=True)
class Artifact:
    folder: Path
    manifest: ArtifactManifest

    @property
    def model_path(self) -> Path:
        return self.folder / self.manifest.model_file

    @property
    def size_bytes(self) -> int:
        return sum(entry.bytes for entry in self.manifest.files)

    @property
    def model_bytes(self) -> int:
        """The model file (or package) alone: what ships, without the reference tensors."""
        model = self.manifest.model_file
        return sum(e.bytes for e in self.manifest.files if e.path == model or e.path.startswith(model + "/"))

    def verify_files(self) -> None:
        """Fail in one line if a file is missing, truncated or altered since export."""
        for entry in self.manifest.files:
            path = self.folder / entry.path
            if not path.is_file():
                raise EdgegenError(f"artifact {self.folder} is missing {entry.path}")
            if path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
                raise EdgegenError(
                    f"artifact {self.folder} is corrupt: {entry.path} does not match its manifest hash"
                )

    def reference_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The reference inputs and the eager outputs they produced at export time."""
        from safetensors.numpy import load_file

        path = self.folder / self.manifest.reference_file
        try:
            tensors = load_file(str(path))
        except Exception as error:  # safetensors raises several types for bad files
            raise EdgegenError(f"cannot read reference tensors {path}: {first_line(error)}") from None
        inputs = {s.name: tensors[f"input.{s.name}"] for s in self.manifest.eager_inputs}
        outputs = {s.name: tensors[f"output.{s.name}"] for s in self.manifest.eager_outputs}
        return inputs, outputs


def write_manifest(folder: Path, manifest: ArtifactManifest) -> None:
    write_json(folder / MANIFEST_FILENAME, manifest)


def load_artifact(folder: Path, verify: bool = True) -> Artifact:
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgegenError(f"artifact folder not found: {folder}")
    manifest = load_strict_json(
        folder / MANIFEST_FILENAME, ArtifactManifest, ARTIFACT_SCHEMA_VERSION, "artifact manifest"
    )
    artifact = Artifact(folder=folder, manifest=manifest)
    if verify:
        artifact.verify_files()
    return artifact
