"""The caption-faithfulness probe: a small classifier of colour, shape and position.

Trained on the built-in shapes data, it reads a generated image and says which colour, shape
and quadrant it shows; "faithfulness" is the fraction of images whose three attributes all
match what their caption asked for, so teacher and student are measured the same way. Its
penultimate features also serve as a small FID/KID feature extractor for the shapes domain
(``export_feature_extractor``: an ONNX file, input ``images`` [N,3,H,W] float in [-1, 1] with a
dynamic batch, output ``features`` [N,D], unit length).

A probe folder holds ``model.safetensors`` and ``probe.json`` (strict, versioned: vocabularies,
image size, feature width, held-out accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.schema.base import StrictModel, load_strict_json, write_json

PROBE_SCHEMA_VERSION = 1
PROBE_MANIFEST = "probe.json"
PROBE_WEIGHTS = "model.safetensors"
ATTRIBUTES = ("colour", "shape", "position")


class ProbeManifest(StrictModel):
    schema_version: int = PROBE_SCHEMA_VERSION
    kind: str = "edgegen.probe"
    image_size: int
    feature_size: int
    vocabularies: dict[str, list[str]]
    held_out_accuracy: dict[str, float]
    steps: int


def _network(image_size: int, feature_size: int, vocabularies: dict[str, list[str]]) -> Any:
    import torch

    class ProbeNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
                torch.nn.Flatten(), torch.nn.Linear(32 * (image_size // 4) ** 2, feature_size), torch.nn.ReLU(),
            )
            self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(feature_size, len(words)) for name, words in vocabularies.items()})

        def features(self, images):
            return self.body(images)

        def forward(self, images):
            features = self.body(images)
            return {name: head(features) for name, head in self.heads.items()}

    return ProbeNet()


@dataclass
class Probe:
    network: Any
    manifest: ProbeManifest

    def predict(self, images: Any) -> list[dict[str, str]]:
        import torch

        with torch.no_grad():
            logits = self.network(torch.as_tensor(images, dtype=torch.float32))
        picks = {name: logits[name].argmax(dim=1).tolist() for name in logits}
        vocab = self.manifest.vocabularies
        return [{name: vocab[name][picks[name][i]] for name in picks} for i in range(len(images))]

    def features(self, images: Any) -> Any:
        import torch

        with torch.no_grad():
            return self.network.features(torch.as_tensor(images, dtype=torch.float32))


@dataclass(frozen=True)
class Faithfulness:
    fraction_all: float  # all three attributes right
    per_attribute: dict[str, float]
    count: int


def faithfulness(probe: Probe, images: Any, captions: list[str]) -> Faithfulness:
    """How many images show what their caption asked for; captions must describe one shape."""
    from edgegen.data.shapes import parse_caption

    wanted = [parse_caption(caption) for caption in captions]
    unreadable = [caption for caption, attributes in zip(captions, wanted) if attributes is None]
    if unreadable:
        raise EdgegenError(f"the probe reads captions like 'a red circle at the top left'; cannot read '{unreadable[0]}'")
    seen = probe.predict(images)
    hits = {name: [s[name] == w[name] for s, w in zip(seen, wanted)] for name in ATTRIBUTES}
    every = [all(hits[name][i] for name in ATTRIBUTES) for i in range(len(captions))]
    return Faithfulness(
        fraction_all=sum(every) / len(every),
        per_attribute={name: sum(values) / len(values) for name, values in hits.items()},
        count=len(every),
    )


def train_probe(steps: int = 600, batch_size: int = 64, seed: int = 0, image_size: int = 32, feature_size: int = 64) -> Probe:
    import torch

    from edgegen.data.shapes import COLOURS, POSITIONS, SHAPES, ShapesDataset

    vocabularies = {"colour": list(COLOURS), "shape": list(SHAPES), "position": list(POSITIONS)}
    torch.manual_seed(seed)
    network = _network(image_size, feature_size, vocabularies)
    data = ShapesDataset(count=steps * batch_size, seed=seed + 500, image_size=image_size)
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-3)

    def batch(dataset, start, size):
        items = [dataset[i] for i in range(start, start + size)]
        images = torch.stack([item["pixel_values"] for item in items])
        labels = {name: torch.tensor([vocabularies[name].index(item["attributes"][name]) for item in items]) for name in ATTRIBUTES}
        return images, labels

    network.train()
    for step in range(steps):
        images, labels = batch(data, step * batch_size, batch_size)
        # Generated images are noisier than renders: train on lightly perturbed ones too.
        images = images + 0.1 * torch.randn_like(images)
        logits = network(images)
        loss = sum(torch.nn.functional.cross_entropy(logits[name], labels[name]) for name in ATTRIBUTES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    network.eval()
    held_out = ShapesDataset(count=512, seed=seed + 9999, image_size=image_size)
    images, labels = batch(held_out, 0, 512)
    with torch.no_grad():
        logits = network(images)
    accuracy = {name: float((logits[name].argmax(1) == labels[name]).float().mean()) for name in ATTRIBUTES}
    manifest = ProbeManifest(image_size=image_size, feature_size=feature_size, vocabularies=vocabularies, held_out_accuracy=accuracy, steps=steps)
    return Probe(network, manifest)


def save_probe(probe: Probe, folder: Path, force: bool = True) -> Path:
    from safetensors.torch import save_file

    from edgegen.artifact import atomic_folder

    with atomic_folder(Path(folder), force=force) as staging:
        save_file({k: v.contiguous() for k, v in probe.network.state_dict().items()}, str(staging / PROBE_WEIGHTS))
        write_json(staging / PROBE_MANIFEST, probe.manifest)
    return Path(folder)


def load_probe(folder: Path) -> Probe:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise EdgegenError(f"probe folder not found: {folder}")
    manifest = load_strict_json(folder / PROBE_MANIFEST, ProbeManifest, PROBE_SCHEMA_VERSION, "probe manifest")
    network = _network(manifest.image_size, manifest.feature_size, manifest.vocabularies)
    try:
        network.load_state_dict(load_file(str(folder / PROBE_WEIGHTS)), strict=True)
    except (SafetensorError, OSError, RuntimeError) as error:
        raise EdgegenError(f"cannot load probe weights {folder / PROBE_WEIGHTS}: {str(error).splitlines()[0][:200]}") from None
    return Probe(network.eval(), manifest)


def export_feature_extractor(probe: Probe, path: Path) -> Path:
    """The probe's penultimate features as an ONNX file (dynamic batch), checked against eager."""
    import tempfile

    import torch

    from edgegen.measure.metrics import psnr_db

    class Features(torch.nn.Module):
        def __init__(self, network):
            super().__init__()
            self.network = network

        def forward(self, images):
            # Unit-length features keep FID/KID on a fixed scale whatever the ReLU magnitudes.
            return torch.nn.functional.normalize(self.network.features(images), dim=1)

    size = probe.manifest.image_size
    example = torch.linspace(-1, 1, 2 * 3 * size * size).reshape(2, 3, size, size)
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as scratch:
        staging = Path(scratch) / path.name
        torch.onnx.export(
            Features(probe.network).eval(), (example,), str(staging), input_names=["images"], output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, dynamo=False,
        )
        import onnxruntime as ort

        session = ort.InferenceSession(str(staging), providers=["CPUExecutionProvider"])
        produced = session.run(None, {"images": example.numpy()})[0]
        expected = torch.nn.functional.normalize(probe.features(example), dim=1).numpy()
        if not psnr_db(expected, produced) > 60:
            raise EdgegenError(f"the exported feature extractor differs from eager (PSNR {psnr_db(expected, produced):.1f} dB)")
        staging.replace(path)
    return path
