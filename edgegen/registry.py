"""Name -> plugin registries for model families, export targets, runtimes and training recipes.

Entries are import paths, resolved on first use, so ``import edgegen`` never imports a heavy
toolchain and the core never imports ``edgegen.exporters`` or ``edgegen.runtimes`` statically.
Adding a target is one file under ``exporters/`` (and ``runtimes/``) plus one line here; adding a
model family is one file under ``edgegen/families/`` plus one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from edgegen.errors import EdgegenError


@dataclass
class Registry:
    kind: str
    entries: dict[str, str]
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> Any:
        if name not in self.entries:
            choices = ", ".join(self.entries)
            raise EdgegenError(f"unknown {self.kind} '{name}'; choose one of: {choices}")
        if name not in self._loaded:
            module_name, attribute = self.entries[name].split(":")
            self._loaded[name] = getattr(importlib.import_module(module_name), attribute)
        return self._loaded[name]


# Tried in order: the first family that claims a pipeline folder owns it.
FAMILIES = Registry(
    "model family",
    {
        # Before stable-diffusion: an SD folder whose UNet takes a guidance embedding is LCM's.
        "latent-consistency": "edgegen.families.latent_consistency:FAMILY",
        "stable-diffusion": "edgegen.families.stable_diffusion:FAMILY",
        "stable-diffusion-xl": "edgegen.families.stable_diffusion_xl:FAMILY",
        "pixart": "edgegen.families.pixart:FAMILY",
        "stable-diffusion-3": "edgegen.families.stable_diffusion_3:FAMILY",
        "flux": "edgegen.families.flux:FAMILY",
        "sana": "edgegen.families.sana:FAMILY",
    },
)

# App-side consumers: each module writes the files that consumer loads (edgegen bundle --format).
BUNDLE_FORMATS = Registry(
    "bundle format",
    {
        "react-native-executorch": "edgegen.bundling.react_native_executorch:FORMAT",
        "react-native-executorch-sdxs": "edgegen.bundling.react_native_executorch_sdxs:FORMAT",
        "apple-swift": "edgegen.bundling.apple_swift:FORMAT",
    },
)

EXPORTERS = Registry(
    "export target",
    {
        "onnx": "edgegen.exporters.onnx:EXPORTER",
        "executorch": "edgegen.exporters.executorch:EXPORTER",
        "coreml": "edgegen.exporters.coreml:EXPORTER",
        "tflite": "edgegen.exporters.tflite:EXPORTER",
    },
)

# Keyed by runtime name; each runtime names the target it runs (``runtime.target``), so one target
# may have several (edgegen.session.runtime_for takes the first usable one, in this order).
RUNTIMES = Registry(
    "runtime",
    {
        "onnx": "edgegen.runtimes.onnx:RUNTIME",
        "executorch": "edgegen.runtimes.executorch:RUNTIME",
        "coreml": "edgegen.runtimes.coreml:RUNTIME",
        "tflite": "edgegen.runtimes.tflite:RUNTIME",
    },
)

RECIPES = Registry(
    "training recipe",
    {
        "finetune": "edgegen.trainers.finetune:RECIPE",
        "lora": "edgegen.trainers.lora:RECIPE",
        "distill": "edgegen.trainers.distill:RECIPE",
        "adversarial": "edgegen.trainers.adversarial:RECIPE",
        "decoder": "edgegen.trainers.decoder:RECIPE",
        "qat": "edgegen.trainers.qat:RECIPE",
    },
)
