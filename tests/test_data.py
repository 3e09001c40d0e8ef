"""The dataset layer: the built-in shapes, three on-disk layouts, cleaning with reasons, log-mel audio."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from typer.testing import CliRunner

from edgegen.cli import app
from edgegen.data.records import load_training_set
from edgegen.data.shapes import COLOURS, POSITIONS, SHAPES, ShapesDataset, caption_for, parse_caption, write_shapes_dataset
from edgegen.errors import EdgegenError


def test_shapes_are_deterministic_and_captioned():
    a, b = ShapesDataset(8, seed=3), ShapesDataset(8, seed=3)
    for i in range(8):
        assert a[i]["caption"] == b[i]["caption"]
        assert np.array_equal(a[i]["pixel_values"].numpy(), b[i]["pixel_values"].numpy())
        assert parse_caption(a[i]["caption"]) == a[i]["attributes"]
    item = a[0]["pixel_values"]
    assert item.shape == (3, 32, 32) and -1.0 <= float(item.min()) and float(item.max()) <= 1.0
    assert not np.array_equal(ShapesDataset(1, seed=4)[0]["pixel_values"].numpy(), a[0]["pixel_values"].numpy())


def test_every_caption_parses_back():
    for colour in COLOURS:
        for shape in SHAPES:
            for position in POSITIONS:
                caption = caption_for(colour, shape, position)
                assert parse_caption(caption) == {"colour": colour, "shape": shape, "position": position}
    assert parse_caption("a dog on a sofa") is None
    assert parse_caption("a red blue circle at the top left") is None


def test_the_shape_is_drawn_in_its_quadrant():
    item = ShapesDataset(64, seed=0)
    for i in range(16):
        pixels = (item[i]["pixel_values"].numpy() + 1) / 2
        bright = pixels.max(axis=0) > 0.5
        ys, xs = np.nonzero(bright)
        position = item[i]["attributes"]["position"]
        assert (ys.mean() > 16) == ("bottom" in position) and (xs.mean() > 16) == ("right" in position)


@pytest.mark.parametrize("layout", ["folder", "jsonl", "shards"])
def test_on_disk_layouts_round_trip(tmp_path, layout):
    folder = write_shapes_dataset(tmp_path / layout, count=10, seed=2, layout=layout, with_audio=True)
    dataset, report = load_training_set(str(folder), with_audio=True)
    assert report.kept == 10 and report.dropped == {} and report.layout == layout
    reference = ShapesDataset(10, seed=2, with_audio=True)
    captions = sorted(dataset[i]["caption"] for i in range(10))
    assert captions == sorted(reference[i]["caption"] for i in range(10))
    first = next(dataset[i] for i in range(10) if dataset[i]["caption"] == reference[0]["caption"])
    # PNG is lossless: the standardised image equals the in-memory render.
    assert np.allclose(first["pixel_values"].numpy(), reference[0]["pixel_values"].numpy(), atol=1e-6)
    assert dataset[0]["audio_features"].shape == reference[0]["audio_features"].shape


def _png(size: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav(samples: np.ndarray) -> bytes:
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes((samples * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def test_dirty_folder_is_cleaned_with_a_reason_per_record(tmp_path):
    tone = 0.5 * np.sin(np.arange(8000) / 16000 * 2 * np.pi * 440)
    records = {
        "good": (_png(48), "a red square at the top left", _wav(tone)),
        "corrupt": (b"not a png", "a caption", _wav(tone)),
        "tiny": (_png(8), "a caption", _wav(tone)),
        "empty": (_png(48), "   \n", _wav(tone)),
        "silent": (_png(48), "a caption", _wav(np.zeros(8000))),
        "short": (_png(48), "a caption", _wav(tone[:100])),
    }
    for key, (image, caption, audio) in records.items():
        (tmp_path / f"{key}.png").write_bytes(image)
        (tmp_path / f"{key}.txt").write_text(caption)
        (tmp_path / f"{key}.wav").write_bytes(audio)
    dataset, report = load_training_set(str(tmp_path), with_audio=True)
    assert report.kept == 1 and len(dataset) == 1
    assert report.dropped == {"unreadable image": 1, "image too small": 1, "empty caption": 1, "silent audio": 1, "audio too short": 1}
    assert report.examples["unreadable image"] == ["corrupt.png"]
    assert dataset[0]["pixel_values"].shape == (3, 32, 32)  # 48 px resized and cropped to 32


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims WIDTHxHEIGHT pixels (no pixel data): what a decompression bomb shows PIL."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_dropped_not_fatal(tmp_path):
    (tmp_path / "good.png").write_bytes(_png(32))
    (tmp_path / "bomb.png").write_bytes(_png_header(20000, 20000))  # over twice PIL's limit: PIL raises
    (tmp_path / "large.png").write_bytes(_png_header(10000, 10000))  # between once and twice: PIL warns
    for key in ("good", "bomb", "large"):
        (tmp_path / f"{key}.txt").write_text("a red square at the top left")
    _, report = load_training_set(str(tmp_path))
    assert report.kept == 1 and report.dropped == {"image too large": 2}
    result = CliRunner().invoke(app, ["data", "clean", str(tmp_path), "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["dropped"] == {"image too large": 2}


def test_jsonl_index_names_a_missing_file(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(32))
    (tmp_path / "index.jsonl").write_text(json.dumps({"image": "a.png", "caption": "x"}) + "\n" + json.dumps({"image": "gone.png", "caption": "y"}) + "\nnot json\n")
    _, report = load_training_set(str(tmp_path))
    assert report.kept == 1 and report.dropped == {"missing file": 1, "not JSON": 1}


def test_shards_with_a_caption_missing(tmp_path):
    with tarfile.open(tmp_path / "shard-0.tar", "w") as archive:
        for name, data in (("k1.png", _png(32)), ("k1.txt", b"a green circle at the top right"), ("k2.png", _png(32))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    dataset, report = load_training_set(str(tmp_path))
    assert report.kept == 1 and report.dropped == {"empty caption": 1}
    assert dataset[0]["attributes"] == {"colour": "green", "shape": "circle", "position": "top right"}


def test_nothing_usable_is_one_line(tmp_path):
    (tmp_path / "x.png").write_bytes(b"broken")
    (tmp_path / "x.txt").write_text("caption")
    with pytest.raises(EdgegenError, match="no usable records in .*: 1 unreadable image"):
        load_training_set(str(tmp_path))
    with pytest.raises(EdgegenError, match="dataset not found"):
        load_training_set(str(tmp_path / "absent"))
    with pytest.raises(EdgegenError, match="takes count and seed"):
        load_training_set("builtin:shapes?colour=red")


def test_log_mel_follows_pitch_and_loudness():
    from edgegen.data.audio import N_MELS, log_mel

    t = np.arange(8000) / 16000
    low, high = log_mel(0.5 * np.sin(2 * np.pi * 300 * t)), log_mel(0.5 * np.sin(2 * np.pi * 3000 * t))
    quiet = log_mel(0.05 * np.sin(2 * np.pi * 300 * t))
    assert low.shape == (N_MELS, 51)
    assert int(low.mean(dim=1).argmax()) < int(high.mean(dim=1).argmax())  # a higher tone lights higher bands
    assert float(quiet.max()) < float(low.max())  # 20 dB quieter is smaller in log power


def test_data_cli(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "shapes", "-o", str(tmp_path / "d"), "--count", "6", "--layout", "jsonl"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "clean", str(tmp_path / "d"), "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0 and json.loads((tmp_path / "r.json").read_text())["kept"] == 6
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["data", "clean", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no usable records" in result.stderr and len(result.stderr.strip().splitlines()) == 1
