"""One results schema shared by ``profile``, ``compare``, the demo and device_tests."""

from __future__ import annotations

from typing import Literal

from edgegen.schema.base import StrictModel

RESULTS_SCHEMA_VERSION = 1


class Host(StrictModel):
    platform: str
    machine: str
    python: str
    cpu_count: int
    threads: int


class Latency(StrictModel):
    warmup_runs: int
    timed_runs: int
    load_ms: float
    p50_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float


class Memory(StrictModel):
    """Peak resident memory of a fresh process (one artifact, or a whole pipeline with every
    component resident); the baseline is after importing the runtimes only."""

    baseline_rss_mb: float
    peak_rss_mb: float
    added_mb: float


class Quality(StrictModel):
    reference: str  # what the artifact was compared against, e.g. "teacher eager"
    psnr_db: float
    max_abs_error: float
    cosine: float
    same_checkpoint: bool


class Result(StrictModel):
    schema_version: int = RESULTS_SCHEMA_VERSION
    kind: Literal["profile", "compare"]
    artifact_dir: str
    target: str
    backend: str | None
    component: str
    quantization: str
    runtime: str
    host: Host
    latency: Latency | None = None
    memory: Memory | None = None
    quality: Quality | None = None
