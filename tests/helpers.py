"""Which export targets a test may run on: every registered one, decided per case.

Cases come from the registry, never from what happens to be installed: a target whose toolchain
pyproject pins in an extra fails loudly when that toolchain is missing or broken; only a target
this host cannot run at all (Core ML prediction off macOS) skips, with the runtime's reason.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pinned_packages(target: str) -> list[str]:
    """Distribution names pinned in pyproject's optional extra named like the target."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["optional-dependencies"].get(target, [])
    return [re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0] for requirement in requirements]


def require_export(target: str) -> None:
    """Fail the test when the target's pinned toolchain is not installed or its exporter refuses."""
    from edgegen.registry import EXPORTERS
    from edgegen.versions import package_version

    missing = [name for name in pinned_packages(target) if package_version(name) is None]
    if missing:
        pytest.fail(f"{target}: {', '.join(missing)} pinned in pyproject's [{target}] extra but not installed", pytrace=False)
    reason = EXPORTERS.get(target).unavailable_reason()
    if reason:
        pytest.fail(f"{target}: the toolchain is pinned but the exporter says: {reason}", pytrace=False)


def require_runtime(target: str) -> None:
    """``require_export``, then skip (with the reason) only if this host cannot run the target.

    A runtime that refuses although its pinned toolchain is installed and imports is a platform
    limit (Core ML prediction needs macOS); a toolchain that fails to import fails the test.
    """
    from edgegen.registry import RUNTIMES

    require_export(target)
    runtime = RUNTIMES.get(target)
    reason = runtime.unavailable_reason()
    if reason is None:
        return
    try:
        runtime.import_toolchain()
    except Exception as error:  # any import failure of a pinned toolchain is the finding
        pytest.fail(f"{target}: {reason}; importing its runtime failed: {type(error).__name__}: {error}", pytrace=False)
    pytest.skip(f"{target}: {reason}")


def on_numpy(module):
    """An eager module as a bundle consumer's port calls a graph: numpy arrays in, numpy out (a
    tuple for several outputs), without gradients."""
    import numpy as np
    import torch

    def call(*arrays):
        with torch.no_grad():
            result = module(*(torch.from_numpy(np.asarray(a)) for a in arrays))
        return tuple(each.numpy() for each in result) if isinstance(result, tuple) else result.numpy()

    return call
