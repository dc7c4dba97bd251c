"""The release's fixed link-prediction split (`lp_split.parquet`): the rule on a hand-made graph, the split of a
release the real ETL built, `slip-etl validate` on broken splits, the trainer's graph without the held-out edges,
and `slip-eval` scoring the fixed split (falling back to its sampled protocol without one)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from etl.graph.lpsplit import build_lp_split
from etl.release.validate import validate_release
from helpers.training import MICRO_CONFIG
from slipio.hashing import file_sha256
from trainer import evaluate
from trainer.config import TrainConfig
from trainer.loop import Trainer
from trainer.lp_eval import FixedLinkSplit, fixed_link_prediction_metrics
from trainer.release import Release

BUILD = ["--set", "sources.sample.sample_products=150", "--set", "labels.min_class_size=5",
         "--set", "shards.max_samples=64", "--set", "release.lp_negatives=20", "--set", "release.lp_hard_fraction=0.25"]


def slip_etl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etl.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=900)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A release the real ETL built from the embedded sample, 20 fixed negatives per query, a quarter hard."""
    out = tmp_path_factory.mktemp("lp")
    proc = slip_etl("build", "--category", "electronics", "--source", "sample", "--out", str(out), "--no-progress",
                    *BUILD)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def _adjacency(src, dst) -> dict[int, set[int]]:
    adj: dict[int, set[int]] = {}
    for a, b in zip(src, dst):
        adj.setdefault(int(a), set()).add(int(b))
        adj.setdefault(int(b), set()).add(int(a))
    return adj


def _check_rule(table: pa.Table, split_of: dict[int, str], label_of: dict[int, int], linkable: set[int],
                src: np.ndarray, dst: np.ndarray, k: int) -> None:
    """Every property the rule in etl/graph/lpsplit.py promises, checked row by row."""
    adj = _adjacency(src, dst)
    held = {(min(r["src"], r["dst"]), max(r["src"], r["dst"])) for r in table.to_pylist()}
    assert len(held) == table.num_rows  # each pair once
    left = {u: {v for v in nbrs if (min(u, v), max(u, v)) not in held} for u, nbrs in adj.items()}
    seen_queries = set()
    for row in table.to_pylist():
        u, v, negatives = row["src"], row["dst"], row["negatives"]
        assert row["split"] in ("val", "test") and split_of[u] == row["split"]
        assert u not in seen_queries and u in linkable and v in linkable
        seen_queries.add(u)
        assert v in adj[u]  # a real edge
        assert left[u] and left[v]  # both ends keep an edge in the training graph
        assert len(negatives) == len(set(negatives)) <= k
        assert not set(negatives) & (adj[u] | {u}) and set(negatives) <= linkable
        assert all(label_of[n] == label_of[u] for n in negatives[:row["n_hard"]])


def test_rule_on_a_hand_made_graph() -> None:
    rng = np.random.default_rng(1)
    n = 60
    node_ids = np.arange(n) * 2 + 5  # gaps, as after graph filters
    splits = np.asarray(["train", "val", "test"] * (n // 3), dtype=object)
    labels = np.arange(n) % 4
    status = np.asarray(["ok"] * (n - 6) + ["http_error"] * 6, dtype=object)
    pairs = {tuple(sorted(rng.choice(node_ids, 2, replace=False).tolist())) for _ in range(200)}
    src, dst = np.asarray(sorted(pairs)).T
    kinds_twice = (np.concatenate([src, src[:20]]), np.concatenate([dst, dst[:20]]))  # a pair in two kinds
    table = build_lp_split(node_ids, splits, labels, status, *kinds_twice, negatives=12, hard_fraction=0.5, seed=7)
    split_of = dict(zip(node_ids.tolist(), splits.tolist()))
    label_of = dict(zip(node_ids.tolist(), labels.tolist()))
    linkable = set(node_ids[status == "ok"].tolist())
    assert table.num_rows > 10 and set(table.column("split").to_pylist()) == {"val", "test"}
    _check_rule(table, split_of, label_of, linkable, src, dst, k=12)
    assert int(np.sum(table.column("n_hard").to_numpy())) > 0
    again = build_lp_split(node_ids, splits, labels, status, *kinds_twice, negatives=12, hard_fraction=0.5, seed=7)
    other = build_lp_split(node_ids, splits, labels, status, *kinds_twice, negatives=12, hard_fraction=0.5, seed=8)
    assert again.equals(table) and not other.equals(table)


def test_built_release_holds_a_valid_split(built: Path) -> None:
    stats = json.loads((built / "stats.json").read_text())
    table = pq.read_table(built / "lp_split.parquet")
    nodes = pq.read_table(built / "nodes.parquet").to_pylist()
    edges = pq.read_table(built / "edges.parquet")
    counts = {s: table.column("split").to_pylist().count(s) for s in ("val", "test")}
    assert counts == stats["lp_split"]["edges"] and min(counts.values()) > 0
    assert stats["lp_split"]["negatives"] == 20 and stats["lp_split"]["hard_negatives"] > 0
    _check_rule(table, {r["node_id"]: r["split"] for r in nodes}, {r["node_id"]: r["label"] for r in nodes},
                {r["node_id"] for r in nodes if r["image_status"] == "ok"}, edges.column("src").to_numpy(),
                edges.column("dst").to_numpy(), k=20)
    assert validate_release(built) == []
    assert "lp_split.parquet" in json.loads((built / "manifest.json").read_text())["files"]


def _resign(release: Path, rel: str) -> None:
    """Record a rewritten file's bytes in the manifest, so validate reports what is wrong inside it, not its hash."""
    manifest = json.loads((release / "manifest.json").read_text())
    digest, size = file_sha256(release / rel)
    manifest["files"][rel] = {"bytes": size, "sha256": digest}
    (release / "manifest.json").write_text(json.dumps(manifest))


def test_validate_reports_a_broken_split(built: Path, tmp_path: Path) -> None:
    release = tmp_path / "release"
    shutil.copytree(built, release)
    rows = pq.read_table(release / "lp_split.parquet").to_pylist()
    edges = pq.read_table(release / "edges.parquet")
    adj = _adjacency(edges.column("src").to_numpy(), edges.column("dst").to_numpy())
    nodes = pq.read_table(release / "nodes.parquet").to_pylist()
    neighbour = next(iter(adj[rows[0]["src"]] - {rows[0]["dst"]}))
    rows[0]["negatives"] = rows[0]["negatives"][:-1] + [neighbour]  # a negative that is an edge of the query
    stranger = next(r["node_id"] for r in nodes if r["node_id"] not in adj[rows[1]["src"]] | {rows[1]["src"]})
    rows[1]["dst"] = stranger  # a held-out pair that is not an edge
    wrong = "val" if rows[2]["split"] == "test" else "test"
    rows[2]["split"] = wrong  # a query outside its row's split
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(release / "lp_split.parquet")),
                   release / "lp_split.parquet")
    _resign(release, "lp_split.parquet")
    problems = validate_release(release)
    assert any("row 0: a negative of query" in p for p in problems), problems
    assert any(f"row 1: held-out pair ({rows[1]['src']}, {stranger}) is not an edge" in p for p in problems)
    assert any(f"row 2: query {rows[2]['src']} is in split" in p and repr(wrong) in p for p in problems)
    assert len(problems) == 3, problems
    done = slip_etl("validate", str(release))
    assert done.returncode == 1 and "lp_split.parquet" in done.stdout + done.stderr

    (release / "lp_split.parquet").unlink()  # a release stage of VERSION >= 2 always writes one
    manifest = json.loads((release / "manifest.json").read_text())
    del manifest["files"]["lp_split.parquet"]
    (release / "manifest.json").write_text(json.dumps(manifest))
    assert any(p.startswith("lp_split.parquet: missing") for p in validate_release(release))


def _micro_model(root: Path) -> str:
    path = root / "micro.json"
    path.write_text(json.dumps(MICRO_CONFIG))
    return str(path)


@pytest.fixture(scope="module")
def slip_run(built: Path, tmp_path_factory) -> tuple[Path, Trainer]:
    """A 2-step SLIP run on the built release, and its Trainer (whose CSR graph is the one the run trained on)."""
    root = tmp_path_factory.mktemp("lp-run")
    cfg = TrainConfig(release=str(built), model=_micro_model(root), method="slip", batch_size=16, workers=0,
                      steps=2, warmup=1, seed=0, out=str(root / "run"))
    trainer = Trainer(cfg)
    trainer.run()
    return root / "run", trainer


def test_trainer_graph_never_holds_held_out_edges(built: Path, slip_run) -> None:
    _, trainer = slip_run
    graph = trainer.graph
    held = Release(built).held_out_pairs()
    assert len(held) == pq.read_table(built / "lp_split.parquet").num_rows > 0
    for u, v in held.tolist():
        assert v not in graph.neighbors(u) and u not in graph.neighbors(v)
    edges = pq.read_table(built / "edges.parquet")
    pairs = {(min(a, b), max(a, b)) for a, b in zip(edges.column("src").to_pylist(), edges.column("dst").to_pylist())}
    assert graph.num_edges == len(pairs) - len(held)  # only those are missing
    # the in-batch graph of a batch holding both ends of every held-out pair links none of them
    ids = torch.as_tensor(held.ravel())
    edge_index, _ = graph.batch_edge_index(ids)
    linked = {(int(ids[a]), int(ids[b])) for a, b in edge_index.T.tolist()}
    assert not linked & {tuple(p) for p in held.tolist()}


def test_fixed_metrics_by_hand() -> None:
    emb = torch.eye(6)[[0, 0, 1, 0, 2, 3]].float()  # rows 0, 1 and 3 share a direction
    split = FixedLinkSplit(queries=np.asarray([10, 12]), positives=np.asarray([11, 14]),
                           negatives=np.asarray([[12, 13, 14], [13, 15, -1]]))
    rows = split.rows(np.asarray([10, 11, 12, 13, 14, 15]))
    out = fixed_link_prediction_metrics(emb, rows)
    # query 10 (row 0): positive 11 scores 1, negative 13 ties it -> rank 2; query 12 (row 2): positive 14 scores 0,
    # negatives 13 and 15 score 0 too (ties count against) -> rank 3; the padded slot is no negative
    assert out["lp_mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert (out["lp_hits@1"], out["lp_hits@3"], out["lp_hits@10"]) == (0.0, 1.0, 1.0)
    assert out["lp_n_queries"] == 2 and out["lp_short_negatives"] == 1


def test_slip_eval_scores_the_release_split(built: Path, slip_run, tmp_path: Path) -> None:
    run, _ = slip_run
    out = tmp_path / "eval.json"
    assert evaluate.main([str(run), "--release", str(built), "--split", "test", "--json", str(out),
                          "--batch-size", "32"]) == 0
    result = json.loads(out.read_text())
    n_test = pq.read_table(built / "lp_split.parquet").column("split").to_pylist().count("test")
    assert result["lp_protocol"] == "release"
    assert result["lp_held_out_edges"] == result["lp_n_queries"] == n_test  # one query per row, one direction
    for prefix in ("", evaluate.GRAPH_PREFIX):
        assert 0 <= result[f"{prefix}lp_hits@1"] <= result[f"{prefix}lp_hits@3"] <= result[f"{prefix}lp_hits@10"] <= 1
        assert 0 < result[f"{prefix}lp_mrr"] <= 1

    # the same run on a copy without the split (an older release): the sampled protocol, named as such
    old = tmp_path / "old"
    shutil.copytree(built, old)
    (old / "lp_split.parquet").unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["files"]["lp_split.parquet"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert evaluate.main([str(run), "--release", str(old), "--split", "test", "--json", str(out),
                          "--batch-size", "32"]) == 0
    sampled = json.loads(out.read_text())
    assert sampled["lp_protocol"] == "sampled"
    assert sampled["lp_n_queries"] == 2 * sampled["lp_held_out_edges"] > 0  # both ends of each sampled edge
