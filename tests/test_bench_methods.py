"""bench/methods.py: the study's plan (equal budgets, run keys), its argument checks, the per-process compute it
measures and the report it builds from eval results. No training here: the study itself takes hours."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "methods.py"
_SPEC = importlib.util.spec_from_file_location("bench_methods", _PATH)
methods = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_methods"] = methods  # its dataclass looks its module up
_SPEC.loader.exec_module(methods)


def _args(tmp_path: Path, *extra: str):
    return methods.parse_args(["--release", str(tmp_path / "rel"), "--out", str(tmp_path / "out"), "--steps", "6",
                               "--batch-size", "16", *extra])


def _flag(run, name: str) -> str:
    return run.flags[run.flags.index(name) + 1]


def test_plan_gives_every_method_the_same_samples_and_pairs_seeds(tmp_path: Path) -> None:
    args = _args(tmp_path, "--sail-batch-size", "32")
    runs = methods.plan(args, tmp_path / "rel", tmp_path / "bank")
    assert [r.method for r in runs[:9]] == list(methods.METHODS) and len(runs) == 27  # 9 methods x seeds 0 1 2
    assert {r.samples for r in runs} == {96}  # 6 steps x 16 = 3 SAIL steps x 32
    for run in runs:
        sail = run.method in ("sail", "sail-struct")
        assert (_flag(run, "--steps"), _flag(run, "--batch-size")) == (("3", "32") if sail else ("6", "16"))
        assert ("--bank" in run.flags) == (run.method in methods.BANK_METHODS)
        assert ("--model" in run.flags) != sail  # SAIL has no towers
        assert _flag(run, "--seed") == run.folder.name.split("-s")[-1].split("-")[0]
    assert len({r.folder for r in runs}) == len(runs)
    # a flag for one method gives its runs new folders and leaves the others' (and so their finished runs) alone
    other = methods.plan(_args(tmp_path, "--sail-batch-size", "32", "--method-arg=sail=--sail-dim=64"),
                         tmp_path / "rel", tmp_path / "bank")
    changed = {a.method for a, b in zip(runs, other) if a.folder != b.folder}
    assert changed == {"sail"} and "--sail-dim=64" in next(r for r in other if r.method == "sail").flags
    # the samples of a non-divisible SAIL batch are rounded up, never down
    assert methods.sail_steps(_args(tmp_path, "--sail-batch-size", "20")) == 5


def test_bad_arguments_are_refused_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="at least 3 distinct seeds"):
        _args(tmp_path, "--seeds", "0", "1")
    assert _args(tmp_path, "--seeds", "0", "--allow-few-seeds").seeds == [0]
    with pytest.raises(SystemExit, match="METHOD=--FLAG"):
        _args(tmp_path, "--method-arg=sail")
    with pytest.raises(SystemExit, match="not a compared method"):
        _args(tmp_path, "--methods", "clip", "sail", "--method-arg=slip=--lambda-struct=0.5")
    with pytest.raises(SystemExit, match="the 'run' encoder brings its weights"):
        _args(tmp_path, "--image-pretrained", "w.pt")
    with pytest.raises(SystemExit) as exc:  # argparse: unknown method, exit 2
        _args(tmp_path, "--methods", "clip", "dino")
    assert exc.value.code == 2
    with pytest.raises(ValueError, match="needs a bank"):
        methods.plan(_args(tmp_path, "--methods", "clip", "sail"), tmp_path / "rel", None)


def test_measured_reports_the_child_process_own_memory_and_cpu(tmp_path: Path) -> None:
    # a child that holds 300 MiB: its own memory, not this (large, under pytest) process's
    hog = [sys.executable, "-c", "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
           "time.sleep(1.5)"]
    figures = methods.measured(hog, tmp_path / "hog.log")
    assert 250 <= figures["tree_peak_rss_mib"] < 600  # sampled every 0.1 s while it slept
    assert figures["wall_s"] >= 1.5 and figures["cpu_s"] > 0
    small = methods.measured([sys.executable, "-c", "import time; time.sleep(0.5)"], tmp_path / "small.log")
    assert small["tree_peak_rss_mib"] < 200  # per run: the earlier hog does not leak into the next figure
    with pytest.raises(SystemExit, match="boom"):
        methods.measured([sys.executable, "-c", "import sys; sys.exit('boom')"], tmp_path / "fail.log")


def test_report_has_compare_tables_then_compute_per_method_and_run(tmp_path: Path) -> None:
    def result(method: str, seed: int, rate: float, params: int) -> dict:
        return {"method": method, "seed": seed, "run_dir": f"runs/{method}-s{seed}-abcd1234",
                "compute": {"samples_per_s": rate, "train_time_s": 10.0, "wall_s": 12.0, "cpu_s": 20.0,
                            "tree_peak_rss_mib": 1100.0, "params_trained": params,
                            "samples": 96, "resumed": seed == 1}}

    results = [result("clip", s, r, 9_000_000) for s, r in ((0, 10.0), (1, 12.0), (2, 14.0))]
    results += [result("sail", s, 100.0, 8_000) for s in (0, 1, 2)]
    args = _args(tmp_path, "--methods", "clip", "sail")
    args.release_dir = tmp_path / "rel"
    compare_md = "# slip-eval compare (test split)\n\n## Headline, encoder-only\n\n| metric | clip |\n"
    text = methods.report(args, results, {"encode": {"wall_s": 40.0, "cpu_s": 38.0, "tree_peak_rss_mib": 1379.0}},
                          compare_md)
    assert "## slip-eval compare (test split)" in text and "### Headline, encoder-only" in text
    assert text.index("### Headline") < text.index("## Compute per run") < text.index("## Bank preparation")
    assert "| clip | 3 | 12.0 ± 2.0 | 10.0 ± 0.0 |" in text  # mean ± sample std over the three seeds
    assert "| sail | 3 | 100.0 ± 0.0 |" in text and "| 8,000 |" in text
    assert "| clip-s1-abcd1234 | 96 | 12.0 |" in text and text.count("| yes |") == 2
    assert "96 samples seen" in text and "3 steps × batch 32" not in text


def test_measured_runs_from_the_checkout_with_its_paths_relative(tmp_path: Path) -> None:
    # what a run records must hold no machine's path: committed results are reused in other clones
    seen = tmp_path / "seen.txt"
    child = ("import os, sys, pathlib; pathlib.Path(sys.argv[1]).write_text(os.getcwd() + '|' + sys.argv[2])")
    methods.measured([sys.executable, "-c", child, str(seen), str(methods.REPO / "bench" / "x")],
                     tmp_path / "child.log")
    assert seen.read_text() == f"{methods.REPO}|bench/x"


def test_a_bank_is_complete_only_with_its_manifest_and_every_array(tmp_path: Path) -> None:
    from schemas.bank import ARRAYS, MANIFEST

    assert not methods.bank_complete(tmp_path)
    (tmp_path / MANIFEST).write_text("{}")  # what git keeps of a bank, were it kept: not enough to reuse it
    assert not methods.bank_complete(tmp_path)
    for name in ARRAYS:
        (tmp_path / name).write_bytes(b"")
    assert methods.bank_complete(tmp_path)


def test_study_end_to_end_reuses_runs_rebuilds_a_bank_git_did_not_keep_and_refuses_stale_defaults(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # real slip-train / encode / slip-eval processes on a tiny synthetic release, CLIP and SAIL, one seed
    from helpers.training import MICRO_CONFIG
    from trainer.synthetic import make_synthetic_release

    monkeypatch.chdir(methods.REPO)  # main() moves to the checkout; put the test's cwd back afterwards
    model = tmp_path / "micro.json"
    model.write_text(json.dumps(MICRO_CONFIG))
    release = make_synthetic_release(tmp_path / "release", n_nodes=96, shard_size=32, image_size=32)
    out = tmp_path / "out"
    argv = ["--release", str(release), "--model", str(model), "--methods", "clip", "sail", "--steps", "2",
            "--batch-size", "8", "--seeds", "0", "--allow-few-seeds", "--workers", "0", "--out", str(out)]
    assert methods.main(argv) == 0
    first = json.loads((out / "methods.json").read_text())
    assert [(r["method"], r["reused"]) for r in first["runs"]] == [("clip", False), ("sail", False)]
    assert list(first["compare"]["groups"]) == ["clip", "sail"]
    encoder = Path(first["bank_preparation"]["encoder_run"]["run_dir"])
    bank = Path(first["bank_preparation"]["encode"]["bank"])
    assert all((Path(r["run_dir"]) / "bench_defaults.json").is_file() for r in first["runs"])

    # what a fresh checkout has: no bank, no encoder weights -> both rebuilt, finished runs still reused
    shutil.rmtree(bank)
    for checkpoint in (encoder / "checkpoints").glob("step-*.pt"):
        checkpoint.unlink()
    assert methods.main(argv) == 0
    again = json.loads((out / "methods.json").read_text())
    assert [r["reused"] for r in again["runs"]] == [True, True] and methods.bank_complete(bank)
    assert any((encoder / "checkpoints").glob("step-*.pt"))
    assert again["compare"]["groups"]["clip"]["mean"] == first["compare"]["groups"]["clip"]["mean"]

    record = Path(first["runs"][0]["run_dir"]) / "bench_defaults.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "lr": 1.0}))
    with pytest.raises(SystemExit, match=r"clip-s0-\w+ was trained under other trainer defaults \(lr: 1.0 -> "):
        methods.main(argv)
