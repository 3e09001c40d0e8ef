"""The built-in procedural dataset: coloured shapes with captions that describe them.

Every image is a filled circle, square or triangle of one colour in one quadrant of a dark
background, captioned "a red circle at the top left". It is the embedded default's training
set and the caption-faithfulness probe's, so everything trains offline and deterministically:
item ``i`` of ``ShapesDataset(seed=s)`` is the same on every machine. An optional tone (pitch
encodes the colour) exercises the audio path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
TONE_HZ = {"red": 262.0, "green": 330.0, "blue": 392.0, "yellow": 523.0}
SAMPLE_RATE = 16000
TONE_SECONDS = 0.5


def caption_for(colour: str, shape: str, position: str) -> str:
    return f"a {colour} {shape} at the {position}"


def parse_caption(caption: str) -> dict[str, str] | None:
    """The attributes a caption names, or None if it does not describe one shape of this set."""
    words = " ".join(caption.lower().split())
    found = {
        "colour": [c for c in COLOURS if f" {c} " in f" {words} "],
        "shape": [s for s in SHAPES if f" {s} " in f" {words} "],
        "position": [p for p in POSITIONS if p in words],
    }
    if any(len(values) != 1 for values in found.values()):
        return None
    return {key: values[0] for key, values in found.items()}


def attributes_of(index: int) -> dict[str, str]:
    """The index-th combination, cycling so that every batch sees every attribute."""
    colour = list(COLOURS)[index % len(COLOURS)]
    shape = SHAPES[(index // len(COLOURS)) % len(SHAPES)]
    position = POSITIONS[(index // (len(COLOURS) * len(SHAPES))) % len(POSITIONS)]
    return {"colour": colour, "shape": shape, "position": position}


def render_shape(colour: str, shape: str, position: str, image_size: int = 32, rng: np.random.Generator | None = None) -> np.ndarray:
    """A uint8 HxWx3 image: the shape, about 40% of the side, in its quadrant, with small jitter."""
    rng = rng or np.random.default_rng(0)
    size = image_size
    side = size * rng.uniform(0.34, 0.44)
    half = size / 2
    row = ("bottom" in position) * half + half / 2 + rng.uniform(-1.5, 1.5)
    col = ("right" in position) * half + half / 2 + rng.uniform(-1.5, 1.5)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    if shape == "circle":
        mask = (ys - row) ** 2 + (xs - col) ** 2 <= (side / 2) ** 2
    elif shape == "square":
        mask = (np.abs(ys - row) <= side / 2) & (np.abs(xs - col) <= side / 2)
    elif shape == "triangle":
        # Apex up: the half-width grows linearly from the top edge to the base.
        top, bottom = row - side / 2, row + side / 2
        half_width = (ys - top) / side * (side / 2)
        mask = (ys >= top) & (ys <= bottom) & (np.abs(xs - col) <= half_width)
    else:
        raise ValueError(f"unknown shape {shape}")
    background = rng.uniform(10, 30)
    image = np.full((size, size, 3), background, dtype=np.float64)
    image += rng.normal(0, 2.0, size=image.shape)
    brightness = rng.uniform(0.85, 1.0)
    image[mask] = np.asarray(COLOURS[colour], dtype=np.float64) * brightness
    return np.clip(image, 0, 255).astype(np.uint8)


def tone_for(colour: str, rng: np.random.Generator | None = None, seconds: float = TONE_SECONDS) -> np.ndarray:
    """A mono float32 tone in [-1, 1] at SAMPLE_RATE whose pitch encodes the colour."""
    rng = rng or np.random.default_rng(0)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    amplitude = rng.uniform(0.3, 0.6)
    return (amplitude * np.sin(2 * np.pi * TONE_HZ[colour] * t)).astype(np.float32)


def to_tensor(image: np.ndarray) -> Any:
    """uint8 HxWx3 -> float32 3xHxW in [-1, 1]."""
    import torch

    # A copy: images decoded by PIL are read-only arrays, which torch warns about on every call.
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def _sample(seed: int, index: int, image_size: int, with_audio: bool) -> tuple[np.ndarray, str, dict, np.ndarray | None]:
    rng = np.random.default_rng([seed, index])
    attributes = attributes_of(int(rng.integers(0, 1 << 30)))
    image = render_shape(**attributes, image_size=image_size, rng=rng)
    tone = tone_for(attributes["colour"], rng) if with_audio else None
    return image, caption_for(**attributes), attributes, tone


class ShapesDataset:
    """``count`` captioned shape images; item ``i`` depends only on (seed, i)."""

    def __init__(self, count: int, seed: int = 0, image_size: int = 32, with_audio: bool = False):
        if count < 1:
            raise ValueError("count must be at least 1")
        self.count, self.seed, self.image_size, self.with_audio = count, seed, image_size, with_audio

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        image, caption, attributes, tone = _sample(self.seed, index, self.image_size, self.with_audio)
        item = {"pixel_values": to_tensor(image), "caption": caption, "attributes": attributes}
        if tone is not None:
            from edgegen.data.audio import log_mel

            item["audio_features"] = log_mel(tone, SAMPLE_RATE)
        return item


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    import wave

    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.tobytes())


def write_shapes_dataset(folder: Path, count: int, seed: int = 0, layout: str = "folder", with_audio: bool = False, image_size: int = 32, force: bool = False) -> Path:
    """Write the dataset to disk as an image folder, a JSONL index or WebDataset-style shards."""
    import io
    import json
    import tarfile

    from PIL import Image

    from edgegen.artifact import atomic_folder
    from edgegen.errors import EdgegenError

    if layout not in ("folder", "jsonl", "shards"):
        raise EdgegenError(f"unknown layout '{layout}'; choose folder, jsonl or shards")
    if count < 1:
        raise EdgegenError("--count must be at least 1")
    with atomic_folder(Path(folder), force=force) as staging:
        index_lines, shard, shard_size = [], None, 64
        for i in range(count):
            image, caption, _, tone = _sample(seed, i, image_size, with_audio)
            key = f"{i:06d}"
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")
            wav = None
            if tone is not None:
                wav_path = staging / f"{key}.wav.tmp"
                write_wav(wav_path, tone)
                wav = wav_path.read_bytes()
                wav_path.unlink()
            if layout == "shards":
                if i % shard_size == 0:
                    if shard is not None:
                        shard.close()
                    shard = tarfile.open(staging / f"shard-{i // shard_size:05d}.tar", "w")
                members = [(f"{key}.png", png.getvalue()), (f"{key}.txt", caption.encode())]
                if wav is not None:
                    members.append((f"{key}.wav", wav))
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    shard.addfile(info, io.BytesIO(data))
                continue
            sub = staging / "images" if layout == "jsonl" else staging
            sub.mkdir(exist_ok=True)
            (sub / f"{key}.png").write_bytes(png.getvalue())
            if wav is not None:
                (sub / f"{key}.wav").write_bytes(wav)
            if layout == "folder":
                (sub / f"{key}.txt").write_text(caption + "\n", encoding="utf-8")
            else:
                record = {"image": f"images/{key}.png", "caption": caption}
                if wav is not None:
                    record["audio"] = f"images/{key}.wav"
                index_lines.append(json.dumps(record))
        if shard is not None:
            shard.close()
        if layout == "jsonl":
            (staging / "index.jsonl").write_text("\n".join(index_lines) + "\n", encoding="utf-8")
    return Path(folder)
