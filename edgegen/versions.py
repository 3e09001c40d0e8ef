"""Versions of edgegen and the toolchains it drives, as recorded in manifests and results."""

from __future__ import annotations

from importlib import metadata

TOOLCHAIN_PACKAGES = (
    "torch",
    "diffusers",
    "transformers",
    "executorch",
    "torchao",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "coremltools",
    "litert-torch",
    "ai-edge-litert",
)


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def edgegen_version() -> str:
    return package_version("edgegen") or "0+unknown"


def versions_of(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    found = {name: package_version(name) for name in names}
    return {name: version for name, version in found.items() if version is not None}
