"""Remote profiling fails in one line when the device is wrong or does not answer.

A device string never reaches ssh or scp as an option: it is parsed strictly, and the command
lines put ``--`` before their operands. A measuring process that dies says how and why.
"""

import os
import re
import shlex
import shutil
import textwrap
from pathlib import Path

import pytest

from edgegen.errors import EdgegenError
from edgegen.measure.profiling import run_fresh_process
from edgegen.measure.remote import Device, parse_device, profile_on_device, scp_command, ssh_command


def test_device_address_forms():
    assert parse_device("ssh://nvidia@jetson") == Device(host="jetson", user="nvidia")
    assert parse_device("ssh:pi@10.0.0.2") == Device(host="10.0.0.2", user="pi")
    assert str(parse_device("ssh://nvidia@jetson")) == "nvidia@jetson"
    with pytest.raises(EdgegenError, match="unsupported device address 'adb:1234'"):
        parse_device("adb:1234")


@pytest.mark.parametrize(
    ("address", "device"),
    [
        ("ssh://jetson", Device(host="jetson")),
        ("ssh://nvidia@jetson", Device(host="jetson", user="nvidia")),
        ("ssh://nvidia@jetson:2222", Device(host="jetson", user="nvidia", port=2222)),
        ("ssh://10.0.0.5", Device(host="10.0.0.5")),
        ("ssh://[::1]:22", Device(host="::1", port=22)),
        ("ssh://root@[fe80::1%eth0]", Device(host="fe80::1%eth0", user="root")),
        ("ssh://jetson-orin.local", Device(host="jetson-orin.local")),
        ("ssh://my_board", Device(host="my_board")),  # an ssh config alias
        ("ssh://first.last@board:65535", Device(host="board", user="first.last", port=65535)),
    ],
)
def test_valid_device_addresses_parse_into_their_parts(address, device):
    assert parse_device(address) == device


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("ssh://-oProxyCommand=touch /tmp/pwned", "the host may not start with '-'"),
        ("ssh:-oProxyCommand=x", "the host may not start with '-'"),
        ("ssh://user@-oProxyCommand=x", "the host may not start with '-'"),
        ("ssh://-luser@host", "the user may not start with '-'"),
        ("ssh://-p", "the host may not start with '-'"),
        ("ssh://host name", "not ' '"),
        ("ssh://host;reboot", "not ';'"),
        ("ssh://$(reboot)", "not '$'"),
        ("ssh://`reboot`", "not '`'"),
        ("ssh://user name@host", "the user may contain only"),
        ("ssh://host\nx", r"not '\n'"),
        ("ssh://hôst", "not 'ô'"),
        ("ssh://ùser@host", "the user may contain only"),
        ("ssh://", "no host"),
        ("ssh:", "no host"),
        ("ssh://user@", "the host is empty"),
        ("ssh://@host", "the user is empty"),
        ("ssh://a@b@c", "more than one '@'"),
        ("ssh://host:0", "the port must be a number from 1 to 65535, not '0'"),
        ("ssh://host:70000", "not '70000'"),
        ("ssh://host:x", "not 'x'"),
        ("ssh://host:", "not ''"),
        ("ssh://host:-22", "not '-22'"),
        ("ssh://host:２２", "not '２２'"),  # full-width digits are digits to str.isdigit, not to ssh
        ("ssh://::1", "an IPv6 address goes in brackets"),
        ("ssh://[::1", "needs its closing ']'"),
        ("ssh://[::1]x", "after the IPv6 address"),
        ("ssh://[not-ipv6]", "is not an IPv6 address"),
        ("ssh://[-oProxyCommand=x]", "is not an IPv6 address"),
        ("ssh://[fe80::1%$(id)]", "the IPv6 zone may contain only"),
        ("ssh://" + "a" * 300, "longer than 253 characters"),
        ("ssh//host", "unsupported device address"),
        ("host", "unsupported device address"),
    ],
)
def test_hostile_and_malformed_addresses_are_refused_in_one_line(address, says):
    with pytest.raises(EdgegenError) as refused:
        parse_device(address)
    message = str(refused.value)
    assert says in message
    assert "\n" not in message and len(message) < 250


@pytest.mark.parametrize("address", ["ssh://jetson", "ssh://nvidia@jetson:2222", "ssh://[::1]:22", "ssh://pi@[fe80::1%usb0]"])
def test_ssh_and_scp_command_lines_end_options_before_their_operands(address, tmp_path, monkeypatch):
    device = parse_device(address)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-rf").mkdir()  # a folder whose relative name would read as an option
    ssh = ssh_command(device, "-oProxyCommand=x uname")
    scp = scp_command(device, Path("-rf"), "/tmp/edgegen-artifacts/x")
    # ssh: options, --, destination, the remote command (ssh reads no option after '--').
    assert ssh.count("--") == 1 and ssh.index("--") == len(ssh) - 3 and not ssh[-2].startswith("-")
    # scp: options, --, source, target.
    assert scp.count("--") == 1 and scp.index("--") == len(scp) - 3
    assert not scp[-2].startswith("-") and not scp[-1].startswith("-")
    for argv, flag in ((ssh, "-p"), (scp, "-P")):
        if device.port:
            at = argv.index(flag)
            assert argv[at + 1] == str(device.port) and at < argv.index("--")
        else:
            assert flag not in argv
    ssh = ssh_command(device, "uname -sm")
    assert ssh[-2] == (f"{device.user}@{device.host}" if device.user else device.host)
    scp = scp_command(device, Path("-rf"), "/tmp/x")
    assert scp[-2] == str(tmp_path / "-rf")  # absolute: neither an option nor host:path
    host = f"[{device.host}]" if ":" in device.host else device.host
    assert scp[-1] == (f"{device.user}@" if device.user else "") + f"{host}:/tmp/x"


def test_remote_command_quotes_the_python_path_and_the_folder(exported, monkeypatch, tmp_path):
    # A fake ssh and scp that record their argv one argument per line and succeed.
    log = tmp_path / "argv.log"
    for name in ("ssh", "scp"):
        fake = tmp_path / "bin" / name
        fake.parent.mkdir(exist_ok=True)
        fake.write_text(f"#!/bin/sh\necho {name} >> {log}\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> {log}; done\necho === >> {log}\n")
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    hostile = tmp_path / "-rf $(reboot);x"  # an artifact folder whose name is shell and option syntax
    shutil.copytree(exported("text_encoder", "onnx").folder, hostile)
    with pytest.raises(EdgegenError, match="printed no result"):
        profile_on_device(hostile, "ssh://nvidia@jetson:2222", warmup=1, runs=2, threads=1, python="/opt/my python/bin/python3")
    calls = [call.strip("\n").split("\n") for call in log.read_text().split("===\n") if call.strip()]
    assert [call[0] for call in calls] == ["ssh", "ssh", "scp", "ssh"]  # check, prepare, copy, profile
    remote_command = calls[-1][-1]
    assert remote_command.startswith("'/opt/my python/bin/python3' -m edgegen.measure.profiling /tmp/edgegen-artifacts/")
    assert remote_command.endswith("--warmup 1 --runs 2 --threads 1")
    remote_folder = shlex.split(remote_command)[3]
    assert re.fullmatch(r"/tmp/edgegen-artifacts/-rf___reboot__x-[0-9a-f]{12}", remote_folder)
    assert calls[2][-2:] == [str(hostile), f"nvidia@jetson:{remote_folder}"]  # scp's source and target
    for call in calls:
        assert call[call.index("--") - 2 : call.index("--")] in (["-p", "2222"], ["-P", "2222"])


def test_bad_counts_and_python_are_refused_before_ssh(exported, tmp_path):
    artifact = exported("text_encoder", "onnx")
    for kwargs, says in (
        (dict(runs=0), "--runs must be at least 1"),
        (dict(threads=0), "--threads must be at least 1"),
        (dict(python="-c"), "the device's python"),
    ):
        arguments = dict(warmup=1, runs=1, threads=1) | kwargs
        with pytest.raises(EdgegenError, match=says):
            profile_on_device(artifact.folder, "ssh://nvidia@jetson", **arguments)


def test_device_that_does_not_answer(exported, monkeypatch, tmp_path):
    # A fake ssh on PATH that fails the way an unreachable host does.
    fake = tmp_path / "ssh"
    fake.write_text("#!/bin/sh\necho 'ssh: connect to host jetson port 22: Connection refused' >&2\nexit 255\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    artifact = exported("text_encoder", "onnx")
    with pytest.raises(EdgegenError, match="device nvidia@jetson failed: ssh: connect to host jetson port 22: Connection refused"):
        profile_on_device(artifact.folder, "ssh://nvidia@jetson", warmup=1, runs=1, threads=1)


# -- a measuring process that dies says how, and its last words --------------------------------


@pytest.fixture
def child_module(tmp_path, monkeypatch):
    """Write ``python -m <name>``'s code into a module the fresh process can import."""

    def write(name: str, code: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(code))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
        return name

    return write


def test_a_child_that_exits_nonzero_says_its_code_and_last_stderr_line(child_module):
    module = child_module(
        "exits_three",
        """
        import sys
        print("I0101 12:00:00.000000  123 cpuinfo.cc:42] toolchain noise", file=sys.stderr)
        print("loading the model", file=sys.stderr)
        print("the model file is not a valid flatbuffer", file=sys.stderr)
        print("[cpuinfo_utils.cpp:71] more toolchain noise", file=sys.stderr)
        sys.exit(3)
        """,
    )
    with pytest.raises(EdgegenError) as failed:
        run_fresh_process(module, [], threads=1)
    assert str(failed.value) == f"python -m {module} exited with code 3: the model file is not a valid flatbuffer"


def test_a_child_killed_by_a_signal_names_it(child_module):
    module = child_module("killed", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    with pytest.raises(EdgegenError) as failed:
        run_fresh_process(module, [], threads=1)
    assert str(failed.value) == f"python -m {module} killed by SIGKILL (out of memory?): nothing on stderr"


def test_a_child_that_crashes_with_a_traceback_gives_the_exception_line(child_module):
    module = child_module("raises", "raise RuntimeError('bad tensor shape [1, 4]')\n")
    with pytest.raises(EdgegenError, match=r"exited with code 1: RuntimeError: bad tensor shape \[1, 4\]$"):
        run_fresh_process(module, [], threads=1)


def test_a_child_error_line_still_becomes_ours(child_module):
    module = child_module("refuses", "import sys\nprint('error: cannot profile x here: no runtime', file=sys.stderr)\nsys.exit(2)\n")
    with pytest.raises(EdgegenError) as failed:
        run_fresh_process(module, [], threads=1)
    assert str(failed.value) == "cannot profile x here: no runtime"


def test_a_child_past_its_timeout_names_the_timeout(child_module):
    module = child_module("sleeps", "import time\ntime.sleep(60)\n")
    with pytest.raises(EdgegenError) as failed:
        run_fresh_process(module, [], threads=1, timeout_s=1)
    assert str(failed.value) == f"python -m {module} did not finish within 1 s and was stopped"
