"""`slip-eval compare` on hand-made eval JSONs (two methods x three seeds): runs grouped by method, mean ± std,
deltas against the first method, wins paired by seed, housekeeping keys kept out of the headline tables, columns
as wide as their content, plots with error bars written."""
import json
import statistics
from pathlib import Path

import pytest

from trainer.cli import eval_main
from trainer.compare import group_runs, load_runs

SEEDS = (0, 1, 2)
# clip / slip scores per seed: slip wins i2t_R@1 on seeds 0 and 2, loses on 1; its mean rank is lower on all three
I2T = {"clip": (0.10, 0.20, 0.30), "slip": (0.15, 0.18, 0.40)}
RANK = {"clip": (12.0, 11.0, 10.0), "slip": (9.0, 10.5, 9.5)}


def write_run(root: Path, name: str, method: str, seed: int, i: int, side: str = "config.json") -> Path:
    run = root / name
    run.mkdir(parents=True)
    result = {"method": method, "split": "test", "step": 60, "n_samples": 290, "skipped": 0,
              "i2t_R@1": I2T[method][i], "t2i_R@1": 0.5, "i2t_mean_rank": RANK[method][i], "zeroshot_acc1": 0.25,
              "fewshot_16_acc1": 0.8, "fewshot_16_weight_decay": 1e-6, "fewshot_16_short_classes": 16,
              "lp_mrr": 0.07, "lp_n_queries": 336, "i2t_R@5": 0.6}
    if method == "slip":
        result.update({"graph_i2t_R@1": I2T[method][i] + 0.05, "graph_fewshot_16_weight_decay": 1e-4,
                       "graph_max_neighbors": 32})
    (run / "eval-test.json").write_text(json.dumps(result))
    (run / side).write_text(json.dumps({"method": method, "seed": seed}))
    return run


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    return [write_run(tmp_path / "runs", f"{m}-s{s}", m, s, i) for m in ("clip", "slip") for i, s in enumerate(SEEDS)]


def section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_runs_group_by_method_with_mean_std_and_paired_wins(runs, tmp_path, capsys):
    assert eval_main(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")]) == 0
    written = capsys.readouterr().out.split()
    assert {Path(p).name for p in written} == {"compare.md", "compare.json", "metrics.png"}  # no log.jsonl
    numbers = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert numbers["baseline"] == "clip" and list(numbers["groups"]) == ["clip", "slip"]
    slip = numbers["groups"]["slip"]
    assert slip["seeds"] == list(SEEDS)
    assert slip["mean"]["i2t_R@1"] == pytest.approx(statistics.fmean(I2T["slip"]))
    assert slip["std"]["i2t_R@1"] == pytest.approx(statistics.stdev(I2T["slip"]))
    assert slip["wins"]["i2t_R@1"] == [2, 0, 1]  # (wins, ties, losses) paired by seed
    assert slip["wins"]["i2t_mean_rank"] == [3, 0, 0]  # lower rank wins
    assert slip["wins"]["t2i_R@1"] == [0, 3, 0]
    assert slip["wins"]["graph_i2t_R@1"] == [3, 0, 0]  # graph-aware slip against clip's encoder-only score

    text = (tmp_path / "cmp" / "compare.md").read_text()
    headline = section(text, "Headline, encoder-only")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in [line for line in headline.splitlines() if line.startswith("|")][2:]}  # header, rule
    mean, std = statistics.fmean(I2T["clip"]), statistics.stdev(I2T["clip"])
    assert rows["i2t_R@1"][0] == f"{mean:.4f} ± {std:.4f}"
    delta = 100 * (statistics.fmean(I2T["slip"]) - mean) / mean
    assert rows["i2t_R@1"][2:] == [f"{delta:+.1f}%", "2/3"]
    assert rows["t2i_R@1"][3] == "0/3 (3 tied)" and rows["i2t_mean_rank ↓"][3] == "3/3"
    assert list(rows)[:3] == ["i2t_R@1", "t2i_R@1", "i2t_mean_rank ↓"]  # headline order, not file order
    housekeeping = section(text, "Housekeeping (settings and counts)")
    for key in ("fewshot_16_weight_decay", "fewshot_16_short_classes", "lp_n_queries", "n_samples",
                "graph_fewshot_16_weight_decay", "graph_max_neighbors"):
        assert key not in headline and key not in section(text, "Other metrics") and key in housekeeping
    assert "i2t_R@5" in section(text, "Other metrics") and "i2t_R@5" not in headline
    for table in (headline, housekeeping):  # columns as wide as their content: every row the same length
        lines = [line for line in table.splitlines() if line.startswith("|")]
        assert len({len(line) for line in lines}) == 1 and max(map(len, lines)) < 120


def test_a_method_whose_runs_repeat_a_seed_is_not_averaged(tmp_path):
    runs = [write_run(tmp_path, "clip-a", "clip", 0, 0), write_run(tmp_path, "clip-b", "clip", 0, 1),
            write_run(tmp_path, "slip", "slip", 0, 0)]
    groups = group_runs(load_runs(runs, "test"))
    assert [g.name for g in groups] == ["clip:clip-a", "clip:clip-b", "slip"]


def test_a_missing_eval_json_is_exit_2_naming_it(runs, tmp_path, capsys):
    (runs[1] / "eval-test.json").unlink()
    assert eval_main(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert str(runs[1] / "eval-test.json") in err and len(err.strip().splitlines()) == 1


def test_runs_without_config_pair_by_the_seed_in_their_summary(tmp_path):
    # committed study results keep summary.json but not config.json: they still group and pair by seed
    runs = [write_run(tmp_path, f"{m}-s{s}", m, s, i, side="summary.json") for m in ("clip", "slip")
            for i, s in enumerate(SEEDS)]
    groups = group_runs(load_runs(runs, "test"))
    assert [(g.name, [r.seed for r in g.runs]) for g in groups] == [("clip", list(SEEDS)), ("slip", list(SEEDS))]
