"""A release the real ETL built, loaded the ways the ecosystem loads data: `Release.to_pyg()` (a real
torch_geometric Data, run through a real GCNConv), Hugging Face `datasets` from the dataset card's configs (nodes
by split, the shards' own webdataset card, edges, lp_split), and plain `webdataset`; every count against
stats.json."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
import yaml

from etl.release.validate import validate_release
from helpers.training import MICRO_CONFIG
from slipio.hashing import file_sha256
from trainer.bank import load_bank
from trainer.config import TrainConfig
from trainer.encode import build_encode_config, encode_bank
from trainer.loop import Trainer
from trainer.release import Release, ReleaseError

BUILD = ["--set", "sources.sample.sample_products=150", "--set", "labels.min_class_size=5",
         "--set", "shards.max_samples=64", "--set", "release.lp_negatives=20"]
HF = {"train": "train", "val": "validation", "test": "test"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eco")
    proc = subprocess.run([sys.executable, "-m", "etl.cli", "build", "--category", "electronics", "--source",
                           "sample", "--out", str(out), "--no-progress", *BUILD], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def stats(built: Path) -> dict:
    return json.loads((built / "stats.json").read_text())


def test_pyg_data_matches_the_release(built: Path, stats: dict) -> None:
    from torch_geometric.data import Data

    data = Release(built).to_pyg()
    assert isinstance(data, Data) and data.num_nodes == stats["nodes"]
    assert {s: int(data[f"{s}_mask"].sum()) for s in ("train", "val", "test")} == stats["splits"]
    n_held = sum(stats["lp_split"]["edges"].values())
    assert data.edge_index.shape == (2, 2 * (stats["edges"]["total"] - n_held))  # both directions, held out gone
    assert data.edge_kinds == sorted(stats["edges"]["by_kind"]) and data.edge_type.max() < len(data.edge_kinds)
    assert data.edge_weight.shape == data.edge_type.shape == (data.edge_index.shape[1],)
    nodes = pq.read_table(built / "nodes.parquet")
    assert data.node_id.tolist() == nodes.column("node_id").to_pylist()
    assert data.asin == nodes.column("asin").to_pylist() and data.y.tolist() == nodes.column("label").to_pylist()
    assert int(data.has_image.sum()) == stats["images"]["status_counts"]["ok"]
    assert data.is_undirected() and not data.has_self_loops()
    # edges name rows, not node ids: row -> node id -> the pair is an edge of edges.parquet
    edges = pq.read_table(built / "edges.parquet")
    pairs = {(min(a, b), max(a, b)) for a, b in zip(edges.column("src").to_pylist(), edges.column("dst").to_pylist())}
    ids = data.node_id
    assert all((min(a, b), max(a, b)) in pairs for a, b in ids[data.edge_index].T.tolist())
    for split in ("val", "test"):
        lp = data[f"lp_{split}_edge_index"]
        assert lp.shape == (2, stats["lp_split"]["edges"][split])
        assert bool(data[f"{split}_mask"][lp[0]].all())  # queries of the split
        held = {(min(a, b), max(a, b)) for a, b in ids[lp].T.tolist()}
        assert held <= pairs and not held & {(min(a, b), max(a, b)) for a, b in ids[data.edge_index].T.tolist()}
        assert data[f"lp_{split}_negatives"].shape[0] == lp.shape[1]
    full = Release(built).to_pyg(include_held_out=True)
    assert full.edge_index.shape[1] == 2 * stats["edges"]["total"]
    with pytest.raises(ReleaseError, match="x='pixels'"):
        Release(built).to_pyg(x="pixels")


def test_pyg_x_from_an_attached_bank(built: Path, tmp_path: Path) -> None:
    from torch_geometric.nn import GCNConv

    release = tmp_path / "release"
    shutil.copytree(built, release)
    (tmp_path / "micro.json").write_text(json.dumps(MICRO_CONFIG))
    Trainer(TrainConfig(release=str(release), model=str(tmp_path / "micro.json"), method="clip", batch_size=16,
                        workers=0, steps=1, warmup=1, seed=0, out=str(tmp_path / "run"))).run()
    encode_bank(build_encode_config(release=str(release), image_encoder=f"run:{tmp_path / 'run'}",
                                    text_encoder=f"run:{tmp_path / 'run'}", out=str(release / "embeddings" / "tiny"),
                                    progress=False))
    data = Release(release).to_pyg(bank="tiny")
    bank = load_bank(release / "embeddings" / "tiny", release)
    dim = MICRO_CONFIG["embed_dim"]
    assert data.x.shape == (data.num_nodes, 2 * dim) and data.x.dtype == torch.float32
    rows = bank.rows(data.node_id.numpy())
    assert torch.equal(data.x_text, torch.from_numpy(np.asarray(bank.text[rows], np.float32)))
    assert torch.equal(data.x[:, dim:], data.x_image) and torch.equal(data.image_mask, data.has_image)
    assert Release(release).to_pyg(bank="tiny", x="image").x.shape == (data.num_nodes, dim)
    out = GCNConv(2 * dim, 8)(data.x, data.edge_index, data.edge_weight)  # a real PyG layer takes it as is
    assert out.shape == (data.num_nodes, 8) and torch.isfinite(out).all()


HF_SCRIPT = textwrap.dedent("""
    import json, sys
    import datasets
    release, cache = sys.argv[1], sys.argv[2]
    counts = {}
    for name, path in (("nodes", release), ("edges", release), ("lp_split", release), ("shards", release + "/shards")):
        loaded = datasets.load_dataset(path, None if name == "shards" else name, cache_dir=cache)
        counts[name] = {split: ds.num_rows for split, ds in loaded.items()}
    shards = datasets.load_dataset(release + "/shards", cache_dir=cache)
    first = shards["test"][0]
    counts["sample"] = {"keys": sorted(k for k in first if not k.startswith("__")), "json": first["json"],
                        "image": list(first["jpg"].size)}
    nodes = datasets.load_dataset(release, "nodes", cache_dir=cache)
    counts["test_splits"] = sorted(set(nodes["test"]["split"]))
    print(json.dumps(counts))
""")


def test_hf_datasets_loads_the_card_configs(built: Path, stats: dict, tmp_path: Path) -> None:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run([sys.executable, "-c", HF_SCRIPT, str(built), str(tmp_path / "cache")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["nodes"] == {HF[s]: n for s, n in stats["splits"].items()}
    assert counts["shards"] == {HF[s]: v["samples"] for s, v in stats["shards"].items()}
    assert counts["edges"] == {"train": stats["edges"]["total"]}
    assert counts["lp_split"] == {"train": sum(stats["lp_split"]["edges"].values())}
    assert counts["sample"]["keys"] == ["jpg", "json", "txt"] and counts["sample"]["json"]["split"] == "test"
    assert counts["test_splits"] == ["test"]


def test_plain_webdataset_reads_every_shard(built: Path, stats: dict) -> None:
    release = Release(built)
    status = dict(zip(release.nodes()["node_id"].tolist(), release.nodes()["image_status"].tolist()))
    split_of = dict(zip(release.nodes()["node_id"].tolist(), release.nodes()["split"].tolist()))
    for split, want in stats["shards"].items():
        dataset = wds.WebDataset(release.shards(split), shardshuffle=False).decode("pil").to_tuple("jpg", "txt",
                                                                                                   "json")
        seen = Counter()
        for image, caption, meta in dataset:
            assert image.size[0] > 0 and caption.strip()
            assert meta["split"] == split == split_of[meta["node_id"]] and status[meta["node_id"]] == "ok"
            seen[meta["node_id"]] += 1
        assert sum(seen.values()) == len(seen) == want["samples"]


def _front_matter(card: Path) -> dict:
    text = card.read_text()
    return yaml.safe_load(text[4:text.index("\n---", 4)])


def test_card_configs_and_split_files_are_validated(built: Path, tmp_path: Path) -> None:
    configs = {c["config_name"]: c for c in _front_matter(built / "README.md")["configs"]}
    assert set(configs) == {"nodes", "edges", "reviews", "lp_split"} and configs["nodes"]["default"] is True
    assert [f["split"] for f in configs["nodes"]["data_files"]] == ["train", "validation", "test"]
    shard_configs = _front_matter(built / "shards" / "README.md")["configs"]
    assert [f["path"] for f in shard_configs[0]["data_files"]] == ["train-*.tar", "val-*.tar", "test-*.tar"]

    release = tmp_path / "release"
    shutil.copytree(built, release)
    part = release / "splits" / "nodes-test.parquet"
    table = pq.read_table(part)
    pq.write_table(table.slice(1), part)  # one test node short
    manifest = json.loads((release / "manifest.json").read_text())
    digest, size = file_sha256(part)
    manifest["files"]["splits/nodes-test.parquet"] = {"bytes": size, "sha256": digest}
    (release / "manifest.json").write_text(json.dumps(manifest))
    problems = validate_release(release)
    assert len(problems) == 1 and problems[0].startswith("splits/nodes-test.parquet: holds"), problems

    part.unlink()  # now the card's nodes config names a file that is gone
    del manifest["files"]["splits/nodes-test.parquet"]
    (release / "manifest.json").write_text(json.dumps(manifest))
    problems = validate_release(release)
    assert problems == ["README.md: config 'nodes': 'splits/nodes-test.parquet' matches no file of the release"]
