"""bench/regimes.py: the paired verdict of the quality study, lever flags and run keys, and regime presets that
the generator accepts."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from etl.sample.knobs import SampleKnobs

_SPEC = importlib.util.spec_from_file_location("regimes", Path(__file__).resolve().parents[1] / "bench" / "regimes.py")
regimes = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(regimes)


def test_paired_verdict_compares_mean_difference_with_its_spread() -> None:
    # differences 0.02, 0.03, 0.04: mean 0.03 > std 0.01 -> ahead, 3 of 3 seeds better
    ahead = regimes.paired_verdict([0.52, 0.43, 0.64], [0.50, 0.40, 0.60], "i2t_R@1")
    assert ahead["verdict"] == "ahead" and ahead["seeds_better"] == 3
    assert ahead["mean"] == pytest.approx(0.03) and ahead["std"] == pytest.approx(0.01)
    # differences +0.05, -0.04, +0.02: mean 0.01 < std -> level, although 2 of 3 seeds are better
    assert regimes.paired_verdict([0.55, 0.36, 0.62], [0.50, 0.40, 0.60], "i2t_R@1")["verdict"] == "level"
    # a higher rank is worse: SLIP ranks 3, 3.1, 3.2 vs CLIP 2.5, 2.6, 2.8 -> behind
    assert regimes.paired_verdict([3.0, 3.1, 3.2], [2.5, 2.6, 2.8], "t2i_mean_rank")["verdict"] == "behind"
    assert regimes.paired_verdict([0.5], [0.4], "i2t_R@1")["verdict"] == "n/a"  # one seed has no spread
    # a stricter k turns the same differences level
    assert regimes.paired_verdict([0.52, 0.43, 0.64], [0.50, 0.40, 0.60], "i2t_R@1", k=4)["verdict"] == "level"


def test_levers_become_flags_and_folder_keys() -> None:
    from trainer.config import TrainConfig

    fields = TrainConfig.model_fields
    levers = regimes.parse_levers(["lambda_struct=0.5", "struct-edge-weight=false"], fields)
    assert levers == {"lambda_struct": "0.5", "struct_edge_weight": "false"}
    assert regimes.lever_flags(levers, fields) == ["--lambda-struct", "0.5", "--no-struct-edge-weight"]
    assert regimes.lever_key(levers) == "lambda_struct=0.5,struct_edge_weight=false"
    with pytest.raises(SystemExit, match="not a slip-train option"):
        regimes.parse_levers(["lambda=0.5"], fields)
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        regimes.parse_levers(["lambda_struct"], fields)


def test_every_regime_is_valid_knobs_and_changes_the_sample() -> None:
    assert len(regimes.REGIMES) >= 5 and regimes.REGIMES["default"] == {}
    for name, knobs in regimes.REGIMES.items():
        assert SampleKnobs(**knobs).changed() == knobs, name  # each preset leaves its defaults
        assert len(regimes.regime_sets(name)) == len(knobs)
    with pytest.raises(SystemExit, match="unknown regime"):
        regimes.regime_sets("dense")


def _quality():
    path = Path(__file__).resolve().parents[1] / "bench" / "quality.py"
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    quality = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = quality  # its dataclass looks its module up
    spec.loader.exec_module(quality)
    return quality


def test_report_has_a_table_per_regime_and_a_summary_by_verdict() -> None:
    quality = _quality()

    def runs(r1: list[float]) -> list[dict]:
        return [{"i2t_R@1": v, "graph_i2t_R@1": v, "train_time_s": 1.0} for v in r1]

    results = {"default": {"clip": runs([0.50, 0.40, 0.60]), "slip": runs([0.52, 0.43, 0.64])},  # +0.03 ± 0.01
               "sparse": {"clip": runs([0.50, 0.40, 0.60]), "slip": runs([0.45, 0.36, 0.54])}}  # −0.05 ± 0.01
    studies = [quality.Study(name, name, Path(name)) for name in results]
    args = SimpleNamespace(model="m", steps=3, batch_size=4, seeds=[0, 1, 2], levers={}, spread_k=1.0,
                           train_arg=[], slip_arg=[])
    text, summary = quality.report(studies, results, args)
    assert "## default" in text and "## sparse" in text
    assert "| i2t_R@1 | default | – | sparse |" in text  # ahead / level / behind, encoder-only and graph-aware
    assert summary["regimes"]["sparse"]["verdicts"]["slip"]["i2t_R@1"]["verdict"] == "behind"


def test_study_runs_two_at_a_time_resumes_a_killed_run_and_reuses_finished_ones(tmp_path: Path) -> None:
    """A real (tiny) study: --jobs 2 runs CLIP and SLIP side by side; a run cut off after its checkpoint continues
    from it (--resume latest) instead of failing on the non-empty folder; finished runs are reused as they are."""
    quality = _quality()
    out = tmp_path / "study"
    argv = ["--synthetic", "--steps", "2", "--batch-size", "16", "--workers", "0", "--seeds", "0",
            "--allow-few-seeds", "--jobs", "2", "--train-arg=--ckpt-every=1", "--out", str(out)]
    assert quality.main(argv) == 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["clip-s0", "slip-s0"]
    def scores() -> dict[str, dict[str, float]]:
        return {name: {key: value for key, value in json.loads((out / "runs" / name / "eval-test.json").read_text())
                       .items() if key.endswith(("R@1", "R@5", "mean_rank", "acc1"))} for name in runs}

    first = scores()
    killed = out / "runs" / "slip-s0"  # as if stopped after step 1: summary, evaluation and last checkpoint gone
    for name in ("summary.json", "eval-test.json"):
        (killed / name).unlink()
    checkpoints = sorted((killed / "checkpoints").glob("*.pt"))
    assert len(checkpoints) >= 2
    checkpoints[-1].unlink()
    assert quality.main(argv) == 0
    assert (killed / "summary.json").is_file()
    assert scores() == first  # the resumed run ends where the uninterrupted one did
    study = json.loads((out / "quality.json").read_text())
    assert study["regimes"]["synthetic"]["per_seed"]["slip"]["i2t_R@1"]

    # a lever screen in the same OUT trains only SLIP, reuses the CLIP run and keeps the study's report
    assert quality.main([*argv, "--lever", "lambda_struct=0.25"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["clip-s0", "slip+lambda_struct=0.25-s0", "slip-s0"]
    assert json.loads((out / "quality.json").read_text()) == study
    screen = json.loads((out / "screens" / "lambda_struct=0.25" / "quality.json").read_text())
    assert screen["levers"] == {"lambda_struct": "0.25"}
    assert (screen["regimes"]["synthetic"]["per_seed"]["clip"]["i2t_R@1"]
            == study["regimes"]["synthetic"]["per_seed"]["clip"]["i2t_R@1"])

    # each run records the defaults it left to the code; a finished run trained under another default is refused
    screened = json.loads((out / "runs" / "slip+lambda_struct=0.25-s0" / "bench_defaults.json").read_text())
    assert "lambda_struct" not in screened and "struct_neighbor_weight" in screened  # the lever is a flag
    record = killed / "bench_defaults.json"
    defaults = json.loads(record.read_text())
    record.write_text(json.dumps({**defaults, "lambda_struct": defaults["lambda_struct"] * 2}))
    with pytest.raises(SystemExit, match=r"slip-s0 was trained under other trainer defaults \(lambda_struct: "):
        quality.main(argv)


def test_portable_flags_drop_the_checkout_path() -> None:
    quality = _quality()
    inside = str(quality.REPO / "bench" / "results" / "r" / "release")
    assert quality.portable(["--release", inside, "--steps", "3"]) == ["--release", "bench/results/r/release",
                                                                     "--steps", "3"]


def test_run_defaults_are_those_a_run_leaves_unset_for_its_method_and_add_ons(tmp_path: Path) -> None:
    run_defaults = _bench("run_defaults")
    from trainer.config import TrainConfig

    slip = run_defaults.defaults_left("slip", ["--method", "slip", "--lambda-struct=0.5", "--no-augment",
                                               "--steps", "3"])
    assert slip["struct_neighbor_weight"] == TrainConfig.model_fields["struct_neighbor_weight"].default
    assert not {"lambda_struct", "augment", "steps", "method"} & set(slip)  # given as flags
    assert "sail_dim" not in slip and "out" not in slip  # another method's option; one that leaves weights alone
    assert "superclip_idf_smoothing" in run_defaults.defaults_left("clip", ["--superclip-weight", "1"])
    combined = run_defaults.defaults_left("slip-superclip", ["--method", "slip-superclip"])
    assert combined["slip-superclip.superclip_default_weight"] == 1.0  # a default kept in code, not in an option
    assert not any(name.startswith("slip-superclip.") for name in slip) and "slip.name" not in slip

    flags = ["--method", "slip", "--steps", "3"]
    assert run_defaults.changed_defaults(tmp_path, "slip", flags) == [
        "no bench_defaults.json (trained before defaults were recorded)"]
    run_defaults.record_defaults(tmp_path, "slip", flags)
    assert run_defaults.changed_defaults(tmp_path, "slip", flags) == []
    run_defaults.refuse_stale(tmp_path, "slip", flags)  # nothing changed: no exit
    record = json.loads((tmp_path / "bench_defaults.json").read_text())
    (tmp_path / "bench_defaults.json").write_text(json.dumps({**record, "lambda_struct": 1.0, "gone": 3}))
    current = TrainConfig.model_fields["lambda_struct"].default
    assert run_defaults.changed_defaults(tmp_path, "slip", flags) == ["gone: 3 -> '(absent)'",
                                                                     f"lambda_struct: 1.0 -> {current!r}"]


def _bench(name: str):
    """A bench script loaded as a module (bench/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(levers: dict[str, str], gain: float) -> dict:
    metrics = ("i2t_R@1", "t2i_R@1", "t2i_cat_R@1", "zeroshot_acc1", "fewshot_16_acc1", "lp_mrr")
    verdicts = {column: {m: {"mean": gain, "std": 0.01, "n": 3, "verdict": "level", "seeds_better": 2}
                         for m in metrics} for column in ("slip", "slip_graph")}
    return {"levers": levers, "regimes": {"default": {"verdicts": verdicts}, "sparse": {"verdicts": verdicts}}}


def test_tradeoff_plot_reads_the_study_and_its_screens(tmp_path: Path, capsys) -> None:
    tradeoff = _bench("tradeoff")
    (tmp_path / "screens" / "struct_head=true").mkdir(parents=True)
    (tmp_path / "quality.json").write_text(json.dumps(_report({}, 0.02)))
    (tmp_path / "screens" / "struct_head=true" / "quality.json").write_text(
        json.dumps(_report({"struct_head": "true"}, -0.01)))
    reports = tradeoff.load_reports(tmp_path)
    assert [label for label, _ in reports] == ["defaults", "struct_head=true"]
    rows = tradeoff.points(reports, "lp_mrr")
    assert len(rows) == 8  # 2 reports × 2 regimes × (encoder-only, graph-aware)
    assert {round(r["x"], 3) for r in rows} == {0.02, -0.01}
    one_seed = _report({"struct_hops": "2"}, float("nan"))  # what a one-seed screen writes
    assert tradeoff.points([("struct_hops=2", one_seed)], "lp_mrr") == []
    assert tradeoff.main([str(tmp_path), "--out", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "32 points from 2 report(s)" in capsys.readouterr().out


def test_tradeoff_plot_refuses_a_folder_without_a_study(tmp_path: Path, capsys) -> None:
    tradeoff = _bench("tradeoff")
    assert tradeoff.main([str(tmp_path)]) == 2
    assert "no quality.json" in capsys.readouterr().err
    (tmp_path / "quality.json").write_text("{truncated")
    assert tradeoff.main([str(tmp_path)]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert tradeoff.main([str(tmp_path / "missing")]) == 2


def test_lever_table_counts_verdicts_per_regime_and_names_instance_misses(tmp_path: Path, capsys) -> None:
    levers = _bench("levers")
    defaults = _report({}, 0.02)
    behind = {"mean": -0.1, "std": 0.05, "n": 3, "verdict": "behind", "seeds_better": 0}
    defaults["regimes"]["sparse"]["verdicts"] = {
        column: {**verdicts, "i2t_mean_rank": behind, "lp_mrr": {**behind, "verdict": "ahead"}}
        for column, verdicts in defaults["regimes"]["sparse"]["verdicts"].items()}
    (tmp_path / "screens" / "struct_hops=2").mkdir(parents=True)
    (tmp_path / "quality.json").write_text(json.dumps(defaults))
    (tmp_path / "screens" / "struct_hops=2" / "quality.json").write_text(
        json.dumps(_report({"struct_hops": "2"}, float("nan")) | {"regimes": {}}))
    result = levers.tally(defaults, "slip", ("i2t_R@1", "i2t_mean_rank", "lp_mrr"))
    assert result["regimes"] == ["default", "sparse"]
    assert result["counts"]["i2t_R@1"] == {"ahead": 0, "level": 2, "behind": 0}
    assert result["counts"]["i2t_mean_rank"] == {"ahead": 0, "level": 0, "behind": 1}  # default has no rank verdict
    assert result["counts"]["lp_mrr"] == {"ahead": 1, "level": 1, "behind": 0}
    assert result["misses"] == [("sparse", "i2t_mean_rank")]
    assert levers.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| defaults | 2 | 0/2/0 | 0/2/0 | 0/0/1 |" in out and "sparse i2t_mean_rank |" in out
    assert "struct_hops=2" not in out  # scored on no regime with a spread
    assert levers.main([str(tmp_path), "--min-regimes", "3"]) == 0
    assert "| defaults |" not in capsys.readouterr().out
    assert levers.main([str(tmp_path / "missing")]) == 2
