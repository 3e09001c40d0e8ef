"""Console helpers shared by the commands: quiet toolchains, rich tables, JSON output."""

from __future__ import annotations

import json
import logging
import math
import sys
import warnings
from typing import Any

from rich.console import Console

# Tables are wide; when the output is a file or a pipe, do not squeeze them to 80 columns.
console = Console() if sys.stdout.isatty() else Console(width=160)

_NOISY_LOGGERS = ("torchao", "coremltools", "torch.onnx", "torch._export", "torch.export", "executorch", "root")


def quiet() -> None:
    """Keep toolchains' info logs, warnings and progress bars out of the command's output."""
    warnings.filterwarnings("ignore")
    # Converters (coremltools, executorch) set their loggers to INFO on import.
    logging.disable(logging.WARNING)
    from edgegen.families.loading import quiet_toolchains

    quiet_toolchains()
    import torch._logging

    # torch configures its loggers at import; only its own switch quiets them afterwards.
    torch._logging.set_logs(all=logging.ERROR)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def print_json(payload: Any) -> None:
    # Plain print: rich would wrap long lines and break the JSON.
    print(json.dumps(payload, indent=2))


def fmt_db(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.1f}"


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_kb(size: int) -> str:
    return f"{size / 1024:.0f}"
