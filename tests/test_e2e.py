"""End to end through the real CLIs: `slip-etl build --source sample`, then `slip-train` (SLIP and CLIP) on the
release it built, `slip-eval` on its test split and `slip-eval compare` on both runs (the path of scripts/demo.sh,
at a few steps). The other trainer tests use a synthetic release; this one uses what the ETL writes."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # about 90 s on two idle cores

BUILD = ["--set", "sources.sample.sample_products=400", "--set", "labels.min_class_size=5",
         "--set", "shards.max_samples=64"]
TRAIN = ["--model", "slip-tiny", "--batch-size", "32", "--steps", "3", "--warmup", "0", "--workers", "0",
         "--seed", "0"]
EVAL = ["--split", "test", "--fewshot-pool", "100", "--lp-negatives", "20"]
METHODS = ("slip", "clip")
# two processes at a time on a small machine: one intra-op thread each
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def command(script: str) -> list[str]:
    """The installed console script (what a user runs)."""
    path = Path(sys.executable).with_name(script)
    assert path.is_file(), f"{script} is not installed next to {sys.executable} (pip install -e .)"
    return [str(path)]


def run_all(commands: list[list[str]], logs: Path, timeout: int = 400) -> list[str]:
    """Run the commands side by side, each with its output in files under `logs` (a full pipe would stall a
    process); each must succeed. Returns their stdouts."""
    logs.mkdir(parents=True, exist_ok=True)
    started = []
    try:
        for cmd in commands:
            stem = logs / f"{len(list(logs.glob('*.out'))):02d}-{Path(cmd[0]).name}"
            out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
            with out.open("w") as stdout, err.open("w") as stderr:
                started.append((cmd, out, err, subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=ENV)))
        for cmd, out, err, proc in started:
            status = proc.wait(timeout=timeout)
            assert status == 0, f"{' '.join(cmd)} exited {status}:\n{err.read_text()[-4000:]}"
    finally:
        for *_, proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [out.read_text() for _, out, _, _ in started]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e")
    logs = root / "logs"
    built, = run_all([[*command("slip-etl"), "build", "--category", "electronics", "--source", "sample",
                       "--out", str(root / "out"), "--no-progress", *BUILD]], logs)
    release = Path(built.strip().splitlines()[-1])
    runs = {method: root / "runs" / method for method in METHODS}
    run_all([[*command("slip-train"), "--release", str(release), "--method", method, *TRAIN, "--out", str(out)]
             for method, out in runs.items()], logs)
    run_all([[*command("slip-eval"), str(out), "--release", str(release), *EVAL,
              "--json", str(out / "eval-test.json")] for out in runs.values()], logs)
    run_all([[*command("slip-eval"), "compare", *map(str, runs.values()), "--out", str(root / "compare")]], logs)
    return {"release": release, "compare": root / "compare", **runs}


def test_eval_scores_the_whole_test_split_of_the_built_release(e2e: dict[str, Path]) -> None:
    sizes = json.loads((e2e["release"] / "shards" / "sizes.json").read_text())
    n_test = sum(n for name, n in sizes.items() if name.startswith("test-"))
    assert n_test > 0
    for method in METHODS:
        result = json.loads((e2e[method] / "eval-test.json").read_text())
        assert result["method"] == method and result["split"] == "test" and result["step"] == 3
        assert result["n_samples"] == n_test and result["skipped"] == 0
        for way in ("i2t", "t2i"):
            for key in ("R@1", "R@5", "R@10", "mrr"):
                assert 0.0 <= result[f"{way}_{key}"] <= 1.0, (method, way, key)
            assert result[f"{way}_R@1"] <= result[f"{way}_R@5"] <= result[f"{way}_R@10"]
            assert 1.0 <= result[f"{way}_median_rank"] <= n_test
        # a release built by the ETL ships lp_split.parquet: one query per held-out edge, against fixed negatives
        assert result["lp_protocol"] == "release"
        assert result["lp_n_queries"] == result["lp_held_out_edges"] > 0
        graph_keys = [key for key in result if key.startswith("graph_")]
        assert bool(graph_keys) == (method == "slip"), method  # graph-aware scores for SLIP only


def test_slip_run_trained_with_a_structural_loss_over_in_batch_neighbours(e2e: dict[str, Path]) -> None:
    slip = [json.loads(line) for line in (e2e["slip"] / "log.jsonl").read_text().splitlines()]
    clip = [json.loads(line) for line in (e2e["clip"] / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in slip] == [r["step"] for r in clip] == [1, 2, 3]
    assert all(math.isfinite(r["loss_struct"]) and r["loss_struct"] > 0 for r in slip)
    assert any(r["neighbor_frac"] > 0 for r in slip)  # the release's shard order puts neighbours in a batch
    assert all("loss_struct" not in r for r in clip)  # a method logs only its own terms
    assert [r["data_digest"] for r in slip] == [r["data_digest"] for r in clip]  # same seed, same batches


def test_compare_lists_both_runs(e2e: dict[str, Path]) -> None:
    table = (e2e["compare"] / "compare.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| metric"))
    assert [cell.strip() for cell in header.split("|")[1:4]] == ["metric", "slip", "clip"]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "i2t_R@1" in rows and "graph_i2t_R@1" in rows
    assert rows["graph_i2t_R@1"].rstrip(" |").endswith("n/a")  # CLIP has no graph-aware score
    for png in ("training_curves.png", "metrics.png"):
        assert (e2e["compare"] / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
