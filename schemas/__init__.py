"""Versioned schemas of every artifact, shared by the ETL (which writes) and the trainer and validator (which read).

A schema is a JSON file beside this module: `{name, version, columns: [{name, type, nullable}], unique}` for
tables, `{name, version, fields: [...]}` for JSON records. Types: int32, int64, float32, float64, string, bool,
binary, list<string>, list<int64>; records also object (a JSON mapping, e.g. a bank's file list).

`version` is the schema's MAJOR version (an int; `"M.m"` is read as major M): bump it when a column or field is
removed, renamed, retyped or changes meaning. Each release manifest records the versions it was written with
(`schema_versions`), and readers (`slip-etl validate`, the trainer's `Release`) refuse another major.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa

_ARROW = {
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.large_string(),
    "bool": pa.bool_(),
    "binary": pa.large_binary(),
    "list<string>": pa.large_list(pa.large_string()),
    "list<int64>": pa.large_list(pa.int64()),
}
# Accepted physical types per logical type (polars writes large_*; other writers may not).
_COMPATIBLE = {
    "string": (pa.types.is_string, pa.types.is_large_string),
    "binary": (pa.types.is_binary, pa.types.is_large_binary),
    "list<string>": (lambda t: (pa.types.is_list(t) or pa.types.is_large_list(t))
                     and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)),),
    "list<int64>": (lambda t: (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_int64(t.value_type),),
}
_JSON_TYPES = {"int64": int, "int32": int, "string": str, "float64": (int, float), "bool": bool, "object": dict}


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    try:
        text = resources.files("schemas").joinpath(f"{name}.json").read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise KeyError(f"no schema named {name!r}; known: {', '.join(schema_versions())}") from exc
    return json.loads(text)


def schema_versions() -> dict[str, int]:
    """Every shipped schema's version (recorded in each release manifest)."""
    out = {}
    for entry in resources.files("schemas").iterdir():
        if entry.name.endswith(".json"):
            out[entry.name[:-5]] = json.loads(entry.read_text(encoding="utf-8"))["version"]
    return dict(sorted(out.items()))


def schema_major(version: Any) -> int:
    """The MAJOR part of a schema version: `3` and `"3"` are 3, `"3.1"` is 3 (a minor change only adds)."""
    if isinstance(version, bool):
        raise ValueError(f"not a schema version: {version!r}")
    if isinstance(version, int):
        return version
    head = str(version).split(".", 1)[0] if isinstance(version, (str, float)) else ""
    if not head.isdigit():
        raise ValueError(f"not a schema version: {version!r}")
    return int(head)


def check_schema_versions(found: Any, names: Iterable[str] | None = None) -> list[str]:
    """Why a release's recorded `schema_versions` cannot be read by this code (empty list = it can).

    Each schema in `names` (default: every schema this code ships) must be recorded with this code's MAJOR
    version; a different major means the columns or their meaning changed. Schemas this code does not know are
    not its business and pass.
    """
    supported = schema_versions()
    if not isinstance(found, dict):
        return [f"schema_versions must map schema names to versions, got {type(found).__name__}"]
    problems = []
    for name in (sorted(supported) if names is None else names):
        if name not in supported:
            raise KeyError(f"no schema named {name!r}; known: {', '.join(supported)}")
        want = supported[name]
        if name not in found:
            problems.append(f"schema_versions has no version for schema {name!r} (this code supports version "
                            f"{want})")
            continue
        try:
            major = schema_major(found[name])
        except ValueError:
            problems.append(f"schema {name!r}: version {found[name]!r} is not a version number (this code "
                            f"supports version {want})")
            continue
        if major != schema_major(want):
            problems.append(f"schema {name!r} has version {found[name]}, this code supports version {want} "
                            f"(major {schema_major(want)} only)")
    return problems


def arrow_schema(name: str) -> pa.Schema:
    """The Arrow schema to write a table with (column order as in the schema)."""
    return pa.schema([pa.field(c["name"], _ARROW[c["type"]], nullable=c["nullable"])
                      for c in load_schema(name)["columns"]])


def conform(table: pa.Table, name: str) -> pa.Table:
    """Select and cast `table` to schema `name` (raises if a column is missing)."""
    schema = arrow_schema(name)
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValueError(f"table for schema {name!r} lacks columns {missing}")
    return table.select(schema.names).cast(schema)


def validate_table(table: pa.Table | str | Path, name: str, *, check_unique: bool = True) -> list[str]:
    """Every way `table` departs from schema `name`, as readable problems (empty list = valid)."""
    if not isinstance(table, pa.Table):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(table)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one problem to report
            return [f"{name}: cannot read {table}: {exc}"]
    schema = load_schema(name)
    problems = []
    for col in schema["columns"]:
        cname, ctype = col["name"], col["type"]
        if cname not in table.column_names:
            problems.append(f"{name}: missing column {cname!r}")
            continue
        actual = table.schema.field(cname).type
        checks = _COMPATIBLE.get(ctype)
        ok = any(c(actual) for c in checks) if checks else actual == _ARROW[ctype]
        if not ok:
            problems.append(f"{name}: column {cname!r} has type {actual}, expected {ctype}")
        nulls = table.column(cname).null_count
        if nulls and not col["nullable"]:
            problems.append(f"{name}: column {cname!r} has {nulls} nulls but is not nullable")
    if check_unique:
        for key in schema.get("unique", []):
            cols = key if isinstance(key, list) else [key]
            if all(c in table.column_names for c in cols):
                dupes = table.num_rows - table.group_by(cols).aggregate([]).num_rows
                if dupes:
                    problems.append(f"{name}: {dupes} duplicate value(s) of {'+'.join(cols)}")
    return problems


def validate_record(obj: Any, name: str) -> list[str]:
    """Problems of one JSON record (e.g. a shard sample's .json member) against schema `name`."""
    if not isinstance(obj, dict):
        return [f"{name}: expected a JSON object, got {type(obj).__name__}"]
    problems = []
    for f in load_schema(name)["fields"]:
        if f["name"] not in obj:
            problems.append(f"{name}: missing field {f['name']!r}")
            continue
        v = obj[f["name"]]
        if v is None:
            if not f["nullable"]:
                problems.append(f"{name}: field {f['name']!r} is null")
        elif not isinstance(v, _JSON_TYPES[f["type"]]) or (f["type"] != "bool" and isinstance(v, bool)):
            problems.append(f"{name}: field {f['name']!r} should be {f['type']}, got {type(v).__name__}")
    return problems
