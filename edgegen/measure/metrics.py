"""Tensor fidelity metrics: PSNR, max absolute error, cosine similarity.

PSNR uses the reference's peak magnitude as the signal level, as Apple's ml-stable-diffusion
parity checks do, so it reads the same for latents, embeddings and images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fidelity:
    psnr_db: float
    max_abs_error: float
    cosine: float


def psnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    mse = float(np.mean((reference - test) ** 2))
    peak = float(np.max(np.abs(reference))) if reference.size else 0.0
    if mse == 0.0:
        return math.inf
    if peak == 0.0:
        return -math.inf
    return 10.0 * math.log10(peak * peak / mse)


def cosine_similarity(reference: np.ndarray, test: np.ndarray) -> float:
    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(test, dtype=np.float64).ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(a, b) / norms)


def fidelity(reference: np.ndarray, test: np.ndarray) -> Fidelity:
    if reference.shape != test.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape} vs test {test.shape}")
    diff = np.abs(np.asarray(reference, np.float64) - np.asarray(test, np.float64))
    return Fidelity(
        psnr_db=psnr_db(reference, test),
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        cosine=cosine_similarity(reference, test),
    )


def worst_fidelity(references: dict[str, np.ndarray], tests: dict[str, np.ndarray]) -> Fidelity:
    """The weakest output decides: lowest PSNR and cosine, largest error over all outputs."""
    scores = [fidelity(references[name], tests[name]) for name in references]
    return Fidelity(
        psnr_db=min(s.psnr_db for s in scores),
        max_abs_error=max(s.max_abs_error for s in scores),
        cosine=min(s.cosine for s in scores),
    )
