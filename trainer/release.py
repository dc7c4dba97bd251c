"""`Release`: the trainer's one reader of a release folder (the contract `slip-etl release` writes and
`slip-etl validate` checks; see docs/contracts.md).

Training and evaluation read shards, sizes, nodes, edges and labels only through this class, so the contract is
interpreted in one place. Opening a release reads manifest.json alone and refuses schema versions this code
cannot read (another MAJOR version: the columns changed meaning); every table is read on first use. A missing
file, column or class id is a `ReleaseError` (a TrainSetupError: the CLIs print it and exit 2), never a guess.
`read_edges` also reads a bare edges file (`slip-train --shards PATTERN --graph FILE`, no release).

The fixed link-prediction split (`lp_split.parquet`, written by `slip-etl release` since its VERSION 2) holds
val/test edges out: `read_training_edges` (what the trainer's CSR graph is built from) drops them whenever the
edges file has that split beside it, so no run trains on an edge `slip-eval` scores. `to_pyg()` gives the release
as a `torch_geometric.data.Data` for graph-ML code.

A release can also be a URL (`Release("https://host/rel")`, any fsspec protocol, see trainer.remote): its small
files (manifest, sizes, nodes, edges, labels) are copied into a local cache folder on first use and checked against
the manifest's sha256 (a cached copy that still matches is reused); shards stay remote and are streamed. The shard
list then comes from the manifest, whose paths are untrusted: one that is not a normalised relative path (`..`,
absolute, another URL) makes the whole release unreadable.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import urllib.parse
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from slipio.hashing import file_sha256
from slipio.paths import UnsafePath, check_relpath
from trainer import remote
from trainer.config import TrainSetupError

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
NODES = "nodes.parquet"
EDGES = "edges.parquet"
LABELS = "labels.json"
SHARDS = "shards"
SIZES = "shards/sizes.json"
LP_SPLIT = "lp_split.parquet"
LP_COLUMNS = ("split", "src", "dst", "negatives")
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


def held_out_pairs(lp_split: Optional[pa.Table]) -> np.ndarray:
    """[H, 2] int64 (lo, hi) node pairs of a link-prediction split (every split's rows); empty for None."""
    if lp_split is None or lp_split.num_rows == 0:
        return np.empty((0, 2), np.int64)
    src = lp_split.column("src").to_numpy(zero_copy_only=False).astype(np.int64)
    dst = lp_split.column("dst").to_numpy(zero_copy_only=False).astype(np.int64)
    return np.unique(np.stack([np.minimum(src, dst), np.maximum(src, dst)], axis=1), axis=0)


def drop_pairs(edges: pa.Table, pairs: np.ndarray) -> pa.Table:
    """`edges` without the rows joining a (lo, hi) pair of `pairs`, whatever their kind or orientation."""
    if len(pairs) == 0 or edges.num_rows == 0:
        return edges
    src = edges.column("src").to_numpy(zero_copy_only=False).astype(np.int64)
    dst = edges.column("dst").to_numpy(zero_copy_only=False).astype(np.int64)
    top = int(max(src.max(), dst.max(), pairs.max())) + 1
    keys = np.minimum(src, dst) * top + np.maximum(src, dst)
    return edges.filter(pa.array(~np.isin(keys, pairs[:, 0] * top + pairs[:, 1])))


def read_lp_split(path: Path) -> pa.Table:
    """An lp_split.parquet file (split, src, dst, negatives; n_hard when present)."""
    _require_columns(path, LP_COLUMNS)
    return pq.read_table(path)


def read_training_edges(path: Path, kinds: Optional[Sequence[str]] = None) -> pa.Table:
    """`read_edges` minus the held-out link-prediction pairs of an `lp_split.parquet` beside the edges file (a
    release's edges.parquet, or a copy of a release's folder given as --graph): the graph a run may train on."""
    edges = read_edges(path, kinds)
    split = Path(path).with_name(LP_SPLIT)
    return drop_pairs(edges, held_out_pairs(read_lp_split(split))) if split.is_file() else edges


class Release:
    """A release folder, opened for reading: `Release(path)` checks the manifest, the rest is read lazily."""

    def __init__(self, path: str | Path):
        location = str(path)
        if location.startswith("file://"):  # a local folder, read as one (symlink and file-type checks included)
            location = urllib.parse.unquote(urllib.parse.urlsplit(location).path)
        self.url: Optional[str] = None
        if remote.is_url(location):
            self.url = location.rstrip("/")
            self._open_remote()
        else:
            self.path = Path(location)
            if not self.path.is_dir():
                raise ReleaseFileMissing(f"release {self.path}: not a folder")
        manifest = self._json(MANIFEST)
        if not isinstance(manifest, dict):
            raise ReleaseError(f"{self._where(MANIFEST)}: expected a JSON object")
        problems = schemas.check_schema_versions(manifest.get("schema_versions"), READS)
        if problems:
            raise ReleaseError(f"{self._where(MANIFEST)}: {'; '.join(problems)}; this trainer cannot read the "
                               f"release (rebuild it with the matching slip-etl, or use a matching trainer)")
        self.manifest: dict[str, Any] = manifest
        if self.url is not None:
            self._check_remote_files()
        self._nodes: Optional[dict[str, np.ndarray]] = None
        self._sizes: Optional[dict[str, int]] = None
        self._labels: Optional[dict[str, Any]] = None

    def __str__(self) -> str:
        return self.url or str(self.path)

    def __repr__(self) -> str:
        return f"Release({str(self)!r})"

    # ---- remote releases -----------------------------------------------------------------------------------
    def _open_remote(self) -> None:
        """Fetch the manifest of a release URL into its cache folder (always fresh: it says what the rest is)."""
        assert self.url is not None
        if remote.is_pipe(self.url):
            raise ReleaseError(f"--release {self.url}: a release is a folder or a URL, not a pipe: command "
                               f"(give its shards with --shards 'pipe:...')")
        problem = remote.backend_error(self.url, "--release")
        if problem is not None:
            raise ReleaseError(problem)
        self.path = remote.cache_root() / "releases" / hashlib.sha256(self.url.encode()).hexdigest()[:20]
        try:
            remote.download(self._url(MANIFEST), self.path / MANIFEST)
        except FileNotFoundError:
            raise ReleaseFileMissing(f"release {self.url}: no {MANIFEST} at {self._url(MANIFEST)}") from None
        except remote.stream_errors() as exc:
            raise ReleaseError(f"release {self.url}: cannot read {MANIFEST} ({type(exc).__name__}: {exc})") from None

    def _check_remote_files(self) -> None:
        """Every manifest path must be a normalised relative path: it becomes part of a URL under the release."""
        files = self.manifest.get("files")
        if not isinstance(files, dict):
            raise ReleaseError(f"{self._where(MANIFEST)}: 'files' must map relative paths to {{bytes, sha256}}")
        for rel in files:
            try:
                check_relpath(rel)
            except UnsafePath as exc:
                raise ReleaseError(f"{self._where(MANIFEST)}: {exc}; refusing to read this release") from None

    def _url(self, rel: str) -> str:
        assert self.url is not None
        return f"{self.url}/{urllib.parse.quote(rel) if remote.protocol(self.url) in ('http', 'https') else rel}"

    def _where(self, rel: str) -> str:
        return self._url(rel) if self.url is not None else str(self.path / rel)

    def _fetch(self, rel: str) -> Path:
        """The cached copy of a small remote file, downloaded when absent or not matching the manifest's sha256."""
        entry = self.manifest.get("files", {}).get(rel) if rel != MANIFEST else None
        if rel != MANIFEST and not isinstance(entry, dict):
            raise ReleaseFileMissing(f"release {self.url} has no {rel} (not in its {MANIFEST})")
        local = self.path / rel
        if rel == MANIFEST:
            return local
        expected = entry.get("sha256")
        if local.is_file() and expected is not None and file_sha256(local)[0] == expected:
            return local
        try:
            remote.download(self._url(rel), local)
        except FileNotFoundError:
            raise ReleaseFileMissing(f"release {self.url}: {self._url(rel)} not found") from None
        except remote.stream_errors() as exc:
            raise ReleaseError(f"release {self.url}: cannot read {rel} ({type(exc).__name__}: {exc})") from None
        if expected is not None and file_sha256(local)[0] != expected:
            local.unlink()
            raise ReleaseError(f"release {self.url}: {rel} does not match the sha256 in its {MANIFEST} "
                               f"(a changed or damaged copy on the server)")
        return local

    # ---- shards --------------------------------------------------------------------------------------------
    def shards(self, split: str) -> list[str]:
        """Paths of the split's shard tars (`shards/{split}-*.tar`, in name order); none is an error."""
        found = self._split_shards(split)
        if not found:
            raise ReleaseError(f"no {split}-*.tar shards in {self._where(SHARDS)}")
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
                raise ReleaseError(f"{self._where(SIZES)}: expected a mapping of shard name to sample count")
            self._sizes = dict(sorted(sizes.items()))
        if split is None:
            return dict(self._sizes)
        return {name: n for name, n in self._sizes.items() if name.startswith(f"{split}-")}

    def _split_shards(self, split: str) -> list[str]:
        if self.url is not None:  # the manifest's file list (paths checked when the release was opened)
            pattern = f"{SHARDS}/{split}-*.tar"
            return [self._url(rel) for rel in sorted(self.manifest["files"])
                    if fnmatch.fnmatchcase(rel, pattern) and rel.count("/") == 1]
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
        if not self._has(EDGES):
            raise ReleaseFileMissing(f"release {self} has no {EDGES}: --method {method} trains on the "
                                     f"product graph and needs it (use --method clip, or give --graph FILE)")
        self.lp_split()  # checked (schema version, columns) and, for a URL, cached beside the edges file
        return self._file(EDGES)

    def lp_split(self, split: Optional[str] = None) -> Optional[pa.Table]:
        """The fixed link-prediction split (lp_split.parquet: split, src, dst, negatives, n_hard), only `split`'s
        rows when given; None for a release built before it existed (evaluation then samples its own)."""
        if not self._has(LP_SPLIT):
            return None
        problems = schemas.check_schema_versions(self.manifest.get("schema_versions"), ["lp_split"])
        if problems:
            raise ReleaseError(f"{self._where(MANIFEST)}: {'; '.join(problems)}; this trainer cannot read its "
                               f"{LP_SPLIT}")
        table = read_lp_split(self._file(LP_SPLIT))
        if split is not None:
            table = table.filter(pc.equal(table.column("split"), split))
        return table

    def held_out_pairs(self) -> np.ndarray:
        """[H, 2] (lo, hi) pairs of every held-out link-prediction edge (val and test): never in a training graph."""
        return held_out_pairs(self.lp_split())

    def to_pyg(self, bank: Optional[str] = None, kinds: Optional[Sequence[str]] = None,
               include_held_out: bool = False, x: str = "both") -> Any:
        """The release as one `torch_geometric.data.Data` (see trainer.pyg_export for every attribute)."""
        from trainer.pyg_export import release_to_pyg

        return release_to_pyg(self, bank=bank, kinds=kinds, include_held_out=include_held_out, x=x)

    def edges(self, kinds: Optional[Sequence[str]] = None) -> pa.Table:
        """edges.parquet (src, dst, weight, kind; stored once per pair), only `kinds` when given."""
        return read_edges(self._file(EDGES), kinds)

    def table(self, rel: str, columns: Sequence[str]) -> pa.Table:
        """Named columns of one of the release's Parquet tables (nodes.parquet's texts, reviews.parquet), for
        readers beyond training such as `slip-train encode`; every column asked for must be there."""
        path = self._file(rel)
        _require_columns(path, columns)
        return pq.read_table(path, columns=list(columns))

    # ---- labels --------------------------------------------------------------------------------------------
    def labels(self) -> dict[str, Any]:
        """labels.json as written by the labels stage: level, classes [{id, name, count}], rule, dropped."""
        if self._labels is None:
            labels = self._json(LABELS)
            classes = labels.get("classes") if isinstance(labels, dict) else None
            if not isinstance(classes, list) or not all(isinstance(c, dict) and "id" in c and "name" in c
                                                        for c in classes):
                raise ReleaseError(f"{self._where(LABELS)}: 'classes' must be a list of {{id, name, count}}")
            self._labels = labels
        return self._labels

    def class_names(self) -> list[str]:
        """Class names by id (the zero-shot classes); ids must be exactly 0..C-1."""
        classes = self.labels()["classes"]
        by_id = {int(c["id"]): str(c["name"]) for c in classes}
        if sorted(by_id) != list(range(len(classes))):
            raise ReleaseError(f"{self._where(LABELS)}: class ids must be 0..{len(classes) - 1}, "
                               f"got {sorted(by_id)[:10]}")
        return [by_id[i] for i in range(len(classes))]

    # ---- files ---------------------------------------------------------------------------------------------
    def _has(self, rel: str) -> bool:
        return rel in self.manifest.get("files", {}) if self.url is not None else (self.path / rel).is_file()

    def _file(self, rel: str) -> Path:
        if self.url is not None:
            return self._fetch(rel)
        path = self.path / rel
        if not path.is_file():
            raise ReleaseFileMissing(f"release {self.path} has no {rel}")
        return path

    def _json(self, rel: str) -> Any:
        path = self._file(rel)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReleaseError(f"{self._where(rel)}: not valid JSON ({exc})") from None


def _require_columns(path: Path, columns: Sequence[str]) -> None:
    try:
        names = set(pq.read_schema(path).names)
    except (OSError, pa.ArrowException) as exc:
        raise ReleaseError(f"{path}: unreadable Parquet ({exc})") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise ReleaseError(f"{path}: no column {', '.join(map(repr, missing))} (the trainer reads "
                           f"{', '.join(columns)})")
