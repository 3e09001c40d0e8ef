"""Audio to log-mel features: WAV (PCM16, mono or averaged to mono) at 16 kHz.

The mel filterbank is the HTK form: mel(f) = 2595 * log10(1 + f / 700), triangular filters
spaced evenly in mel between 0 Hz and the Nyquist frequency; features are log(mel power + 1e-6)
over a 25 ms Hann window with a 10 ms hop. Other sample rates are refused, not resampled, so a
mismatch is never hidden.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
N_MELS = 32
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms


class AudioError(ValueError):
    """An unreadable or unusable WAV file; the message is the cleaning reason."""


def read_wav(source: Path | bytes) -> tuple[np.ndarray, int]:
    import io

    try:
        handle = wave.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), "rb")
    except (wave.Error, EOFError, OSError) as error:
        raise AudioError("unreadable audio") from error
    with handle:
        if handle.getsampwidth() != 2:
            raise AudioError("unreadable audio")
        frames = handle.readframes(handle.getnframes())
        channels, rate = handle.getnchannels(), handle.getframerate()
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return samples, rate


def mel_filterbank(n_fft: int = WINDOW, n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE) -> Any:
    import torch

    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def to_hz(mel):
        return 700.0 * (10 ** (mel / 2595.0) - 1.0)

    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = to_hz(np.linspace(to_mel(0.0), to_mel(sample_rate / 2), n_mels + 2))
    bank = np.zeros((n_mels, bins.size), dtype=np.float32)
    for i in range(n_mels):
        low, centre, high = edges[i], edges[i + 1], edges[i + 2]
        rising = (bins - low) / max(centre - low, 1e-9)
        falling = (high - bins) / max(high - centre, 1e-9)
        bank[i] = np.clip(np.minimum(rising, falling), 0, None)
    return torch.from_numpy(bank)


def log_mel(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Any:
    """float32 [N_MELS, frames] log-mel features of a mono signal."""
    import torch

    if sample_rate != SAMPLE_RATE:
        raise AudioError(f"sample rate {sample_rate} Hz (expected {SAMPLE_RATE})")
    signal = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    spectrum = torch.stft(signal, n_fft=WINDOW, hop_length=HOP, window=torch.hann_window(WINDOW), return_complex=True, center=True)
    power = spectrum.abs() ** 2
    return torch.log(mel_filterbank() @ power + 1e-6)


def check_audio(samples: np.ndarray, sample_rate: int, min_seconds: float, silence_rms: float) -> None:
    if sample_rate != SAMPLE_RATE:
        raise AudioError("wrong sample rate")
    if samples.size < min_seconds * sample_rate:
        raise AudioError("audio too short")
    if float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) < silence_rms:
        raise AudioError("silent audio")
