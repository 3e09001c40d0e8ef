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


Migrations = dict[int, Callable[[dict[str, Any]], dict[str, Any]]]


def validate_strict(data: Any, model: type[Model], supported_version: int, where: str, what: str, migrations: Migrations | None = None) -> Model:
    """``data`` as ``model``: its schema version checked first, then every field; one line if not.

    ``where`` names the place in messages (a file, or ``file:line``); ``migrations`` maps an older
    schema version to the function that lifts it to the current one (without one, an older
    version is refused: its case has to be made again).
    """
    if not isinstance(data, dict):
        raise EdgegenError(f"{where} is not a JSON object")
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise EdgegenError(f"{where} has no integer schema_version")
    if version > supported_version:
        raise EdgegenError(f"{where} has schema version {version}, newer than this edgegen reads ({supported_version}); upgrade edgegen")
    while version < supported_version:  # each migration lifts one version
        if not migrations or version not in migrations:
            raise EdgegenError(f"{where} has schema version {version}, older than this edgegen reads ({supported_version}); make it again")
        data = migrations[version](data)
        version = data["schema_version"]
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problem = error.errors()[0]
        location = ".".join(str(part) for part in problem["loc"]) or "(root)"
        if problem["type"] == "extra_forbidden":
            raise EdgegenError(f"{where} has an unknown key '{location}'") from None
        article = "an" if what[:1] in "aeiou" else "a"
        message = problem["msg"].removeprefix("Value error, ")  # a validator's own sentence
        place = "" if location == "(root)" else f"{location}: "
        raise EdgegenError(f"{where} is not {article} {what}: {place}{message}") from None


def load_strict_json(path: Path, model: type[Model], supported_version: int, what: str, migrations: Migrations | None = None) -> Model:
    """Read ``path`` as ``model``; every failure is one EdgegenError line naming the file."""
    if not path.is_file():
        raise EdgegenError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EdgegenError(f"{what} {path} is not valid JSON ({error})") from None
    return validate_strict(data, model, supported_version, f"{what} {path}", what, migrations)


def write_json(path: Path, model: StrictModel) -> None:
    path.write_text(model.model_dump_json(indent=2) + "\n", encoding="utf-8")
