"""`edgegen report`: placeholder being written now (owned by one helper)."""

from edgegen.errors import EdgegenError


def report_command() -> None:
    """(in progress)"""
    raise EdgegenError("edgegen report is being written")
