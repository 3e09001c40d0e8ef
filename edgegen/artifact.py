"""Read and write exported artifact folders: model file(s), manifest.json, reference tensors.

An artifact is written into a hidden temporary folder beside its destination and renamed into
place only when complete, so an interrupted or failed export never leaves half an artifact and
never replaces an existing one unless asked to. One writer of a destination at a time (a lock
file beside it); a killed writer's leftovers carry its pid and the next writer removes them.
Every path a manifest names stays inside the artifact folder, and every file is hashed.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import secrets
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
    MANIFEST_MIGRATIONS,
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except (OSError, OverflowError):
        return False
    return True


def _remove(path: Path) -> None:
    """Remove a file, folder or link; a link is removed itself, never what it points to."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()  # a dangling link is still something to replace


def _sweep_leftovers(destination: Path) -> None:
    """Remove what killed writers of ``destination`` left beside it (their pid is in the name).

    A retired old artifact whose writer died before the new one moved in is put back instead,
    so a kill between the two renames of a forced replace loses nothing.
    """
    for kind in ("replaced", "partial"):
        for path in sorted(destination.parent.glob(f".{glob.escape(destination.name)}.{kind}-*")):
            pid_text = path.name[len(f".{destination.name}.{kind}-"):].split("-", 1)[0]
            if not pid_text.isdigit() or _pid_alive(int(pid_text)):
                continue  # another writer's, still running (or not ours to judge)
            if kind == "replaced" and not _exists(destination):
                os.rename(path, destination)
            else:
                _remove(path)


@contextlib.contextmanager
def _writer_lock(destination: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``destination``: one writer of a destination at a time.

    A second writer is refused at once rather than kept waiting (two exports into one folder
    are a mistake, and waiting on several destinations in different orders could deadlock).
    The lock file is removed on release; the inode check makes a writer that locked a file
    another one had just removed try again on the new one.
    """
    import fcntl

    lock_path = destination.with_name(f".{destination.name}.lock")
    while True:
        try:
            descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise EdgegenError(f"cannot write {destination}: {error.strerror}") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise EdgegenError(f"{destination} is being written by another export right now; try again when it has finished") from None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(descriptor)


def _plain_destination(destination: Path) -> Path:
    """``destination`` made absolute without following a link in its last part (--force replaces the link)."""
    destination = Path(os.path.abspath(destination))
    return destination.parent.resolve() / destination.name if destination.name else destination


@dataclass
class Staging:
    """A hidden folder beside ``destination`` that becomes it on ``commit()``."""

    folder: Path
    destination: Path
    force: bool = False

    def commit(self) -> None:
        if not _exists(self.destination):
            try:
                os.rename(self.folder, self.destination)  # fails onto a non-empty folder that appeared meanwhile
                return
            except OSError:
                if not _exists(self.destination):
                    raise
        if not self.force:
            raise EdgegenError(f"{self.destination} already exists (written meanwhile by someone else); pass --force to replace it")
        retired = self.destination.with_name(f".{self.destination.name}.replaced-{os.getpid()}-{secrets.token_hex(4)}")
        os.rename(self.destination, retired)  # a link is renamed itself, its target is not touched
        os.rename(self.folder, self.destination)
        _remove(retired)


def _refuse_a_file_for_a_folder(destination: Path) -> None:
    """A folder is written here: a file at its place or in its parents is refused (never replaced, even with --force)."""
    if destination.is_file() and not destination.is_symlink():
        raise EdgegenError(f"{destination} is a file, not a folder; remove it or choose another path")
    for parent in destination.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise EdgegenError(f"{parent} is a file, not a folder; cannot write {destination} inside it")
            break


_OS_ERROR_NUMBER = re.compile(r"\(os error (\d+)\)")


def write_failure(error: Exception, staging: Path, destination: Path) -> EdgegenError | None:
    """A disk that is full or read-only while ``staging`` was written, as one line naming the file.

    Toolchains report it in their own ways: an OSError (often without a file name, when a write
    after the open fails), safetensors' "I/O error ... (os error 28)", torch.save's writer
    "enforce fail at inline_container.cc". The file named is the one the error carries or else
    the one written last, as it would have been called in ``destination``; None: not a write failure.
    """
    text = str(error)
    if isinstance(error, OSError):
        reason, filename = error.strerror or first_line(error), error.filename
    elif type(error).__name__ == "SafetensorError" and "I/O error" in text:
        number = _OS_ERROR_NUMBER.search(text)
        reason, filename = os.strerror(int(number.group(1))) if number else first_line(error), None
    elif isinstance(error, RuntimeError) and "inline_container" in text:
        reason, filename = f"the write failed ({first_line(error)})", None
    else:
        return None
    if filename is None:
        written = [p for p in staging.rglob("*") if p.is_file()] if staging.is_dir() else []
        filename = max(written, key=lambda p: p.stat().st_mtime_ns) if written else destination
    path = Path(os.fsdecode(filename))
    if path.is_relative_to(staging):
        path = destination / path.relative_to(staging)
    return EdgegenError(f"cannot write {path}: {reason}; nothing was written")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_folder(destination: Path, force: bool = False) -> Iterator[Staging]:
    """Yield a staging folder for ``destination``; whatever was not committed is removed on exit.

    Several of these in one ``ExitStack``, committed together at the end, make a
    multi-artifact write all-or-nothing. The staging folder's name carries this process's
    id, so a later writer of the same destination removes it if this process was killed.
    """
    destination = _plain_destination(destination)
    _refuse_a_file_for_a_folder(destination)
    if _exists(destination) and not force:
        raise EdgegenError(f"{destination} already exists; pass --force to replace it")
    created = _missing_folders(destination.parent)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EdgegenError(f"cannot create {destination.parent}: {error.strerror}") from None
    committed = False
    try:
        with _staging_under_lock(destination, force) as staging:
            yield staging
            committed = _exists(destination)
    finally:
        if not committed:
            _remove_if_empty(created)  # a refused or failed write leaves no empty -o folder behind


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not (folder.exists() or folder.is_symlink()) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (another writer's work), or gone: leave it and its parents


@contextlib.contextmanager
def _staging_under_lock(destination: Path, force: bool) -> Iterator[Staging]:
    with _writer_lock(destination):
        _sweep_leftovers(destination)
        if _exists(destination) and not force:
            raise EdgegenError(f"{destination} already exists; pass --force to replace it")
        prefix = f".{destination.name}.partial-{os.getpid()}-"
        try:
            staging = Staging(Path(tempfile.mkdtemp(prefix=prefix, dir=destination.parent)), destination, force)
            # mkdtemp makes the folder private (0700); the artifact is an ordinary folder.
            os.chmod(staging.folder, 0o777 & ~_umask())
        except OSError as error:
            raise EdgegenError(f"cannot write {destination}: {error.strerror or first_line(error)}") from None
        try:
            yield staging
        except Exception as error:
            failure = write_failure(error, staging.folder, destination)
            if failure is None:
                raise
            raise failure from None
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
        """The model file (or package) and its weight files: what ships, without the reference tensors."""
        model, weights = self.manifest.model_file, set(self.manifest.weight_files)
        return sum(e.bytes for e in self.manifest.files if e.path == model or e.path.startswith(model + "/") or e.path in weights)

    def check_paths(self) -> None:
        """Fail in one line if a path the manifest names leads outside the folder (a link included)."""
        root = self.folder.resolve()
        named = [entry.path for entry in self.manifest.files] + [self.manifest.model_file, self.manifest.reference_file, *self.manifest.weight_files]
        for relative in named:
            if not (self.folder / relative).resolve().is_relative_to(root):
                raise EdgegenError(f"artifact {self.folder}: {relative} leads outside the artifact folder")
        if self.model_path.is_dir() and not self.model_path.is_symlink():
            listed = {entry.path for entry in self.manifest.files}
            for path in sorted(p for p in self.model_path.rglob("*") if p.is_file() or p.is_symlink()):
                relative = path.relative_to(self.folder).as_posix()
                if relative not in listed:
                    raise EdgegenError(f"artifact {self.folder}: {relative} is in the model package but not listed in the manifest's files")

    def verify_files(self) -> None:
        """Fail in one line if a file is missing, truncated, altered since export or outside the folder."""
        self.check_paths()
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
        try:
            inputs = {s.name: tensors[f"input.{s.name}"] for s in self.manifest.eager_inputs}
            outputs = {s.name: tensors[f"output.{s.name}"] for s in self.manifest.eager_outputs}
        except KeyError as error:
            raise EdgegenError(f"reference tensors {path} have no tensor {error.args[0]}") from None
        return inputs, outputs


def write_manifest(folder: Path, manifest: ArtifactManifest) -> None:
    write_json(folder / MANIFEST_FILENAME, manifest)


def load_artifact(folder: Path, verify: bool = True) -> Artifact:
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgegenError(f"artifact folder not found: {folder}")
    manifest = load_strict_json(
        folder / MANIFEST_FILENAME, ArtifactManifest, ARTIFACT_SCHEMA_VERSION, "artifact manifest", migrations=MANIFEST_MIGRATIONS
    )
    artifact = Artifact(folder=folder, manifest=manifest)
    if verify:
        artifact.verify_files()
    else:
        artifact.check_paths()
    return artifact
