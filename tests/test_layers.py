"""Imports point down only: the layer table of docs/contracts.md, checked on the source (static imports, also the
ones inside functions)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# lower number = lower layer; a module may import its own package and packages of a strictly lower layer
LAYERS = {
    "slipio": 0, "schemas": 0,
    "etl.config": 1, "etl.sample": 1,
    "etl.core": 2,
    "etl.parse": 3, "etl.net": 3, "etl.graph": 3, "etl.release": 3,
    "etl.imaging": 4,
    "etl.stages": 5,
    "etl.summary": 6, "etl.harness": 6,
    "etl.cli": 7,
}
OURS = ("etl", "trainer", "slipio", "schemas")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in OURS}


def _unit(module: str) -> str:
    """The layer unit of a module: etl.<subpackage> or a top-level etl module, else the top-level package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "etl" and len(parts) > 1 else parts[0]


def _sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def test_every_etl_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in _sources("etl")} - {"etl"}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS and to docs/contracts.md"


@pytest.mark.parametrize("path", _sources("etl", "slipio"), ids=lambda p: str(p.relative_to(ROOT)))
def test_etl_and_slipio_import_only_lower_layers(path: Path):
    module = _module_name(path)
    unit = _unit(module)
    if unit not in LAYERS:  # etl/__init__.py
        return
    for name in sorted(_imports(path)):
        target = _unit(name)
        if target == unit or name == "etl":
            continue
        assert target in LAYERS, f"{module} imports {name}: the ETL and slipio never import the trainer"
        assert LAYERS[target] < LAYERS[unit], (
            f"{module} (layer {LAYERS[unit]}) imports {name} (layer {LAYERS[target]}): imports point down only")


@pytest.mark.parametrize("path", _sources("etl/stages"), ids=lambda p: p.name)
def test_stages_never_import_each_other_or_the_registry(path: Path):
    module = _module_name(path)
    if module == "etl.stages":
        return
    others = {n for n in _imports(path) if n == "etl.stages" or n.startswith("etl.stages.")} - {module}
    others = {n for n in others if not n.startswith(module + ".")}
    assert not others, f"{module} imports {sorted(others)}: move what stages share to a lower layer"


@pytest.mark.parametrize("path", _sources("trainer"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_trainer_meets_the_etl_only_at_schemas_and_slipio(path: Path):
    bad = {n for n in _imports(path) if n.split(".")[0] == "etl"}
    assert not bad, f"{_module_name(path)} imports {sorted(bad)}: the trainer reads only the release contract"
