"""Profile an artifact on a remote device over ssh (a Jetson, a Linux phone or board).

The device needs Python and edgegen with the artifact's runtime installed. The artifact folder
is copied over with scp, ``python -m edgegen.measure.profiling`` runs there, and its one-line result
JSON (the same schema as local profiling) comes back. A device that does not answer within
the timeout is one clear error, never a hang.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from edgegen.artifact import load_artifact
from edgegen.errors import EdgegenError
from edgegen.terminal import without_toolchain_noise
from edgegen.measure.profiling import profiling_arguments, result_line
from edgegen.schema.results import Result

CONNECT_TIMEOUT_S = 10
REMOTE_DIR = "/tmp/edgegen-artifacts"


def parse_device(address: str) -> str:
    """``ssh://user@host`` or ``ssh:user@host`` -> ``user@host``."""
    for prefix in ("ssh://", "ssh:"):
        if address.startswith(prefix) and len(address) > len(prefix):
            return address[len(prefix):]
    raise EdgegenError(f"unsupported device address '{address}'; use ssh://user@host")


def _ssh_options() -> list[str]:
    return ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]


def _run(command: list[str], what: str, timeout_s: float) -> str:
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise EdgegenError(f"{command[0]} is not installed on this machine") from None
    except subprocess.TimeoutExpired:
        raise EdgegenError(f"{what} did not finish within {timeout_s:.0f} s") from None
    if completed.returncode != 0:
        lines = without_toolchain_noise(completed.stderr)  # a crash's last line, not a C++ log line
        detail = lines[-1] if lines else f"exit code {completed.returncode}"
        raise EdgegenError(f"{what} failed: {detail.removeprefix('error: ')}")
    return completed.stdout


def check_device(host: str) -> str:
    """The device's platform string, or a one-line error if it does not answer."""
    return _run(["ssh", *_ssh_options(), host, "uname -sm"], f"device {host}", CONNECT_TIMEOUT_S + 5).strip()


def profile_on_device(artifact_dir: Path, address: str, warmup: int, runs: int, threads: int, python: str = "python3", timeout_s: float = 600) -> Result:
    host = parse_device(address)
    artifact = load_artifact(artifact_dir)
    check_device(host)
    remote = f"{REMOTE_DIR}/{artifact.folder.name}-{artifact.manifest.files[0].sha256[:12]}"
    _run(["ssh", *_ssh_options(), host, f"mkdir -p {shlex.quote(REMOTE_DIR)} && rm -rf {shlex.quote(remote)}"], f"preparing {host}", 60)
    _run(["scp", "-q", "-r", *_ssh_options(), str(artifact.folder), f"{host}:{remote}"], f"copying to {host}", timeout_s)
    command = shlex.join([python, "-m", "edgegen.measure.profiling", *profiling_arguments(remote, warmup, runs, threads)])
    output = _run(["ssh", *_ssh_options(), host, command], f"profiling on {host}", timeout_s)
    return Result.model_validate_json(result_line(output, f"profiling on {host}"))
