"""Bad user input, and reading the config files users give (YAML or JSON): what the three CLIs and the layers
below them share. No typer here, so the ETL's config and stage modules can use it without paying for the CLI
library at start-up."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """Bad input the user must fix; the message names the input and what to change."""


def read_config_text(path: Path) -> str:
    """The text of config file `path`; InputError naming the file when it is missing, unreadable or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}" if not path.exists() else f"{path}: not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 1].hex()
        raise InputError(f"{path}: not UTF-8 text (byte 0x{bad} at offset {exc.start}); save the file as UTF-8"
                         ) from None


def yaml_problem(exc: Exception) -> str:
    """A YAML error as `line N: PROBLEM` (PyYAML's own text spans several lines and quotes the input)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    return f"{where}{getattr(exc, 'problem', None) or getattr(exc, 'reason', None) or exc}"


def read_mapping(path: Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON (`.json`) config file; InputError naming the file when it is not one.

    An empty file is an empty mapping (every value from its default)."""
    import yaml  # only when a config file is given

    path = Path(path)
    text = read_config_text(path)
    try:
        loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    if loaded is None and path.suffix != ".json":
        loaded = {}
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: must hold a mapping of field: value")
    return loaded
