"""Typed recipe configs: YAML is the saved form, ``key=value`` overrides come from the command line.

Every recipe's config is a strict pydantic model derived from ``TrainConfig``: an unknown key or a
value of the wrong type is one error line before any model is loaded. Overrides use dotted keys
for nested fields and YAML scalars for values (``steps=200``, ``lora.rank=8``, ``qat=true``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationError

from edgegen.errors import EdgegenError
from edgegen.schema.base import StrictModel

CONFIG_FILENAME = "config.yaml"


class TrainConfig(StrictModel):
    """What every recipe shares: data, output, schedule, checkpoints and logging."""

    output: Path
    data: str = "builtin:shapes?count=4096"  # builtin:shapes[?count=N&seed=S], an image folder, a JSONL index or .tar shards
    image_size: int = Field(32, gt=0)
    steps: int = Field(100, gt=0)
    batch_size: int = Field(16, gt=0)  # per process
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    seed: int = 0
    caption_dropout: float = Field(0.1, ge=0, le=1)  # captions replaced by "" so guidance works
    checkpoint_every: int = Field(50, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    log_every: int = Field(10, gt=0)
    threads: int | None = Field(None, gt=0)  # torch intra-op threads per process


Config = TypeVar("Config", bound=TrainConfig)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise EdgegenError(f"override '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    import yaml

    data: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise EdgegenError(f"override '{item}' is not key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    return data


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise EdgegenError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise EdgegenError(f"config {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EdgegenError(f"config {path} is not a mapping of keys to values")
    return data


def resolve_config(config_type: type[Config], path: Path | None = None, overrides: list[str] = ()) -> Config:
    """The config from an optional YAML file plus overrides; every problem is one line."""
    data = read_yaml(path) if path is not None else {}
    data = _merge(data, parse_overrides(list(overrides)))
    where = f"config {path}" if path is not None else "config"
    try:
        return config_type.model_validate(data)
    except ValidationError as error:
        problems = error.errors()
        # A misspelt key explains a "missing" one too, so it is the one to report.
        problem = next((p for p in problems if p["type"] == "extra_forbidden"), problems[0])
        location = ".".join(str(part) for part in problem["loc"]) or "(root)"
        if problem["type"] == "extra_forbidden":
            known = ", ".join(config_type.model_fields)
            raise EdgegenError(f"{where}: unknown key '{location}' (known: {known})") from None
        if problem["type"] == "missing":
            raise EdgegenError(f"{where}: '{location}' is required (set it with {location}=...)") from None
        raise EdgegenError(f"{where}: {location}: {problem['msg']}") from None


def config_dict(config: TrainConfig) -> dict[str, Any]:
    return json.loads(config.model_dump_json())


def config_sha256(config: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(config_dict(config), sort_keys=True).encode()).hexdigest()


def write_config(config: TrainConfig, path: Path, command: str) -> None:
    import yaml

    text = f"# {command}\n" + yaml.safe_dump(config_dict(config), sort_keys=False)
    path.write_text(text, encoding="utf-8")
