"""Stage `labels`: the level rule on hand-made category paths, rare classes, the error when nothing is usable,
stratified deterministic splits, and the stage through the real framework."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

import schemas
from etl.core.stage import StageError
from etl.harness import adopt_stage, load_config, make_opts, run
from etl.stages.labels import (
    SPLITS,
    assess_level,
    choose_level,
    classes_at,
    stratified_split,
)
from helpers.tables import write_nodes, write_quarantine

RULE = {"min_class_size": 10, "min_classes": 3, "max_classes": 10, "min_coverage": 0.6}


def paths_from(groups: dict[tuple[str, ...], int]) -> pl.Series:
    return pl.Series("category_path", [list(p) for p, n in groups.items() for _ in range(n)],
                     dtype=pl.List(pl.String))


def levels(paths: pl.Series, candidates=(1, 2), **rule) -> dict[int, dict]:
    return {lv: assess_level(classes_at(paths, lv), **{**RULE, **rule}) for lv in candidates}


def test_classes_are_path_prefixes():
    paths = pl.Series([["E", "A", "X"], ["E", "B", "X"], ["E"], []], dtype=pl.List(pl.String))
    assert classes_at(paths, 2).to_list() == ["E > A > X", "E > B > X", None, None]
    assert classes_at(paths, 0).to_list() == ["E", "E", "E", None]


def test_balanced_level_beats_unbalanced_one():
    # level 1: 4 classes of 30 (balanced); level 2: 6 classes of 10 to 30 (less balanced)
    paths = paths_from({("E", "A", "a1"): 20, ("E", "A", "a2"): 10, ("E", "B", "b1"): 30,
                        ("E", "C", "c1"): 15, ("E", "C", "c2"): 15, ("E", "D", "d1"): 30})
    per_level = levels(paths)
    assert per_level[1]["entropy"] == pytest.approx(1.0)
    assert per_level[1]["usable"] and per_level[2]["usable"]
    assert per_level[2]["entropy"] < per_level[1]["entropy"]
    assert choose_level(per_level) == 1


def test_deeper_level_wins_when_more_balanced():
    # level 1: 3 classes 60/20/20; level 2 splits the big one: 5 classes of 20
    paths = paths_from({("E", "A", "a1"): 20, ("E", "A", "a2"): 20, ("E", "A", "a3"): 20,
                        ("E", "B", "b1"): 20, ("E", "C", "c1"): 20})
    per_level = levels(paths)
    assert per_level[2]["entropy"] == pytest.approx(1.0)
    assert per_level[1]["entropy"] < 0.99
    assert choose_level(per_level) == 2


def test_ties_go_to_the_shallower_level():
    paths = paths_from({("E", g, g.lower()): 15 for g in "ABCD"})  # level 2 refines nothing
    per_level = levels(paths)
    assert per_level[1]["entropy"] == per_level[2]["entropy"]
    assert choose_level(per_level) == 1


def test_rare_classes_and_missing_depth_are_unlabeled():
    paths = paths_from({("E", "A"): 12, ("E", "B"): 12, ("E", "C"): 12, ("E", "D"): 4, ("E",): 5})
    info = levels(paths, candidates=(1,))[1]
    assert info["usable_classes"] == 3 and info["classes"] == 4 and info["no_category"] == 5
    assert info["_rare"] == {"E > D": 4}
    assert info["coverage"] == pytest.approx(36 / 45)


def test_no_usable_level_names_what_was_found_and_the_keys():
    paths = paths_from({("E", "A", "x"): 50, ("E", "B", "y"): 5})
    per_level = levels(paths)
    assert not any(i["usable"] for i in per_level.values())
    with pytest.raises(StageError) as err:
        choose_level(per_level)
    message = str(err.value)
    for needle in ("level 1: 1 classes", "level 2: 1 classes", "coverage", "labels.min_class_size",
                   "labels.min_classes", "labels.max_classes", "labels.min_coverage", "labels.levels"):
        assert needle in message


def test_too_many_classes_is_not_usable():
    paths = paths_from({("E", f"G{i:02d}"): 10 for i in range(12)})
    assert not levels(paths, candidates=(1,))[1]["usable"]  # 12 > max_classes 10


def test_stratified_split_fractions_per_class_and_determinism():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(-1, 7), [37, 500, 251, 120, 64, 33, 11, 3])
    rng.shuffle(labels)
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    split = stratified_split(labels, fractions, seed=3)
    for label in np.unique(labels):
        members = split[labels == label]
        for i, name in enumerate(SPLITS):
            # largest remainder: each split gets floor or ceil of its exact share
            assert abs((members == i).sum() - len(members) * fractions[name]) < 1
    assert np.array_equal(split, stratified_split(labels, fractions, seed=3))
    assert not np.array_equal(split, stratified_split(labels, fractions, seed=4))
    whole = np.bincount(split, minlength=3) / len(split)
    assert np.allclose(whole, [0.8, 0.1, 0.1], atol=0.01)


# ----------------------------------------------------------------------------------------------- the stage

def run_labels(tmp_path: Path, paths: list[list[str]], kept: np.ndarray, *overrides: str):
    cfg = load_config(overrides=list(overrides))
    opts = make_opts(tmp_path / "out", source="amazon-2018")
    fx = tmp_path / "fx"
    fx.mkdir(parents=True, exist_ok=True)
    (fx / "meta.json.gz").write_bytes(b"")
    adopt_stage(cfg, opts, "fetch", {"metadata": fx / "meta.json.gz"})
    adopt_stage(cfg, opts, "nodes", {"nodes": write_nodes(fx / "nodes.parquet", len(paths), paths=paths),
                                     "quarantine": write_quarantine(fx / "quarantine.parquet")})
    node_filter = pl.DataFrame({"node_id": np.arange(len(paths), dtype=np.int64), "kept": kept,
                                "reason": [None if k else "k_core" for k in kept]},
                               schema_overrides={"reason": pl.String})
    pq.write_table(schemas.conform(node_filter.to_arrow(), "node_filter"), fx / "node_filter.parquet")
    pq.write_table(schemas.arrow_schema("edges").empty_table(), fx / "edges.parquet")
    adopt_stage(cfg, opts, "edges", {"edges": fx / "edges.parquet", "node_filter": fx / "node_filter.parquet"})
    record = run(cfg, opts, "labels")["labels"]
    table = pl.read_parquet(opts.dataset_root / record["outputs"]["node_labels"]["path"])
    report = json.loads((opts.dataset_root / record["outputs"]["labels"]["path"]).read_text())
    return record, table, report


def test_stage_labels_kept_nodes_only(tmp_path):
    groups = {"Cameras": 60, "Audio": 50, "TV": 40, "Phones": 30, "Rare": 5}
    paths = [["Electronics", g, f"{g} sub {int(i % 5 == 0)}"] for g, n in groups.items() for i in range(n)]
    paths += [["Electronics"]] * 10
    kept = np.ones(len(paths), bool)
    kept[::7] = False
    record, table, report = run_labels(tmp_path, paths, kept, "labels.min_class_size=15", "labels.levels=[1,2]")
    assert schemas.validate_table(table.to_arrow(), "node_labels") == []
    assert table["node_id"].to_list() == np.flatnonzero(kept).tolist()
    assert report["level"] == 1
    assert [c["name"] for c in report["classes"]] == sorted(f"Electronics > {g}" for g in groups if g != "Rare")
    assert [c["id"] for c in report["classes"]] == [0, 1, 2, 3]
    assert report["dropped"] == {"Electronics > Rare": int(kept[180:185].sum())}
    counts = {c["name"]: c["count"] for c in report["classes"]}
    named = table.filter(pl.col("label") >= 0).group_by("label_name").len()
    assert dict(named.iter_rows()) == counts
    assert table.filter(pl.col("label") < 0)["label_name"].null_count() == (table["label"] < 0).sum()
    assert set(report["per_level"]) == {"1", "2"} and report["rule"]["min_class_size"] == 15
    total = sum(sum(v.values()) for v in report["split_counts"].values())
    assert total == table.height
    c = record["counts"]
    assert c["input"] == c["kept"] == int(kept.sum())
    # the same inputs and seed give the same labels and splits
    _, again, _ = run_labels(tmp_path / "again", paths, kept, "labels.min_class_size=15", "labels.levels=[1,2]")
    assert again.equals(table)


def test_stage_labels_error_when_no_level_is_usable(tmp_path):
    paths = [["Electronics", "Only", "One"]] * 50
    with pytest.raises(StageError, match="labels.min_classes"):
        run_labels(tmp_path, paths, np.ones(50, bool))
