"""Console helpers shared by the commands: quiet toolchains, rich tables, JSON output."""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import subprocess
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


# Native toolchain logs honour these only if set before the library loads (and in every child
# process): TensorFlow's logger inside LiteRT's converter and glog. Level 1 drops INFO, keeps
# warnings and errors.
NATIVE_LOG_ENV = {"TF_CPP_MIN_LOG_LEVEL": "1", "GLOG_minloglevel": "1"}

# Lines native code writes straight to file descriptor 2, past Python's logging and warnings and
# past NATIVE_LOG_ENV, so ``quiet()`` cannot reach them. Each pattern matches a whole line.
TOOLCHAIN_NOISE = re.compile(
    "|".join(
        (
            # ExecuTorch's runtime logs at info level on every program load (release builds too).
            r"\[(?:cpuinfo_utils|threadpool)\.cpp:\d+\] .*",
            # absl-logged INFO lines (LiteRT's converter, oneDNN) and absl's pre-init notice.
            r"I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.+-]+:\d+\] .*",
            r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
            # LiteRT's interpreter, on each interpreter with its default delegate.
            r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.",
        )
    )
)


def is_toolchain_noise(line: str) -> bool:
    return TOOLCHAIN_NOISE.fullmatch(line.rstrip("\r\n")) is not None


def without_toolchain_noise(text: str) -> list[str]:
    """The non-blank lines of a child process's captured stderr that are not toolchain noise."""
    return [line for line in text.splitlines() if line.strip() and not is_toolchain_noise(line)]


# The filter is a separate process, not a thread: if the command crashes or aborts, the filter
# still reads to the end of the pipe, so its last words (the real error) reach the terminal.
# It ignores Ctrl-C for the same reason, and ends when every writer of the pipe has closed it.
# absl ends some messages with their own newline: the blank line after a dropped one goes too.
_FILTER_PROGRAM = """
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
noise = re.compile(sys.argv[1].encode())
out = sys.stdout.buffer
dropped = False
for line in sys.stdin.buffer:
    text = line.rstrip(b"\\r\\n")
    if noise.fullmatch(text) or (dropped and not text):
        dropped = bool(text)
        continue
    dropped = False
    out.write(line)
    out.flush()
"""
_filter: subprocess.Popen | None = None


def filter_native_noise() -> None:
    """Route this process's fd 2 (and its children's) through a filter that drops TOOLCHAIN_NOISE.

    For the CLI's entry point only, before any toolchain loads; ``EDGEGEN_DEBUG=1`` keeps stderr raw.
    """
    global _filter
    for name, value in NATIVE_LOG_ENV.items():
        os.environ.setdefault(name, value)
    if _filter is not None or os.environ.get("EDGEGEN_DEBUG"):
        return
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    terminal = os.dup(2)
    # -I -S: a bare interpreter starts in milliseconds and ignores the user's environment.
    _filter = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _FILTER_PROGRAM, TOOLCHAIN_NOISE.pattern],
        stdin=read_end,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    atexit.register(_stop_filter, terminal)


def _stop_filter(terminal: int) -> None:
    """Give fd 2 back and wait for the filter to pass on what is left in the pipe."""
    sys.stderr.flush()
    os.dup2(terminal, 2)  # drops our end of the pipe
    os.close(terminal)
    try:
        _filter.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass  # a child process still holds the pipe; the filter serves it until it exits


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
