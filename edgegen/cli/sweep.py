"""`edgegen sweep`: placeholder being written now (owned by one helper)."""

from edgegen.errors import EdgegenError


def sweep_command() -> None:
    """(in progress)"""
    raise EdgegenError("edgegen sweep is being written")
