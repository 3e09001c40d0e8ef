"""Shared strictness for seam files: unknown keys rejected, schema versions checked first."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edgegen.errors import EdgegenError


class StrictModel(BaseModel):
    # Infinity is a legitimate PSNR (identical outputs); JSON has no literal for it.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


Model = TypeVar("Model", bound=StrictModel)


def load_strict_json(
    path: Path,
    model: type[Model],
    supported_version: int,
    what: str,
    migrations: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
) -> Model:
    """Read ``path`` as ``model``; every failure is one EdgegenError line naming the file.

    ``migrations`` maps an older schema version to the function that lifts it to the current one.
    """
    if not path.is_file():
        raise EdgegenError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EdgegenError(f"{what} {path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise EdgegenError(f"{what} {path} is not a JSON object")
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise EdgegenError(f"{what} {path} has no integer schema_version")
    if version > supported_version:
        raise EdgegenError(
            f"{what} {path} has schema version {version}, newer than this edgegen reads "
            f"({supported_version}); upgrade edgegen"
        )
    if version < supported_version and migrations and version in migrations:
        data = migrations[version](data)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problem = error.errors()[0]
        location = ".".join(str(part) for part in problem["loc"]) or "(root)"
        if problem["type"] == "extra_forbidden":
            raise EdgegenError(f"{what} {path} has an unknown key '{location}'") from None
        raise EdgegenError(f"{what} {path}: {location}: {problem['msg']}") from None


def write_json(path: Path, model: StrictModel) -> None:
    path.write_text(model.model_dump_json(indent=2) + "\n", encoding="utf-8")
