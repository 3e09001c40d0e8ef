"""Tiny pipelines of every family, built in code from diffusers' own fast-test configurations.

One module per registered family, each with ``FAMILY`` (the registry name) and ``build(folder)``
(the conformance suite fails for a family without one). The configurations follow
``get_dummy_components`` in diffusers' ``tests/pipelines/<family>/``; the tokenizers are built in
code (``tokenizers.py``), so nothing is downloaded.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path


def _builders() -> dict[str, Callable[[Path], Path]]:
    builders = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        if hasattr(module, "FAMILY"):
            builders[module.FAMILY] = module.build
    return builders


# family registry name -> builder of a tiny pipeline folder of that family
DUMMY_PIPELINES = _builders()
