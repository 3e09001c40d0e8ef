"""The cleaning report: what a dataset source held, what was kept, what was dropped and why."""

from __future__ import annotations

from edgegen.schema.base import StrictModel

DATA_SCHEMA_VERSION = 1


class CleaningReport(StrictModel):
    schema_version: int = DATA_SCHEMA_VERSION
    source: str
    layout: str  # builtin | folder | jsonl | shards
    total: int
    kept: int
    dropped: dict[str, int] = {}  # reason -> count
    examples: dict[str, list[str]] = {}  # reason -> a few record keys or paths

    def summary(self) -> str:
        return ", ".join(f"{count} {reason}" for reason, count in self.dropped.items()) or "nothing dropped"
