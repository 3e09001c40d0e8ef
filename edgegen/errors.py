"""The one exception type a user sees: a one-line message and exit code 2 from the CLI."""

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path


class EdgegenError(Exception):
    """Bad input or an unusable environment, described in one line for the user."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first meaningful line of a toolchain's error, for wrapping into an EdgegenError."""
    text = str(error).strip() or type(error).__name__
    line = next((part.strip() for part in text.splitlines() if part.strip()), text)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe_os_error(error: OSError, path: object = None) -> str:
    """An I/O error as ``<file>: <reason>``, naming the file the error carries (or ``path``)."""
    reason = error.strerror or first_line(error)
    filename = error.filename if error.filename is not None else path
    if filename is None:
        return reason
    if error.errno in (errno.EEXIST, errno.ENOTDIR):
        # mkdir onto a file, or through one: name the file in the way
        for candidate in (Path(os.fsdecode(filename)), *Path(os.fsdecode(filename)).parents):
            if candidate.is_file():
                return f"{candidate} is a file, not a folder"
    if error.filename2 is not None:
        return f"{filename} -> {error.filename2}: {reason}"
    return f"{filename}: {reason}"


@contextlib.contextmanager
def writing(path: object) -> Iterator[None]:
    """Name ``path`` in an I/O error raised while it is written (a write after the open carries no name)."""
    try:
        yield
    except OSError as error:
        raise EdgegenError(f"cannot write {path}: {error.strerror or first_line(error)}") from None
