"""Device tests run only against a real device named by EDGEGEN_DEVICE (e.g. ssh://nvidia@jetson).

They are never collected by the default test run (pytest's testpaths is tests/); run them with
``.venv/bin/python -m pytest device_tests``. Without a device that answers, each test skips
with the reason.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def device_address() -> str:
    from edgegen.errors import EdgegenError
    from edgegen.measure.remote import check_device, parse_device

    address = os.environ.get("EDGEGEN_DEVICE")
    if not address:
        pytest.skip("no device attached: set EDGEGEN_DEVICE=ssh://user@host")
    try:
        check_device(parse_device(address))
    except EdgegenError as error:
        pytest.skip(f"device {address} does not answer: {error}")
    return address


@pytest.fixture(scope="session")
def device_artifacts(tmp_path_factory):
    from edgegen.embedded.demo import ensure_default_pipeline
    from edgegen.exporting.orchestration import export_pipeline

    root = tmp_path_factory.mktemp("device")
    pipeline_dir = ensure_default_pipeline(root / "teacher")
    return {target: export_pipeline(pipeline_dir, target, root / "artifacts") for target in ("executorch", "onnx")}
