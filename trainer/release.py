"""`Release`: the trainer's one reader of a release folder (the contract `slip-etl release` writes and
`slip-etl validate` checks; see docs/contracts.md).

Training and evaluation read shards, sizes, nodes, edges and labels only through this class, so the contract is
interpreted in one place. Opening a release reads manifest.json alone and refuses schema versions this code
cannot read (another MAJOR version: the columns changed meaning); every table is read on first use. A missing
file, column or class id is a `ReleaseError` (a TrainSetupError: the CLIs print it and exit 2), never a guess.
`read_edges` also reads a bare edges file (`slip-train --shards PATTERN --graph FILE`, no release).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from trainer.config import TrainSetupError

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
NODES = "nodes.parquet"
EDGES = "edges.parquet"
LABELS = "labels.json"
SHARDS = "shards"
SIZES = "shards/sizes.json"
#: the schemas whose data the trainer reads (nodes.parquet, edges.parquet, the shard samples' .json members)
READS = ("release_nodes", "edges", "shard_sample")
NODE_COLUMNS = ("node_id", "label", "split", "image_status")
EDGE_COLUMNS = ("src", "dst", "weight", "kind")
IMAGE_OK = "ok"  # image_status of a node that has a sample in its split's shards


class ReleaseError(TrainSetupError):
    """The release cannot be read as the contract says: missing column, unsupported schema version, bad JSON."""


class ReleaseFileMissing(ReleaseError, FileNotFoundError):
    """A file the trainer reads is not in the release (also a FileNotFoundError for callers that catch that)."""


def read_edges(path: Path, kinds: Optional[Sequence[str]] = None) -> pa.Table:
    """src, dst, weight, kind of an edges file, only the edges of `kinds` when given (each must be present)."""
    path = Path(path)
    if not path.is_file():
        raise ReleaseFileMissing(f"edges file not found: {path}")
    _require_columns(path, EDGE_COLUMNS)
    table = pq.read_table(path, columns=list(EDGE_COLUMNS))
    if kinds is not None:
        present = set(table.column("kind").unique().to_pylist())
        unknown = set(kinds) - present
        if unknown:
            raise ReleaseError(f"edge kinds {sorted(unknown)} not in {path} (present: {sorted(present)})")
        table = table.filter(pc.is_in(table.column("kind"), value_set=pc.cast(list(kinds), "string")))
    return table


class Release:
    """A release folder, opened for reading: `Release(path)` checks the manifest, the rest is read lazily."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ReleaseFileMissing(f"release {self.path}: not a folder")
        manifest = self._json(MANIFEST)
        if not isinstance(manifest, dict):
            raise ReleaseError(f"{self.path / MANIFEST}: expected a JSON object")
        problems = schemas.check_schema_versions(manifest.get("schema_versions"), READS)
        if problems:
            raise ReleaseError(f"{self.path / MANIFEST}: {'; '.join(problems)}; this trainer cannot read the "
                               f"release (rebuild it with the matching slip-etl, or use a matching trainer)")
        self.manifest: dict[str, Any] = manifest
        self._nodes: Optional[dict[str, np.ndarray]] = None
        self._sizes: Optional[dict[str, int]] = None
        self._labels: Optional[dict[str, Any]] = None

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Release({str(self.path)!r})"

    # ---- shards --------------------------------------------------------------------------------------------
    def shards(self, split: str) -> list[str]:
        """Paths of the split's shard tars (`shards/{split}-*.tar`, in name order); none is an error."""
        found = self._split_shards(split)
        if not found:
            raise ReleaseError(f"no {split}-*.tar shards in {self.path / SHARDS}")
        return found

    def all_shards(self) -> list[str]:
        """Every split's shards, train then val then test (a split without shards adds none)."""
        return [shard for split in SPLITS for shard in self._split_shards(split)]

    def sizes(self, split: Optional[str] = None) -> dict[str, int]:
        """Samples per shard file name from shards/sizes.json, only the split's shards when given."""
        if self._sizes is None:
            sizes = self._json(SIZES)
            if not isinstance(sizes, dict) or not all(isinstance(n, int) and not isinstance(n, bool)
                                                      for n in sizes.values()):
                raise ReleaseError(f"{self.path / SIZES}: expected a mapping of shard name to sample count")
            self._sizes = dict(sorted(sizes.items()))
        if split is None:
            return dict(self._sizes)
        return {name: n for name, n in self._sizes.items() if name.startswith(f"{split}-")}

    def _split_shards(self, split: str) -> list[str]:
        folder = self.path / SHARDS
        if not folder.is_dir():
            raise ReleaseFileMissing(f"release {self.path} has no {SHARDS}/ folder")
        return sorted(str(p) for p in folder.glob(f"{split}-*.tar"))

    # ---- tables --------------------------------------------------------------------------------------------
    def nodes(self) -> dict[str, np.ndarray]:
        """Row-aligned arrays of nodes.parquet: node_id, label (-1 = no class), split, image_status, and
        has_image (image_status == "ok": the node has a sample in its split's shards). Read once, then kept."""
        if self._nodes is None:
            path = self._file(NODES)
            _require_columns(path, NODE_COLUMNS)
            table = pq.read_table(path, columns=list(NODE_COLUMNS))
            status = np.asarray(table.column("image_status").to_pylist(), dtype=object)
            self._nodes = {"node_id": table.column("node_id").to_numpy(zero_copy_only=False),
                           "label": table.column("label").to_numpy(zero_copy_only=False),
                           "split": np.asarray(table.column("split").to_pylist(), dtype=object),
                           "image_status": status, "has_image": status == IMAGE_OK}
        return self._nodes

    def graph_file(self, method: str) -> Path:
        """edges.parquet for a method that trains on the product graph; its absence names the release and the
        ways out (a release built without edges can still train the CLIP baseline)."""
        path = self.path / EDGES
        if not path.is_file():
            raise ReleaseFileMissing(f"release {self.path} has no {EDGES}: --method {method} trains on the "
                                     f"product graph and needs it (use --method clip, or give --graph FILE)")
        return path

    def edges(self, kinds: Optional[Sequence[str]] = None) -> pa.Table:
        """edges.parquet (src, dst, weight, kind; stored once per pair), only `kinds` when given."""
        return read_edges(self._file(EDGES), kinds)

    # ---- labels --------------------------------------------------------------------------------------------
    def labels(self) -> dict[str, Any]:
        """labels.json as written by the labels stage: level, classes [{id, name, count}], rule, dropped."""
        if self._labels is None:
            labels = self._json(LABELS)
            classes = labels.get("classes") if isinstance(labels, dict) else None
            if not isinstance(classes, list) or not all(isinstance(c, dict) and "id" in c and "name" in c
                                                        for c in classes):
                raise ReleaseError(f"{self.path / LABELS}: 'classes' must be a list of {{id, name, count}}")
            self._labels = labels
        return self._labels

    def class_names(self) -> list[str]:
        """Class names by id (the zero-shot classes); ids must be exactly 0..C-1."""
        classes = self.labels()["classes"]
        by_id = {int(c["id"]): str(c["name"]) for c in classes}
        if sorted(by_id) != list(range(len(classes))):
            raise ReleaseError(f"{self.path / LABELS}: class ids must be 0..{len(classes) - 1}, "
                               f"got {sorted(by_id)[:10]}")
        return [by_id[i] for i in range(len(classes))]

    # ---- files ---------------------------------------------------------------------------------------------
    def _file(self, rel: str) -> Path:
        path = self.path / rel
        if not path.is_file():
            raise ReleaseFileMissing(f"release {self.path} has no {rel}")
        return path

    def _json(self, rel: str) -> Any:
        path = self._file(rel)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReleaseError(f"{path}: not valid JSON ({exc})") from None


def _require_columns(path: Path, columns: Sequence[str]) -> None:
    try:
        names = set(pq.read_schema(path).names)
    except (OSError, pa.ArrowException) as exc:
        raise ReleaseError(f"{path}: unreadable Parquet ({exc})") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise ReleaseError(f"{path}: no column {', '.join(map(repr, missing))} (the trainer reads "
                           f"{', '.join(columns)})")
