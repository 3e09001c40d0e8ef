"""Remote profiling fails in one line when the device is wrong or does not answer."""

import pytest

from edgegen.errors import EdgegenError
from edgegen.measure.remote import parse_device, profile_on_device


def test_device_address_forms():
    assert parse_device("ssh://nvidia@jetson") == "nvidia@jetson"
    assert parse_device("ssh:pi@10.0.0.2") == "pi@10.0.0.2"
    with pytest.raises(EdgegenError, match="unsupported device address 'adb:1234'"):
        parse_device("adb:1234")


def test_device_that_does_not_answer(exported, monkeypatch, tmp_path):
    # A fake ssh on PATH that fails the way an unreachable host does.
    fake = tmp_path / "ssh"
    fake.write_text("#!/bin/sh\necho 'ssh: connect to host jetson port 22: Connection refused' >&2\nexit 255\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    artifact = exported("text_encoder", "onnx")
    with pytest.raises(EdgegenError, match="device nvidia@jetson failed: ssh: connect to host jetson port 22: Connection refused"):
        profile_on_device(artifact.folder, "ssh://nvidia@jetson", warmup=1, runs=1, threads=1)
