"""Profile an artifact on a remote device over ssh (a Jetson, a Linux phone or board).

The device needs Python and edgegen with the artifact's runtime installed. The artifact folder
is copied over with scp, ``python -m edgegen.measure.profiling`` runs there, and its one-line result
JSON (the same schema as local profiling) comes back. A device that does not answer within
the timeout is one clear error, never a hang.

A device string is user input that ends up on ssh's and scp's command lines, so it is parsed
strictly (``ssh://[user@]host[:port]``) and never reaches them as an option: every name starts
with a letter, digit, '.' or '_', the port goes after ``-p``/``-P``, and ``--`` ends the options
before the operands. Nothing local goes through a shell; the one command string ssh hands to the
remote shell quotes every part.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgegen.artifact import load_artifact
from edgegen.errors import EdgegenError
from edgegen.terminal import without_toolchain_noise
from edgegen.measure.profiling import check_counts, profiling_arguments, result_line
from edgegen.schema.results import Result

CONNECT_TIMEOUT_S = 10
REMOTE_DIR = "/tmp/edgegen-artifacts"
FORM = "ssh://[user@]host[:port]"

# A user name, or a host: a DNS name, an IPv4 address or an ssh config alias. Not starting with
# '-' (it would be an option) is checked first, for a message that says so.
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_ZONE = re.compile(r"[A-Za-z0-9._-]+")  # an IPv6 zone, as in fe80::1%eth0
_PORT = re.compile(r"[0-9]{1,5}")
_MAX_HOST = 253  # the longest DNS name


@dataclass(frozen=True)
class Device:
    """Where ssh connects; every part already checked by ``parse_device``."""

    host: str  # an IPv6 address without its brackets
    user: str | None = None
    port: int | None = None

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def destination(self) -> str:
        """ssh's destination operand: ``[user@]host`` (ssh takes an IPv6 address bare)."""
        return f"{self.user}@{self.host}" if self.user else self.host

    def remote_path(self, path: str) -> str:
        """scp's remote operand: ``[user@]host:path``, an IPv6 address in brackets."""
        host = f"[{self.host}]" if self.is_ipv6 else self.host
        return f"{self.user + '@' if self.user else ''}{host}:{path}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.is_ipv6 and self.port else self.host
        return f"{self.user + '@' if self.user else ''}{host}{f':{self.port}' if self.port else ''}"


def _shown(text: str, limit: int = 80) -> str:
    """User text quoted on one line: control characters escaped, a long one cut short."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _check_name(name: str, what: str) -> str | None:
    """Why ``name`` is not a valid user or host, or None."""
    if not name:
        return f"the {what} is empty"
    if name.startswith("-"):
        return f"the {what} may not start with '-'"
    if not _NAME.fullmatch(name):
        bad = next(char for char in name if not _NAME.fullmatch(char))
        return f"the {what} may contain only letters, digits, '.', '_' and '-', not {_shown(bad)}"
    return None


def _check_ipv6(literal: str) -> str | None:
    address, _, zone = literal.partition("%")
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return f"{_shown(literal)} is not an IPv6 address"
    if "%" in literal and not _ZONE.fullmatch(zone):
        return f"the IPv6 zone may contain only letters, digits, '.', '_' and '-', not {_shown(zone)}"
    return None


def parse_device(address: str) -> Device:
    """``ssh://[user@]host[:port]`` (or ``ssh:...``) -> a Device; anything else is refused in one line."""
    prefix = next((prefix for prefix in ("ssh://", "ssh:") if address.startswith(prefix)), None)
    if prefix is None:
        raise EdgegenError(f"unsupported device address {_shown(address)}; use {FORM}")

    def refuse(problem: str) -> EdgegenError:
        return EdgegenError(f"device address {_shown(address)}: {problem} (use {FORM})")

    rest = address[len(prefix):]
    if not rest:
        raise refuse("no host")
    if rest.count("@") > 1:
        raise refuse("more than one '@'")
    user, _, host_port = rest.rpartition("@") if "@" in rest else (None, "", rest)
    if user is not None and (problem := _check_name(user, "user")):
        raise refuse(problem)

    port_text: str | None = None
    if host_port.startswith("["):
        host, bracket, after = host_port[1:].partition("]")
        if not bracket:
            raise refuse("an IPv6 address needs its closing ']'")
        if after and not after.startswith(":"):
            raise refuse(f"unexpected {_shown(after)} after the IPv6 address")
        port_text = after[1:] if after else None
        if problem := _check_ipv6(host):
            raise refuse(problem)
    else:
        if host_port.count(":") > 1:
            raise refuse("an IPv6 address goes in brackets, e.g. ssh://[::1]:22")
        host, colon, port = host_port.partition(":")
        port_text = port if colon else None
        if problem := _check_name(host, "host"):
            raise refuse(problem)
        if len(host) > _MAX_HOST:
            raise refuse(f"the host is longer than {_MAX_HOST} characters")

    port: int | None = None
    if port_text is not None:
        if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise refuse(f"the port must be a number from 1 to 65535, not {_shown(port_text)}")
        port = int(port_text)
    return Device(host=host, user=user, port=port)


def _ssh_options() -> list[str]:
    return ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]


def ssh_command(device: Device, remote_command: str) -> list[str]:
    """The argv that runs ``remote_command`` (already quoted for the remote shell) on ``device``."""
    port = ["-p", str(device.port)] if device.port else []
    return ["ssh", *_ssh_options(), *port, "--", device.destination(), remote_command]


def scp_command(device: Device, local_folder: Path, remote_path: str) -> list[str]:
    """The argv that copies ``local_folder`` to ``remote_path`` on ``device``.

    The local operand is absolute: a relative one could start with '-' or read as ``host:path``.
    """
    port = ["-P", str(device.port)] if device.port else []
    return ["scp", "-q", "-r", *_ssh_options(), *port, "--", str(Path(local_folder).resolve()), device.remote_path(remote_path)]


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


def check_device(device: Device) -> str:
    """The device's platform string, or a one-line error if it does not answer."""
    return _run(ssh_command(device, "uname -sm"), f"device {device}", CONNECT_TIMEOUT_S + 5).strip()


def _remote_folder(artifact) -> str:
    """Where the artifact goes on the device: its folder's name, made shell- and option-safe, and its hash."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(artifact.folder).resolve().name)
    return f"{REMOTE_DIR}/{name}-{artifact.manifest.files[0].sha256[:12]}"


def profile_on_device(artifact_dir: Path, address: str, warmup: int, runs: int, threads: int, python: str = "python3", timeout_s: float = 600) -> Result:
    device = parse_device(address)
    check_counts(warmup, runs)
    if threads < 1:
        raise EdgegenError("--threads must be at least 1")
    if not python or python.startswith("-"):
        raise EdgegenError(f"the device's python must be a program name or path, not {_shown(python)}")
    artifact = load_artifact(artifact_dir)
    check_device(device)
    remote = _remote_folder(artifact)
    _run(ssh_command(device, f"mkdir -p {shlex.quote(REMOTE_DIR)} && rm -rf {shlex.quote(remote)}"), f"preparing {device}", 60)
    _run(scp_command(device, artifact.folder, remote), f"copying to {device}", timeout_s)
    command = shlex.join([python, "-m", "edgegen.measure.profiling", *profiling_arguments(remote, int(warmup), int(runs), int(threads))])
    output = _run(ssh_command(device, command), f"profiling on {device}", timeout_s)
    return Result.model_validate_json(result_line(output, f"profiling on {device}"))
