"""The embedding-bank contract, checked from the folder alone: one reader for both wings.

`slip-train encode` writes a bank (trainer/bank.py), `slip-etl validate` checks one attached to a release
(`REL/embeddings/NAME/`), and the trainer's `load_bank` refuses one that does not fit its release; all three go
through `check_bank`, so the format is interpreted in one place. Layout of a bank folder:

    bank.json       manifest (schema embedding_bank.json): encoders, dims, release identity, files {bytes, sha256}
    node_id.npy     int64 [N], strictly ascending: exactly the release's node ids
    text.npy        float16 [N, text_dim]: every node has a text embedding
    image.npy       float16 [N, image_dim]: rows of nodes without an image are zero ...
    image_mask.npy  bool [N]: ... and false here (true = the row is a real image embedding)

Arrays are `.npy`, not Parquet: `np.load(mmap_mode="r")` opens one in constant time without decoding or copying
(a fixed-width fp16 matrix is the file), and `torch.from_numpy` takes it as is; Parquet would decode every page
and rebuild [N, D] from a list column. The file names are fixed, so nothing read from bank.json becomes a path.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Optional

import numpy as np

from schemas import load_schema, schema_major, validate_record

SCHEMA = "embedding_bank"
MANIFEST = "bank.json"
EMBEDDINGS = "embeddings"  # a release's banks: REL/embeddings/NAME/
#: file -> (dtype, ndim)
ARRAYS = {"node_id.npy": ("int64", 1), "text.npy": ("float16", 2), "image.npy": ("float16", 2),
          "image_mask.npy": ("bool", 1)}
EXAMPLES = 5  # ids shown in a mismatch message
_ROWS = 1 << 16  # rows per finiteness check: constant memory for banks of any size


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def attached_banks(release: Path) -> list[Path]:
    """The bank folders attached to a release: REL/embeddings/NAME/ holding a bank.json (no symlink followed)."""
    folder = Path(release) / EMBEDDINGS
    if not _is_real_dir(folder):
        return []
    return sorted(p for p in folder.iterdir() if _is_real_dir(p) and _is_regular(p / MANIFEST))


def read_manifest(folder: Path) -> tuple[Optional[dict[str, Any]], list[str]]:
    """(bank.json as a dict, problems); the dict is None when it cannot be used at all."""
    path = Path(folder) / MANIFEST
    if not _is_regular(path):
        return None, [f"{MANIFEST}: missing or not a regular file (an unfinished `slip-train encode`?)"]
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [f"{MANIFEST}: not valid JSON ({exc})"]
    problems = [f"{MANIFEST}: {line}" for line in validate_record(manifest, SCHEMA)]
    if problems:
        return None, problems
    if manifest["schema"] != SCHEMA:
        return None, [f"{MANIFEST}: schema is {manifest['schema']!r}, not {SCHEMA!r}"]
    want = load_schema(SCHEMA)["version"]
    if schema_major(manifest["schema_version"]) != schema_major(want):
        return None, [f"{MANIFEST}: schema_version {manifest['schema_version']} cannot be read by this code "
                      f"(it reads version {want}); re-encode the bank with this version"]
    return manifest, []


def check_bank(folder: Path, node_ids: Optional[np.ndarray] = None, nodes_sha256: Optional[str] = None,
               verify_hashes: bool = True) -> list[str]:
    """Every way the bank at `folder` is broken or does not fit its release, as readable lines (empty = valid).

    `node_ids`: the release's node ids (the bank must hold exactly these); `nodes_sha256`: the release's
    nodes.parquet digest from its manifest (the bank must have been encoded from that table).
    """
    folder = Path(folder)
    if not _is_real_dir(folder):
        return [f"{folder}: not a folder (or a symlink)"]
    manifest, problems = read_manifest(folder)
    if manifest is None:
        return problems
    problems += _check_listing(folder, manifest, verify_hashes)
    if problems:
        return problems
    arrays = {name: np.load(folder / name, mmap_mode="r", allow_pickle=False) for name in ARRAYS}
    problems += _check_arrays(arrays, manifest)
    if problems:
        return problems
    if node_ids is not None:
        problems += node_id_problems(np.asarray(arrays["node_id.npy"]), np.asarray(node_ids))
    if nodes_sha256 is not None and manifest["release_nodes_sha256"] != nodes_sha256:
        problems.append(f"encoded from another nodes.parquet (bank: {manifest['release_nodes_sha256'][:12]}…, "
                        f"release: {nodes_sha256[:12]}…): re-encode the bank from this release")
    return problems


def node_id_problems(bank_ids: np.ndarray, release_ids: np.ndarray) -> list[str]:
    """One line when the bank's node ids are not exactly the release's, with counts and examples each way."""
    release_ids = np.unique(release_ids)
    if len(bank_ids) == len(release_ids) and np.array_equal(bank_ids, release_ids):
        return []
    extra = np.setdiff1d(bank_ids, release_ids)
    missing = np.setdiff1d(release_ids, bank_ids)
    return [f"node ids do not match the release's nodes: {len(extra)} bank node(s) are not release nodes "
            f"(e.g. {extra[:EXAMPLES].tolist()}), {len(missing)} release node(s) have no row "
            f"(e.g. {missing[:EXAMPLES].tolist()}); the bank was encoded from another release: re-encode it "
            f"with `slip-train encode --release REL`"]


def _check_listing(folder: Path, manifest: dict[str, Any], verify_hashes: bool) -> list[str]:
    problems = []
    files = manifest["files"]
    if set(files) != set(ARRAYS):
        problems.append(f"{MANIFEST}: 'files' must list exactly {sorted(ARRAYS)}, got {sorted(files)}")
        return problems
    for entry in sorted(os.listdir(folder)):
        if entry != MANIFEST and entry not in ARRAYS:
            problems.append(f"{entry}: not part of a bank (a bank holds {MANIFEST} and {', '.join(ARRAYS)} only)")
    for name in ARRAYS:
        meta, path = files[name], folder / name
        if not _is_regular(path):
            problems.append(f"{name}: missing or not a regular file")
            continue
        if not isinstance(meta, dict):
            problems.append(f"{MANIFEST}: the entry for {name} must be {{bytes, sha256}}")
            continue
        size = path.stat().st_size
        if size != meta.get("bytes"):
            problems.append(f"{name}: size mismatch ({MANIFEST} {meta.get('bytes')} bytes, file {size} bytes)")
        elif verify_hashes and sha256_file(path) != meta.get("sha256"):
            problems.append(f"{name}: sha256 mismatch with {MANIFEST} (the file changed after encoding)")
    return problems


def _check_arrays(arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> list[str]:
    problems = []
    for name, (dtype, ndim) in ARRAYS.items():
        a = arrays[name]
        if a.dtype != np.dtype(dtype) or a.ndim != ndim:
            problems.append(f"{name}: {a.dtype} with {a.ndim} dimension(s), expected {dtype} with {ndim}")
    if problems:
        return problems
    n = manifest["n_nodes"]
    for name, a in arrays.items():
        if a.shape[0] != n:
            problems.append(f"{name}: {a.shape[0]} rows, {MANIFEST} says n_nodes {n}")
    for name, key in (("image.npy", "image_dim"), ("text.npy", "text_dim")):
        if arrays[name].shape[1] != manifest[key]:
            problems.append(f"{name}: width {arrays[name].shape[1]}, {MANIFEST} says {key} {manifest[key]}")
    if problems:
        return problems
    ids = arrays["node_id.npy"]
    if n > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        problems.append("node_id.npy: node ids must be unique and ascending")
    n_images = int(np.count_nonzero(arrays["image_mask.npy"]))
    if n_images != manifest["n_images"]:
        problems.append(f"image_mask.npy: {n_images} image rows, {MANIFEST} says n_images {manifest['n_images']}")
    for name in ("text.npy", "image.npy"):
        a = arrays[name]
        for start in range(0, n, _ROWS):
            if not bool(np.isfinite(a[start:start + _ROWS]).all()):
                problems.append(f"{name}: non-finite values (rows from {start})")
                break
    return problems


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
