"""Reading the JSON files of a checkpoint (config.json, tokenizer_config.json, ...): untrusted input, so
every failure becomes the caller's error class with the file's path in the message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json_object(path: Path, error: type[Exception]) -> dict[str, Any]:
    """The JSON object in `path`; `error` names the file when it cannot be read, parsed or is not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or UTF-8
        raise error(f"{path}: cannot be read as JSON: {e}") from None
    if not isinstance(value, dict):
        raise error(f"{path}: not a JSON object")
    return value
