"""Training data from disk or built in: records, cleaning with a report, and standardisation.

Sources:
- ``builtin:shapes`` (``builtin:shapes?count=4096&seed=0``): the procedural coloured shapes;
- an image folder: ``x.png``/``x.jpg`` with a ``x.txt`` caption (and optionally ``x.wav``);
- a JSONL index: one ``{"image": path, "caption": text, "audio": optional path}`` per line,
  paths relative to the index;
- a folder of WebDataset-style ``.tar`` shards: members ``key.png|jpg``, ``key.txt``, ``key.wav``.

Every record is checked once, before training: unreadable images, images smaller than
``min_image_size``, images larger than PIL's decompression-bomb limit, empty captions, files the
index names but that do not exist, audio that is unreadable, too short or silent are dropped, counted per reason in a ``CleaningReport``. Kept
images are converted to RGB, resized (shorter side) and centre-cropped to ``image_size``, and
normalised to [-1, 1]; captions have their whitespace normalised.
"""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from edgegen.errors import EdgegenError
from edgegen.schema.data import CleaningReport

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_MIN_IMAGE_SIZE = 16
MIN_AUDIO_SECONDS = 0.1
SILENCE_RMS = 1e-3


@dataclass
class Record:
    key: str
    caption: str | None
    image: bytes | Path | None
    audio: bytes | Path | None = None
    missing: str | None = None  # a path the index names that does not exist


def _read(source: bytes | Path) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def _folder_records(folder: Path) -> list[Record]:
    records = []
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        text = image.with_suffix(".txt")
        wav = image.with_suffix(".wav")
        caption = text.read_text(encoding="utf-8", errors="replace") if text.is_file() else None
        records.append(Record(str(image.relative_to(folder)), caption, image, wav if wav.is_file() else None))
    return records


def _jsonl_records(index: Path) -> list[Record]:
    records = []
    for number, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            records.append(Record(f"{index.name}:{number}", None, None, missing="not JSON"))
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            records.append(Record(f"{index.name}:{number}", None, None, missing="no image path"))
            continue
        image = index.parent / entry["image"]
        audio = index.parent / entry["audio"] if isinstance(entry.get("audio"), str) else None
        missing = next((str(p) for p in (image, audio) if p is not None and not p.is_file()), None)
        caption = entry.get("caption") if isinstance(entry.get("caption"), str) else None
        records.append(Record(entry["image"], caption, image, audio, missing=missing))
    return records


def _shard_records(folder: Path) -> list[Record]:
    grouped: dict[str, dict[str, bytes]] = defaultdict(dict)
    for shard in sorted(folder.glob("*.tar")):
        try:
            with tarfile.open(shard) as archive:
                for member in archive.getmembers():
                    if not member.isfile():
                        continue
                    key, _, suffix = member.name.rpartition(".")
                    grouped[f"{shard.name}/{key}"]["." + suffix.lower()] = archive.extractfile(member).read()
        except (tarfile.TarError, OSError):
            grouped[f"{shard.name}/"]["unreadable"] = b""
    records = []
    for key, members in grouped.items():
        if "unreadable" in members:
            records.append(Record(key, None, None, missing="unreadable shard"))
            continue
        image = next((members[s] for s in IMAGE_SUFFIXES if s in members), None)
        caption = members[".txt"].decode("utf-8", errors="replace") if ".txt" in members else None
        records.append(Record(key, caption, image, members.get(".wav")))
    return records


def discover(source: str) -> tuple[str, list[Record]]:
    path = Path(source)
    if not path.exists():
        raise EdgegenError(f"dataset not found: {source}")
    if path.is_file():
        if path.suffix != ".jsonl":
            raise EdgegenError(f"{source} is a file but not a .jsonl index")
        return "jsonl", _jsonl_records(path)
    if (path / "index.jsonl").is_file():
        return "jsonl", _jsonl_records(path / "index.jsonl")
    if any(path.glob("*.tar")):
        return "shards", _shard_records(path)
    return "folder", _folder_records(path)


def standardise_image(data: bytes | Path, image_size: int, min_image_size: int) -> Any:
    """RGB, shorter side resized to ``image_size``, centre crop, float32 3xHxW in [-1, 1]."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from edgegen.data.shapes import to_tensor

    try:
        # A header that claims more pixels than PIL's limit is a decompression bomb: PIL warns
        # (up to twice the limit) or raises, and either would take the whole run with it.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(_read(data))) as image:
                image.load()
                image = image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError("image too large") from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError("unreadable image") from error
    if min(image.size) < min_image_size:
        raise ValueError("image too small")
    scale = image_size / min(image.size)
    width, height = max(image_size, round(image.size[0] * scale)), max(image_size, round(image.size[1] * scale))
    image = image.resize((width, height), Image.BICUBIC)
    left, top = (width - image_size) // 2, (height - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    return to_tensor(np.asarray(image, dtype=np.uint8))


def clean_caption(caption: str | None) -> str:
    return " ".join((caption or "").split())


class RecordsDataset:
    """Kept records, standardised once and held in memory (edge-sized datasets)."""

    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def _builtin(source: str, image_size: int, with_audio: bool) -> tuple[Any, CleaningReport]:
    from edgegen.data.shapes import ShapesDataset

    name, _, query = source[len("builtin:"):].partition("?")
    if name != "shapes":
        raise EdgegenError(f"unknown built-in dataset '{name}'; the built-in one is builtin:shapes")
    options = {key: values[-1] for key, values in parse_qs(query).items()}
    unknown = set(options) - {"count", "seed"}
    if unknown:
        raise EdgegenError(f"builtin:shapes takes count and seed, not {', '.join(sorted(unknown))}")
    try:
        count, seed = int(options.get("count", 4096)), int(options.get("seed", 0))
    except ValueError:
        raise EdgegenError(f"{source}: count and seed must be integers") from None
    if count < 1:
        raise EdgegenError(f"{source}: count must be at least 1")
    dataset = ShapesDataset(count=count, seed=seed, image_size=image_size, with_audio=with_audio)
    return dataset, CleaningReport(source=source, layout="builtin", total=count, kept=count)


def load_training_set(
    source: str | Path,
    image_size: int = 32,
    min_image_size: int = DEFAULT_MIN_IMAGE_SIZE,
    with_audio: bool = False,
) -> tuple[Any, CleaningReport]:
    """A dataset of {"pixel_values", "caption", "attributes"[, "audio_features"]} and its cleaning report."""
    source = str(source)
    if source.startswith("builtin:"):
        return _builtin(source, image_size, with_audio)
    from edgegen.data.audio import AudioError, check_audio, log_mel, read_wav
    from edgegen.data.shapes import parse_caption

    layout, records = discover(source)
    dropped: Counter[str] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    items = []

    def drop(record: Record, reason: str) -> None:
        dropped[reason] += 1
        if len(examples[reason]) < 3:
            examples[reason].append(record.key)

    for record in records:
        if record.missing is not None:
            drop(record, "missing file" if record.image is not None else record.missing)
            continue
        if record.image is None:
            drop(record, "no image")
            continue
        caption = clean_caption(record.caption)
        if not caption:
            drop(record, "empty caption")
            continue
        try:
            pixels = standardise_image(record.image, image_size, min_image_size)
        except ValueError as error:
            drop(record, str(error))
            continue
        item = {"pixel_values": pixels, "caption": caption, "attributes": parse_caption(caption)}
        if with_audio:
            if record.audio is None:
                drop(record, "no audio")
                continue
            try:
                samples, rate = read_wav(_read(record.audio))
                check_audio(samples, rate, MIN_AUDIO_SECONDS, SILENCE_RMS)
                item["audio_features"] = log_mel(samples, rate)
            except AudioError as error:
                drop(record, str(error))
                continue
        items.append(item)
    report = CleaningReport(
        source=source, layout=layout, total=len(records), kept=len(items), dropped=dict(dropped), examples=dict(examples)
    )
    if not items:
        detail = report.summary() if records else "no records found"
        raise EdgegenError(f"no usable records in {source}: {detail}")
    if with_audio:
        frames = {item["audio_features"].shape for item in items}
        if len(frames) > 1:  # static shapes for the encoder: pad or cut to the first record's length
            width = items[0]["audio_features"].shape[-1]
            import torch

            for item in items:
                features = item["audio_features"][..., :width]
                item["audio_features"] = torch.nn.functional.pad(features, (0, width - features.shape[-1]), value=float(features.min()))
    return RecordsDataset(items), report
