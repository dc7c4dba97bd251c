"""Embedding banks: frozen-encoder embeddings of every node of a release, written by `slip-train encode` and read
by the methods that train on stored features (CLIP-PING's neighbour targets, SAIL's alignment layers).

The format is the contract in `schemas/bank.py` (bank.json + fixed-width fp16 `.npy` arrays, row i = node
`node_id[i]`); this module writes it and opens it for training. `load_bank(path, release)` refuses a bank that
does not fit the release it is used with (other node ids, another nodes.parquet, a changed file), so a method
never pairs embeddings with the wrong products.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

import schemas
from schemas import bank as contract
from slipio import atomic
from trainer.config import TrainSetupError
from trainer.release import NODES, Release


class BankError(TrainSetupError):
    """The bank cannot be used as asked (broken, or built for another release): the CLIs exit 2 with it."""


@dataclass
class Bank:
    """An opened bank: memory-mapped arrays (nothing is read until used) and its manifest."""

    path: Path
    manifest: dict[str, Any]
    node_id: np.ndarray  # int64 [N], ascending
    text: np.ndarray  # float16 [N, text_dim]
    image: np.ndarray  # float16 [N, image_dim]; zero rows where image_mask is False
    image_mask: np.ndarray  # bool [N]: the node has an image embedding

    @property
    def image_dim(self) -> int:
        return int(self.image.shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.text.shape[1])

    def rows(self, node_ids: np.ndarray) -> np.ndarray:
        """Row index of each node id (a batch's nodes -> bank rows); an id the bank lacks is a BankError."""
        node_ids = np.asarray(node_ids, dtype=np.int64)
        rows = np.searchsorted(self.node_id, node_ids)
        rows = np.minimum(rows, len(self.node_id) - 1)
        bad = self.node_id[rows] != node_ids if len(self.node_id) else np.ones(len(node_ids), bool)
        if bad.any():
            raise BankError(f"bank {self.path}: no row for node id(s) {node_ids[bad][:5].tolist()}")
        return rows


def release_nodes_sha256(release: Release) -> str:
    """nodes.parquet's sha256 as the release manifest records it (the bank's link to the table it encoded)."""
    meta = release.manifest.get("files", {}).get(NODES)
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
        raise BankError(f"release {release.path}: manifest.json records no sha256 for {NODES}")
    return meta["sha256"]


def load_bank(path: Union[str, Path], release: Union[Release, str, Path], verify_hashes: bool = True) -> Bank:
    """Open the bank at `path` for use with `release`; BankError naming the bank when it does not fit.

    Checked (schemas/bank.py): the manifest against its schema, each array's bytes and sha256 (`verify_hashes`),
    dtypes, shapes and dims, and that its node ids are exactly the release's and came from its nodes.parquet.
    """
    path = Path(path)
    release = release if isinstance(release, Release) else Release(release)
    problems = contract.check_bank(path, node_ids=release.nodes()["node_id"],
                                   nodes_sha256=release_nodes_sha256(release), verify_hashes=verify_hashes)
    if problems:
        raise BankError(f"bank {path} cannot be used with release {release.path}: {'; '.join(problems)}")
    manifest, _ = contract.read_manifest(path)
    arrays = {name: np.load(path / name, mmap_mode="r", allow_pickle=False) for name in contract.ARRAYS}
    return Bank(path=path, manifest=manifest or {}, node_id=arrays["node_id.npy"], text=arrays["text.npy"],
                image=arrays["image.npy"], image_mask=arrays["image_mask.npy"])


def save_npy(path: Path, array: np.ndarray) -> None:
    """One array as .npy, atomically (a killed encode never leaves a half file under a final name)."""
    with atomic.atomic_open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def write_bank(folder: Path, arrays: dict[str, np.ndarray], fields: dict[str, Any]) -> dict[str, Any]:
    """Write the four arrays, then bank.json (last: a folder with a bank.json holds a whole bank); returns it.

    `fields`: the manifest fields other than schema, schema_version and files (see embedding_bank.json).
    """
    folder = Path(folder)
    if set(arrays) != set(contract.ARRAYS):
        raise ValueError(f"a bank has exactly the arrays {sorted(contract.ARRAYS)}, got {sorted(arrays)}")
    files = {}
    for name in contract.ARRAYS:
        save_npy(folder / name, arrays[name])
        files[name] = {"bytes": (folder / name).stat().st_size, "sha256": contract.sha256_file(folder / name)}
    manifest = {"schema": contract.SCHEMA, "schema_version": schemas.load_schema(contract.SCHEMA)["version"],
                **fields, "files": files}
    problems = schemas.validate_record(manifest, contract.SCHEMA)
    if problems:  # a writer bug, not bad input
        raise ValueError(f"bank manifest departs from its schema: {problems}")
    atomic.write_json(folder / contract.MANIFEST, manifest, sort_keys=True)
    return manifest
