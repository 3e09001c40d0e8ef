"""Which registered targets this machine can export to and run, and each target's int8 scheme.

The demo, the sweep, the benchmarks and the tests ask here, so "usable here" means one thing.
"""

from __future__ import annotations


def exportable_targets() -> list[str]:
    """Registered targets whose exporter's toolchain is installed here."""
    from edgegen.registry import EXPORTERS

    return [name for name in EXPORTERS.names() if EXPORTERS.get(name).unavailable_reason() is None]


def usable_targets() -> list[str]:
    """Targets this machine can both export to and run (some runtime of the target runs here)."""
    from edgegen.session import runtimes_of

    return [name for name in exportable_targets() if any(runtime.unavailable_reason() is None for runtime in runtimes_of(name))]


def int8_scheme(target: str) -> str | None:
    """The target's full int8 scheme, else its first int8 variant (e.g. weight-only)."""
    from edgegen.registry import EXPORTERS

    schemes = EXPORTERS.get(target).quantizations
    if "int8" in schemes:
        return "int8"
    return next((s for s in schemes if s.startswith("int8")), None)
