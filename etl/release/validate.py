"""`slip-etl validate`: everything a consumer of a release relies on, checked from the folder alone.

Checks: the manifest lists every file with its bytes and sha256 (and nothing else is there), each under a safe
path (`slipio.paths.resolve_inside`: relative, normalised, inside the release, a regular file, no symlink on the
way; the folder holds nothing but regular files and folders), and records the schema versions this code reads
(same MAJOR, `schemas.check_schema_versions`); its name and version agree with the folder's name
(`releases/<version>/`) and the dataset card; every table matches its schema;
every shard is a complete tar whose samples have exactly a jpg, txt and json member, valid sample JSON and a JPEG
that PIL opens and verifies and that ends with its end-of-image marker (a full decode of every image would take
far longer than everything else); sizes.json matches the tars; referential integrity (edge endpoints
and review products are nodes, every node with image_status ok is in exactly one shard of its own split, no key
twice, labels.json names the node table's classes); the fixed link-prediction split `lp_split.parquet` (required
from release stage VERSION 2 on, per the manifest's provenance: its schema, each query in its row's split, each
held-out pair an edge, negatives distinct nodes that are neither the query nor its neighbours);
`splits/nodes-*.parquet` hold exactly their split's rows of nodes.parquet, and every file pattern of the cards'
`configs:` matches a file;
embedding banks attached as `embeddings/NAME/` are signed by their own bank.json instead of the manifest and
checked against it and the release's nodes (schemas/bank.py). The result is a list of readable problem lines,
empty when the release is valid; each kind of problem is listed at most MAX_PER_KIND times, then counted, so a
badly broken release stays readable.
"""
from __future__ import annotations

import io
import json
import os
import re
import stat
import tarfile
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from PIL import Image

import schemas
from schemas import bank as bank_contract
from slipio.atomic import TMP_MARK
from slipio.hashing import file_sha256
from slipio.paths import UnsafePath, resolve_inside

MAX_PER_KIND = 20
TABLES = {"nodes.parquet": "release_nodes", "edges.parquet": "edges", "reviews.parquet": "reviews"}
SHARD_NAME = re.compile(r"^(train|val|test)-(\d{6})\.tar$")
MEMBERS = ("jpg", "txt", "json")
CARD = "README.md"
SHARD_CARD = "shards/README.md"  # the shards' own card (a webdataset config; etl/release/card.py says why)
LP_SPLIT = "lp_split.parquet"
LP_SPLITS = ("val", "test")
LP_SPLIT_SINCE = 2  # the release stage's VERSION that first wrote lp_split.parquet
SPLIT_NODES = re.compile(r"^splits/nodes-(train|validation|test)\.parquet$")
HF_TO_SPLIT = {"train": "train", "validation": "val", "test": "test"}


class _Problems:
    """Problem lines, capped per kind."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.counts: Counter[str] = Counter()

    def add(self, kind: str, line: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= MAX_PER_KIND:
            self.lines.append(line)

    def result(self) -> list[str]:
        extra = [f"... and {n - MAX_PER_KIND} more problem(s) of kind {kind!r}"
                 for kind, n in self.counts.items() if n > MAX_PER_KIND]
        return self.lines + extra


def validate_release(path: Path) -> list[str]:
    """Every way the release folder at `path` is broken, as readable lines (empty list = valid)."""
    root = Path(path)
    problems = _Problems()
    if not root.is_dir():
        return [f"{root}: not a folder"]
    manifest = _load_json(root, "manifest.json", problems)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        if manifest is not None:
            problems.add("manifest", "manifest.json: no 'files' mapping")
        return problems.result()
    banks = bank_contract.attached_banks(root)
    _check_files(root, manifest["files"], problems, _bank_owned(root, banks))
    _check_identity(root, manifest, problems)
    has_lp = _safe_file(root, LP_SPLIT) is not None
    read = [*TABLES.values(), "shard_sample", *(["lp_split"] if has_lp else [])]
    for line in schemas.check_schema_versions(manifest.get("schema_versions"), read):
        problems.add("schema_version", f"manifest.json: {line}")
    tables = {name: _read_table(_safe_file(root, name), schema, problems) for name, schema in TABLES.items()}
    nodes = tables["nodes.parquet"]
    if nodes is not None:
        _check_edges(tables["edges.parquet"], nodes, problems)
        _check_reviews(tables["reviews.parquet"], nodes, problems)
        _check_labels(root, nodes, problems)
        _check_lp_split(root, manifest, nodes, tables["edges.parquet"], problems)
        _check_split_nodes(root, nodes, problems)
    for card in (CARD, SHARD_CARD):
        _check_card_configs(root, card, problems)
    samples = _check_shards(root, problems)
    if nodes is not None and samples is not None:
        _check_shard_coverage(nodes, samples, problems)
    if nodes is not None:
        _check_banks(root, banks, nodes, manifest["files"], problems)
    return problems.result()


def _load_json(root: Path, rel: str, problems: _Problems) -> Any:
    path = _safe_file(root, rel)
    if path is None:
        if not os.path.lexists(root / rel):
            problems.add("missing", f"{rel}: missing")
        elif rel == "manifest.json":  # any other file that is not regular is reported by the walk
            problems.add("unsafe_path", f"{rel}: not a regular file")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.add("json", f"{rel}: not valid JSON ({exc})")
        return None


def _check_files(root: Path, files: dict[str, Any], problems: _Problems,
                 attached: frozenset[str] = frozenset()) -> None:
    for rel, meta in sorted(files.items()):
        try:
            p = resolve_inside(root, rel)
        except UnsafePath as exc:
            problems.add("unsafe_path", f"manifest.json: lists {rel!r}, which is not a safe release path "
                                        f"({exc.rule}); list only regular files inside the release")
            continue
        if not p.is_file():
            problems.add("missing", f"{rel}: listed in the manifest but missing")
            continue
        if not isinstance(meta, dict):
            problems.add("manifest", f"manifest.json: the entry for {rel} must be {{bytes, sha256}}")
            continue
        size = p.stat().st_size
        if size != meta.get("bytes"):
            problems.add("bytes", f"{rel}: size mismatch (manifest {meta.get('bytes')} bytes, file {size} bytes)")
            continue
        digest, _ = file_sha256(p)
        if digest != meta.get("sha256"):
            problems.add("sha256", f"{rel}: sha256 mismatch (manifest {str(meta.get('sha256'))[:12]}…, "
                                   f"file {digest[:12]}…)")
    for rel, mode in _walk(root):
        if not stat.S_ISREG(mode):
            if rel not in files:  # a listed one is already reported above
                problems.add("unsafe_path", f"{rel}: not a regular file ({_kind(mode)}); a release holds only "
                                            f"regular files and folders")
        elif rel != "manifest.json" and rel not in files and rel not in attached:
            problems.add("unlisted", f"{rel}: not listed in the manifest")


def _bank_owned(root: Path, banks: list[Path]) -> frozenset[str]:
    """Files of the attached embedding banks: signed by each bank's own bank.json, not by the release manifest
    (attaching a bank leaves the release's bytes as built); `_check_banks` checks them."""
    return frozenset(p.relative_to(root).as_posix() for folder in banks for p in folder.iterdir())


def _check_banks(root: Path, banks: list[Path], nodes: pa.Table, files: dict[str, Any], problems: _Problems) -> None:
    """Each bank under embeddings/NAME/ against its bank.json (schema, bytes, sha256, dtypes, dims) and against
    this release: exactly its node ids, encoded from its nodes.parquet (schemas/bank.py)."""
    meta = files.get("nodes.parquet")
    nodes_sha = meta.get("sha256") if isinstance(meta, dict) else None
    for folder in banks:
        rel = folder.relative_to(root).as_posix()
        for line in bank_contract.check_bank(folder, node_ids=_node_ids(nodes), nodes_sha256=nodes_sha):
            problems.add("bank", f"{rel}: {line}")


def _walk(root: Path) -> list[tuple[str, int]]:
    """(relative path, lstat mode) of everything under `root` except folders, never following a symlink."""
    found = []
    for folder, dirs, names in os.walk(root):  # os.walk does not descend into symlinked folders
        base = Path(folder)
        for name in [*dirs, *names]:
            mode = os.lstat(base / name).st_mode
            if not stat.S_ISDIR(mode):
                found.append(((base / name).relative_to(root).as_posix(), mode))
    return sorted(found)


def _kind(mode: int) -> str:
    return ("a symlink" if stat.S_ISLNK(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device file")


def _safe_file(root: Path, rel: str) -> Path | None:
    """`root / rel` when it is a regular file reached without a symlink; None otherwise (reported by the walk)."""
    try:
        path = resolve_inside(root, rel)
    except UnsafePath:
        return None
    return path if path.is_file() else None


def _is_real_dir(root: Path, rel: str) -> bool:
    try:
        return resolve_inside(root, rel, kind="dir").is_dir()
    except UnsafePath:
        return False


def _check_identity(root: Path, manifest: dict[str, Any], problems: _Problems) -> None:
    """The manifest's name and version agree with the release folder's name and the dataset card.

    Nothing else signs these two fields (manifest.json is not listed in itself), so a lone edit of either would
    otherwise pass. The folder name is checked in the build layout only (`releases/<version>/`, or the release
    stage's staging folder `.<version>.tmp-*` beside it); a published copy may live under any name.
    """
    name, version = manifest.get("name"), manifest.get("version")
    for key, value in (("name", name), ("version", version)):
        if not isinstance(value, str) or not value:
            problems.add("identity", f"manifest.json: '{key}' must be a non-empty string, got {value!r}")
    if not isinstance(name, str) or not isinstance(version, str):
        return
    folder = _folder_version(root)
    if folder is not None and folder != version:
        problems.add("identity", f"manifest.json: version {version!r} does not match the release folder's name "
                                 f"{folder!r}")
    card = _safe_file(root, CARD)
    if card is None:
        return
    for where, title in _card_titles(card.read_text(encoding="utf-8", errors="replace")):
        card_name, _, card_version = title.rpartition(" ")
        if card_version != version:
            problems.add("identity", f"manifest.json: version {version!r} does not match the card's {where} "
                                     f"({title!r}, version {card_version!r})")
        if card_name != name:
            problems.add("identity", f"manifest.json: name {name!r} does not match the card's {where} "
                                     f"({title!r}, name {card_name!r})")


def _folder_version(root: Path) -> str | None:
    """The version the folder's name states in the build layout, else None."""
    if root.resolve().parent.name != "releases":
        return None
    name = root.resolve().name
    if name.startswith(".") and TMP_MARK in name:  # the release stage's staging folder
        return name[1:].rsplit(TMP_MARK, 1)[0]
    return name


def _card_titles(text: str) -> list[tuple[str, str]]:
    """(where, "NAME VERSION") as the card states them: the front matter's pretty_name and the first heading."""
    titles = []
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        try:
            front = yaml.safe_load(text[4:end]) if end > 0 else None
        except yaml.YAMLError:
            front = None
        if isinstance(front, dict) and isinstance(front.get("pretty_name"), str):
            titles.append(("pretty_name", front["pretty_name"]))
    heading = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), None)
    if heading:
        titles.append(("title", heading))
    return titles


def _read_table(path: Path | None, schema: str, problems: _Problems) -> pa.Table | None:
    if path is None:
        return None  # already reported: missing, or not a regular file
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable table is one problem line
        problems.add("table", f"{path.name}: unreadable Parquet ({exc})")
        return None
    found = schemas.validate_table(table, schema)
    for line in found:
        problems.add("schema", f"{path.name}: {line}")
    return None if any("missing column" in line for line in found) else table


def _node_ids(nodes: pa.Table) -> np.ndarray:
    return nodes.column("node_id").to_numpy(zero_copy_only=False)


def _check_edges(edges: pa.Table | None, nodes: pa.Table, problems: _Problems) -> None:
    if edges is None:
        return
    ids = _node_ids(nodes)
    src = edges.column("src").to_numpy(zero_copy_only=False)
    dst = edges.column("dst").to_numpy(zero_copy_only=False)
    for end, values in (("src", src), ("dst", dst)):
        dangling = values[~np.isin(values, ids)]
        for v in np.unique(dangling)[:MAX_PER_KIND]:
            problems.add("dangling", f"edges.parquet: {end} {int(v)} is not a node")
        if len(np.unique(dangling)) > MAX_PER_KIND:
            problems.add("dangling", f"edges.parquet: {len(dangling)} rows with a dangling {end}")
    not_ordered = int((src >= dst).sum())
    if not_ordered:
        problems.add("edge_order", f"edges.parquet: {not_ordered} edge(s) without src < dst (self loops or "
                                   f"reversed)")


def _pair_keys(a: np.ndarray, b: np.ndarray, top: int) -> np.ndarray:
    return np.minimum(a, b).astype(np.int64) * top + np.maximum(a, b).astype(np.int64)


def _check_lp_split(root: Path, manifest: dict[str, Any], nodes: pa.Table, edges: pa.Table | None,
                    problems: _Problems) -> None:
    """lp_split.parquet against the node and edge tables (rule: etl/graph/lpsplit.py)."""
    path = _safe_file(root, LP_SPLIT)
    if path is None:
        if _release_stage_version(manifest) >= LP_SPLIT_SINCE and not os.path.lexists(root / LP_SPLIT):
            problems.add("missing", f"{LP_SPLIT}: missing (the release stage writes it since its version "
                                    f"{LP_SPLIT_SINCE})")
        return
    table = _read_table(path, "lp_split", problems)
    if table is None or edges is None:
        return
    split_of = dict(zip(nodes.column("node_id").to_pylist(), nodes.column("split").to_pylist()))
    ids = _node_ids(nodes)
    src = table.column("src").to_numpy(zero_copy_only=False)
    dst = table.column("dst").to_numpy(zero_copy_only=False)
    splits = table.column("split").to_pylist()
    e_src = edges.column("src").to_numpy(zero_copy_only=False)
    e_dst = edges.column("dst").to_numpy(zero_copy_only=False)
    top = int(max(ids.max(initial=0), e_src.max(initial=0), e_dst.max(initial=0),
                  src.max(initial=0), dst.max(initial=0))) + 1
    edge_keys = np.unique(_pair_keys(e_src, e_dst, top))
    for i in np.flatnonzero(~np.isin(_pair_keys(src, dst, top), edge_keys) | (src == dst)):
        problems.add("lp_split", f"{LP_SPLIT}: row {i}: held-out pair ({int(src[i])}, {int(dst[i])}) is not an edge "
                                 f"of edges.parquet")
    for i, (split, u) in enumerate(zip(splits, src.tolist())):
        if split not in LP_SPLITS:
            problems.add("lp_split", f"{LP_SPLIT}: row {i}: split {split!r} is not one of {', '.join(LP_SPLITS)}")
        elif split_of.get(u) != split:
            problems.add("lp_split", f"{LP_SPLIT}: row {i}: query {u} is in split {split_of.get(u)!r}, the row says "
                                     f"{split!r}")
    for end, values in (("dst", dst), ("src", src)):
        for v in np.unique(values[~np.isin(values, ids)])[:MAX_PER_KIND]:
            problems.add("dangling", f"{LP_SPLIT}: {end} {int(v)} is not a node")
    negatives = table.column("negatives")
    lengths = pc.list_value_length(negatives).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(negatives).to_numpy(zero_copy_only=False)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    query = src[owner]
    bad = (flat == query) | np.isin(_pair_keys(query, flat, max(top, int(flat.max(initial=0)) + 1)),
                                    _pair_keys(e_src, e_dst, max(top, int(flat.max(initial=0)) + 1)))
    for i in np.unique(owner[bad]):
        problems.add("lp_split", f"{LP_SPLIT}: row {i}: a negative of query {int(src[i])} is the query or one of its "
                                 f"neighbours")
    for v in np.unique(flat[~np.isin(flat, ids)])[:MAX_PER_KIND]:
        problems.add("dangling", f"{LP_SPLIT}: negative {int(v)} is not a node")
    if len(flat):
        per_row = np.unique(owner * (int(flat.max()) + 1) + flat).size
        if per_row != len(flat):
            problems.add("lp_split", f"{LP_SPLIT}: {len(flat) - per_row} negative(s) repeated within their row")
    over = np.flatnonzero(table.column("n_hard").to_numpy(zero_copy_only=False) > lengths)
    for i in over:
        problems.add("lp_split", f"{LP_SPLIT}: row {i}: n_hard exceeds the number of negatives")


def _release_stage_version(manifest: dict[str, Any]) -> int:
    """The VERSION of the release stage that wrote the folder (provenance.stage_versions), 0 when not recorded."""
    provenance = manifest.get("provenance")
    versions = provenance.get("stage_versions") if isinstance(provenance, dict) else None
    version = versions.get("release") if isinstance(versions, dict) else None
    return int(version) if isinstance(version, (str, int)) and str(version).isdigit() else 0


def _check_split_nodes(root: Path, nodes: pa.Table, problems: _Problems) -> None:
    """Each splits/nodes-<hf split>.parquet holds exactly its split's node ids, in node order."""
    folder = root / "splits"
    if not _is_real_dir(root, "splits"):
        return
    split = np.asarray(nodes.column("split").to_pylist(), dtype=object)
    for path in sorted(folder.glob("*.parquet")):
        rel = f"splits/{path.name}"
        match = SPLIT_NODES.match(rel)
        if match is None or _safe_file(root, rel) is None:
            continue  # an unsafe path is reported by the walk; another name is just a file the manifest lists
        table = _read_table(path, "release_nodes", problems)
        if table is None:
            continue
        want = _node_ids(nodes)[split == HF_TO_SPLIT[match.group(1)]]
        got = _node_ids(table)
        if not np.array_equal(np.sort(want), got):
            problems.add("split_nodes", f"{rel}: holds {len(got)} node(s), nodes.parquet has {len(want)} in split "
                                        f"{HF_TO_SPLIT[match.group(1)]!r} (not the same ids, or not in node order)")


def _check_card_configs(root: Path, rel: str, problems: _Problems) -> None:
    """Every path or pattern in a card's `configs:` matches at least one file beside or below the card (`datasets`
    refuses one that does not, so a config the card advertises would not load)."""
    card = _safe_file(root, rel)
    if card is None:
        return
    text = card.read_text(encoding="utf-8", errors="replace")
    end = text.find("\n---", 4)
    try:
        front = yaml.safe_load(text[4:end]) if text.startswith("---\n") and end > 0 else None
    except yaml.YAMLError:
        front = None
    configs = front.get("configs") if isinstance(front, dict) else None
    for config in configs if isinstance(configs, list) else []:
        if not isinstance(config, dict):
            continue
        files = config.get("data_files")
        entries = [files] if isinstance(files, str) else files if isinstance(files, list) else []
        for entry in entries:
            pattern = entry.get("path") if isinstance(entry, dict) else entry
            for one in [pattern] if isinstance(pattern, str) else pattern if isinstance(pattern, list) else []:
                if not isinstance(one, str) or ".." in one.split("/") or one.startswith("/") or \
                        not any(_safe_file(root, p.relative_to(root).as_posix()) for p in card.parent.glob(one)):
                    problems.add("card", f"{rel}: config {config.get('config_name')!r}: {one!r} matches no file "
                                         f"of the release")


def _check_reviews(reviews: pa.Table | None, nodes: pa.Table, problems: _Problems) -> None:
    if reviews is None:
        return
    rid = reviews.column("node_id").to_numpy(zero_copy_only=False)
    unknown = np.unique(rid[~np.isin(rid, _node_ids(nodes))])
    if len(unknown):
        problems.add("dangling", f"reviews.parquet: {len(unknown)} node_id(s) that are not nodes, e.g. "
                                 f"{unknown[:5].tolist()}")


def _check_labels(root: Path, nodes: pa.Table, problems: _Problems) -> None:
    labels = _load_json(root, "labels.json", problems)
    if labels is None:
        return
    classes = labels.get("classes") if isinstance(labels, dict) else None
    if not isinstance(classes, list) or not all(isinstance(c, dict) and "id" in c and "name" in c for c in classes):
        problems.add("labels", "labels.json: 'classes' must be a list of {id, name, count}")
        return
    names = {int(c["id"]): c["name"] for c in classes}
    used: dict[int, set[Any]] = defaultdict(set)
    for label, name in zip(nodes.column("label").to_pylist(), nodes.column("label_name").to_pylist()):
        if label is not None and label >= 0:
            used[label].add(name)
    for label in sorted(set(used) - set(names)):
        problems.add("labels", f"nodes.parquet: label {label} is not a class in labels.json")
    for label in sorted(set(names) - set(used)):
        problems.add("labels", f"labels.json: class {label} ({names[label]!r}) has no node")
    for label in sorted(set(used) & set(names)):
        if used[label] != {names[label]}:
            problems.add("labels", f"nodes.parquet: label {label} is named {sorted(map(str, used[label]))}, "
                                   f"labels.json says {names[label]!r}")


def _check_shards(root: Path, problems: _Problems) -> dict[int, list[tuple[str, str]]] | None:
    """Read every shard; returns node_id -> [(shard, split)] for the samples found (None without shards/)."""
    folder = root / "shards"
    if not os.path.lexists(folder):
        problems.add("missing", "shards/: missing")
        return None
    if not _is_real_dir(root, "shards"):
        problems.add("unsafe_path", "shards/: not a folder (a file or a symlink)")
        return None
    sizes = _load_json(root, "shards/sizes.json", problems)
    sizes = sizes if isinstance(sizes, dict) else {}
    tars = sorted(p.name for p in folder.glob("*.tar") if _safe_file(root, f"shards/{p.name}") is not None)
    for name in sorted(set(sizes) - set(tars)):
        problems.add("sizes", f"shards/sizes.json: lists {name}, which is missing")
    samples: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for name in tars:
        match = SHARD_NAME.match(name)
        if not match:
            problems.add("shard_name", f"shards/{name}: name is not {{train|val|test}}-NNNNNN.tar")
            continue
        found = _check_tar(folder / name, match.group(1), problems)
        if found is None:
            continue
        for node_id in found:
            samples[node_id].append((name, match.group(1)))
        if name not in sizes:
            problems.add("sizes", f"shards/sizes.json: {name} is not listed")
        elif sizes[name] != len(found):
            problems.add("sizes", f"shards/sizes.json: {name} has {len(found)} samples, sizes.json says "
                                  f"{sizes[name]}")
    return samples


def _check_tar(path: Path, split: str, problems: _Problems) -> list[int] | None:
    """node_ids of the complete samples of one shard, in order; None when the tar cannot be read."""
    rel = f"shards/{path.name}"
    size = path.stat().st_size
    if size % tarfile.BLOCKSIZE:
        problems.add("truncated", f"{rel}: truncated ({size} bytes is not a whole number of 512-byte blocks)")
        return None
    members: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                data = tar.extractfile(info).read() if info.isfile() else b""
                if not info.isfile() or len(data) != info.size:
                    problems.add("truncated", f"{rel}: member {info.name} is incomplete or not a file")
                    return None
                key, dot, ext = info.name.rpartition(".")
                if not dot or "." in key or "/" in key or ext not in MEMBERS:
                    problems.add("member", f"{rel}: unexpected member {info.name!r}")
                    continue
                if key not in members:
                    members[key] = {}
                    order.append(key)
                if ext in members[key]:
                    problems.add("member", f"{rel}: {info.name} appears twice")
                members[key][ext] = data
            end = tar.offset
    except (tarfile.TarError, OSError, EOFError) as exc:
        problems.add("truncated", f"{rel}: truncated or unreadable tar ({exc})")
        return None
    if size - end < 2 * tarfile.BLOCKSIZE:
        problems.add("truncated", f"{rel}: truncated (no end-of-archive blocks)")
        return None
    found = []
    for key in order:
        node_id = _check_sample(rel, key, members[key], split, problems)
        if node_id is not None:
            found.append(node_id)
    return found


def _check_sample(rel: str, key: str, members: dict[str, bytes], split: str, problems: _Problems) -> int | None:
    missing = [ext for ext in MEMBERS if ext not in members]
    if missing:
        problems.add("incomplete", f"{rel}: sample {key} lacks {', '.join('.' + m for m in missing)}")
        return None
    try:
        meta = json.loads(members["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.add("sample_json", f"{rel}: {key}.json is not valid JSON ({exc})")
        return None
    bad = schemas.validate_record(meta, "shard_sample")
    for line in bad:
        problems.add("sample_json", f"{rel}: {key}.json: {line}")
    if bad:
        return None
    if key != f"{meta['node_id']:010d}":
        problems.add("sample_json", f"{rel}: key {key} does not match node_id {meta['node_id']}")
    if meta["split"] != split:
        problems.add("split", f"{rel}: sample {key} has split {meta['split']!r} in a {split} shard")
    try:
        text = members["txt"].decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if not text or not text.strip():
        problems.add("caption", f"{rel}: {key}.txt is empty or not UTF-8")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(members["jpg"])) as img:
                if img.format != "JPEG":
                    raise ValueError(f"format {img.format}")
                img.verify()
            if not members["jpg"].endswith(b"\xff\xd9"):
                raise ValueError("no end-of-image marker (truncated)")
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad images
        problems.add("jpeg", f"{rel}: {key}.jpg is not a decodable JPEG ({exc})")
    return int(meta["node_id"])


def _check_shard_coverage(nodes: pa.Table, samples: dict[int, list[tuple[str, str]]], problems: _Problems) -> None:
    split_of = dict(zip(nodes.column("node_id").to_pylist(), nodes.column("split").to_pylist()))
    ok = {n for n, s in zip(nodes.column("node_id").to_pylist(), nodes.column("image_status").to_pylist())
          if s == "ok"}
    for node_id, places in sorted(samples.items()):
        if len(places) > 1:
            problems.add("duplicate", f"shards: key {node_id:010d} appears {len(places)} times "
                                      f"({', '.join(p for p, _ in places)})")
        if node_id not in split_of:
            problems.add("orphan", f"shards/{places[0][0]}: sample {node_id:010d} is not a node")
            continue
        if node_id not in ok:
            problems.add("orphan", f"shards/{places[0][0]}: sample {node_id:010d} has image_status other than ok")
        for shard, split in places:
            if split != split_of[node_id]:
                problems.add("split", f"shards/{shard}: node {node_id} is in split {split_of[node_id]!r}")
    for node_id in sorted(ok - set(samples)):
        problems.add("coverage", f"nodes.parquet: node {node_id} has image_status ok but is in no shard")
