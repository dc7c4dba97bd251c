"""Quality study: SLIP vs CLIP trained with the same budget on the same release, over several seeds and regimes.

For every seed, `slip-train --method slip` and `--method clip` run with identical flags (same model, steps,
batch size, seed: the trainer gives both the same init and data order), then `slip-eval` scores each on the
test split. The report gives mean ± sample std over seeds of every metric for CLIP, SLIP encoder-only and
SLIP graph-aware, the relative difference of each SLIP column to CLIP ((slip - clip) / |clip|; for ranks
lower is better), and the paired verdict per metric: SLIP ahead / level / behind CLIP beyond the seed spread
(defined in bench/regimes.py: mean paired difference beyond --spread-k times its std across seeds).

Metrics come at three levels (trainer/metrics.py): exact pair (`i2t_R@1`), category (`i2t_cat_R@1`: any
retrieved product with the query's label is a hit) and neighbourhood (`i2t_nbr_R@1`: the product or a graph
neighbour is a hit), so a table shows whether SLIP trades instance retrieval for structure.

`--regimes [NAME ...]` (no names = all of bench/regimes.py) builds one embedded-sample release per regime (knob
presets of the sample generator) and runs the study on each: one table per regime, then a summary listing, per
metric, the regimes where SLIP is ahead / level / behind. `--lever NAME=VALUE` (repeatable) overrides a SLIP
option for a lever screen; CLIP runs do not depend on levers and are shared between screens, and a screen's report
goes to OUT/screens/LEVERS/ so the study's own report stays.

Resumable: run folders are keyed by regime, method, levers and seed (OUT/runs/REGIME/slip+LEVERS-sSEED); a
finished run (same steps) with its eval JSON is reused, and a folder trained with other flags, or under other
trainer defaults than today's (bench/run_defaults.py), is refused (use another --out or --force), so the study
can be spread over several sessions and more seeds added later.

    python bench/quality.py --release path/to/release --steps 2000 --batch-size 256 --device cuda
    python bench/quality.py --sample-out bench/out/sample        # builds the embedded sample release first
    python bench/quality.py --regimes --steps 150 --out bench/out/regimes           # every regime, seeds 0 1 2
    python bench/quality.py --regimes default sparse --lever lambda_struct=0.5 --out bench/out/regimes
    python bench/quality.py --synthetic --steps 2 --batch-size 16 --workers 0   # smoke run, minutes on CPU

Writes OUT/quality.md, OUT/quality.json and OUT/compare/[REGIME/] (slip-eval compare: table, curves, bar chart);
with levers the same under OUT/screens/LEVERS/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from regimes import (  # noqa: E402  (bench scripts are run as files, not as a package)
    AHEAD,
    BEHIND,
    LEVEL,
    LOWER_IS_BETTER,
    REGIMES,
    lever_flags,
    lever_key,
    paired_verdict,
    parse_levers,
    regime_sets,
)
from run_defaults import record_defaults, refuse_stale  # noqa: E402

LEVEL_METRICS = tuple(f"{way}_{level}_{m}" for level in ("cat", "nbr") for way in ("i2t", "t2i")
                      for m in ("R@1", "R@5", "mrr", "mean_rank"))
METRICS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_mrr", "t2i_mrr",
           "i2t_mean_rank", "t2i_mean_rank", "i2t_median_rank", "t2i_median_rank", *LEVEL_METRICS,
           "zeroshot_acc1", "zeroshot_acc5", "zeroshot_mean_per_class_recall",
           "fewshot_1_acc1", "fewshot_5_acc1", "fewshot_16_acc1", "lp_mrr", "lp_hits@1", "lp_hits@10")
METHODS = ("clip", "slip")
COLUMNS = {"clip": ("clip", ""), "slip": ("slip", ""), "slip_graph": ("slip", "graph_")}


@dataclass(frozen=True)
class Study:
    """One release to study; `regime` is None outside --regimes (run folders then keep the old layout)."""

    name: str
    regime: Optional[str]
    release: Path


def console_script(name: str) -> str:
    """The project's console script installed beside this interpreter."""
    path = Path(sys.executable).with_name(name)
    if not path.is_file():
        raise SystemExit(f"{path} not found: install the project (pip install -e .) in this environment")
    return str(path)


def run_logged(cmd: list[str], log: Path, env: Optional[dict[str, str]] = None) -> str:
    """Run a command from the checkout's root with stderr to `log`; return stdout; fail loudly with the log's tail.

    Its arguments name paths inside the checkout relative to it, so what the runs record (summary.json, eval
    reports) holds no machine's path and committed results stay valid in another clone."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [cmd[0], *portable(cmd[1:])]
    with log.open("w") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"command failed ({done.returncode}): {' '.join(cmd)}\n--- {log} ---\n{tail}")
    return done.stdout


def thread_env(jobs: int) -> Optional[dict[str, str]]:
    """The environment of one of `jobs` concurrent runs: the cores split between them (None: inherit as is).

    Small CPU runs scale poorly across intra-op threads, so on a few cores two one-thread runs side by side finish
    sooner than the same two runs one after the other (bench/README.md has the figures)."""
    if jobs <= 1:
        return None
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def build_sample(args: argparse.Namespace, out: Path, sets: list[str], log_name: str) -> Path:
    """`slip-etl build` of the embedded sample under `out` (finished stages are skipped); the release folder."""
    extra = [*sets, *([f"sources.sample.sample_products={args.sample_products}"] if args.sample_products else []),
             *args.etl_set]
    # --wait: a second study (a lever screen) started beside the first waits for its build instead of failing
    cmd = [console_script("slip-etl"), "build", "--category", "electronics", "--source", "sample", "--out", str(out),
           "--wait", "3600"]
    for item in extra:
        cmd += ["--set", item]
    stdout = run_logged(cmd, args.out / "logs" / log_name)
    return REPO / stdout.strip().splitlines()[-1]  # CLI contract: last stdout line = release folder (from REPO)


def prepare_studies(args: argparse.Namespace) -> list[Study]:
    """The releases to study: one per regime, or the given / sample / synthetic one."""
    if args.regimes is not None:
        names = args.regimes or list(REGIMES)
        for name in names:
            regime_sets(name)  # unknown names fail before anything is built
        return [Study(name, name, build_sample(args, args.out / "regimes" / name, regime_sets(name),
                                               f"build-{name}.log")) for name in names]
    if args.release is not None:
        return [Study("release", None, args.release)]
    if args.sample_out is not None:
        return [Study("sample", None, build_sample(args, args.sample_out, [], "build-sample.log"))]
    from trainer.synthetic import make_synthetic_release
    release = args.out / "synthetic-release"
    if not (release / "manifest.json").is_file():
        make_synthetic_release(release, n_nodes=400, n_classes=8, seed=0)
    return [Study("synthetic", None, release)]


def run_dir(out: Path, study: Study, method: str, levers: dict[str, str], seed: int) -> Path:
    """OUT/runs/[REGIME/]METHOD[+LEVERS]-sSEED; levers apply to SLIP only, so CLIP runs are shared."""
    key = lever_key(levers) if method == "slip" else ""
    name = f"{method}{'+' + key if key else ''}-s{seed}"
    return out / "runs" / study.regime / name if study.regime else out / "runs" / name


def report_dir(out: Path, levers: dict[str, str]) -> Path:
    """OUT for the defaults, OUT/screens/LEVERS for a lever screen: a screen sharing OUT's CLIP runs keeps its
    own report instead of overwriting the study's."""
    return out / "screens" / lever_key(levers) if levers else out


def portable(flags: list[str]) -> list[str]:
    """Flags with paths inside this checkout made relative to it, so a results folder committed from one machine
    is recognised (and reused) on another."""
    root = str(REPO) + "/"
    return [flag.replace(root, "") for flag in flags]


def finished(folder: Path, steps: int) -> bool:
    summary = folder / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("steps") == steps


def train_and_evaluate(args: argparse.Namespace, study: Study, method: str, seed: int) -> dict[str, Any]:
    """One run: train (unless already done with these flags), evaluate; returns the eval JSON + timing."""
    folder = run_dir(args.out, study, method, args.levers if method == "slip" else {}, seed)
    tag = f"{study.name}-{folder.name}"
    eval_json = folder / "eval-test.json"
    train_flags = ["--release", str(study.release), "--method", method, "--model", args.model,
                   "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--steps", str(args.steps),
                   "--seed", str(seed), "--device", args.device, *args.train_arg,
                   *([*args.slip_arg, *lever_flags(args.levers, args.lever_fields)] if method == "slip" else [])]
    flags_file = folder / "bench_flags.json"
    if args.force and folder.exists():
        shutil.rmtree(folder)
    if flags_file.is_file() and json.loads(flags_file.read_text()) != portable(train_flags):
        raise SystemExit(f"{folder} was trained with other flags ({flags_file}); use another --out, or --force "
                         "to retrain it")
    trained = not finished(folder, args.steps)
    if not trained:
        refuse_stale(folder, method, train_flags)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        flags_file.write_text(json.dumps(portable(train_flags)) + "\n")
        record_defaults(folder, method, train_flags)
        # --resume latest: a study killed mid-run continues that run exactly (fresh when it has no checkpoint)
        run_logged([console_script("slip-train"), *train_flags, "--out", str(folder), "--resume", "latest"],
                   args.out / "logs" / f"train-{tag}.log", env=thread_env(args.jobs))
    eval_cmd = [console_script("slip-eval"), str(folder), "--release", str(study.release), "--split", "test",
                "--json", str(eval_json), "--device", args.eval_device, "--seed", str(seed)]
    if args.max_samples:
        eval_cmd += ["--max-samples", str(args.max_samples)]
    if trained or not eval_json.is_file():  # a reused run keeps its evaluation (delete it to score again)
        run_logged(eval_cmd, args.out / "logs" / f"eval-{tag}.log", env=thread_env(args.jobs))
    result = json.loads(eval_json.read_text())
    summary = json.loads((folder / "summary.json").read_text())
    result["train_time_s"] = summary.get("train_time_s")
    result["samples_per_s"] = summary.get("samples_per_s")
    result["run_dir"] = str(folder)
    result["reused"] = not trained
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    return mean(values), (stdev(values) if len(values) > 1 else math.nan)


def aggregate(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, list[float]]]:
    """{column: {metric: [value per seed]}} for CLIP, SLIP encoder-only and SLIP graph-aware."""
    return {column: {m: [r[prefix + m] for r in results[method] if r.get(prefix + m) is not None]
                     for m in METRICS}
            for column, (method, prefix) in COLUMNS.items()}


def relative_difference(new: float, base: float, metric: str) -> float:
    """(new - base) / |base|, signed so that > 0 is always an improvement."""
    if base == 0:
        return math.nan
    diff = (new - base) / abs(base)
    return -diff if metric.endswith(LOWER_IS_BETTER) else diff


def verdicts(per_seed: dict[str, dict[str, list[float]]], k: float) -> dict[str, dict[str, dict[str, Any]]]:
    """{SLIP column: {metric: paired verdict vs CLIP}}."""
    return {column: {m: paired_verdict(per_seed[column][m], per_seed["clip"][m], m, k) for m in METRICS}
            for column in ("slip", "slip_graph")}


def regime_table(study: Study, per_seed: dict[str, dict[str, list[float]]],
                 verdict: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """One markdown table: every metric of the three columns, Δ to CLIP and the paired verdicts."""
    def cell(values: list[float]) -> str:
        if not values:
            return "n/a"
        m, s = mean_std(values)
        return f"{m:.4f} ± {s:.4f}"

    def rel(column: str, metric: str) -> str:
        new, base = per_seed[column][metric], per_seed["clip"][metric]
        if not new or not base:
            return "n/a"
        return f"{100 * relative_difference(mean(new), mean(base), metric):+.1f}%"

    def paired(column: str, metric: str) -> str:
        v = verdict[column][metric]
        if v["verdict"] == "n/a":
            return "n/a"
        return f"{v['mean']:+.4f} ± {v['std']:.4f} {v['verdict']} ({v['seeds_better']}/{v['n']})"

    knobs = REGIMES.get(study.regime or "", {})
    lines = [f"## {study.name}", "",
             f"- release: `{portable([str(study.release)])[0]}`"
             + (f"; knobs: {knobs or 'defaults'}" if study.regime else ""), "",
             "| metric | CLIP | SLIP encoder-only | SLIP graph-aware | Δ encoder | Δ graph-aware "
             "| paired encoder − CLIP (seeds better) | paired graph-aware − CLIP |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for metric in METRICS:
        if not per_seed["clip"][metric] and not per_seed["slip"][metric]:
            continue  # a metric this release cannot have (e.g. no labels)
        lines.append(f"| {metric} | {cell(per_seed['clip'][metric])} | {cell(per_seed['slip'][metric])} | "
                     f"{cell(per_seed['slip_graph'][metric])} | {rel('slip', metric)} | "
                     f"{rel('slip_graph', metric)} | {paired('slip', metric)} | {paired('slip_graph', metric)} |")
    return lines + [""]


def summary_table(all_verdicts: dict[str, dict[str, dict[str, dict[str, Any]]]], column: str) -> list[str]:
    """Per metric: the regimes where the SLIP column is ahead / level / behind CLIP beyond the seed spread."""
    lines = ["| metric | ahead | level | behind |", "| --- | --- | --- | --- |"]
    for metric in METRICS:
        by = {AHEAD: [], LEVEL: [], BEHIND: []}
        for name, per_column in all_verdicts.items():
            v = per_column[column][metric]["verdict"]
            if v in by:
                by[v].append(name)
        if any(by.values()):
            lines.append(f"| {metric} | " + " | ".join(", ".join(by[v]) or "–" for v in (AHEAD, LEVEL, BEHIND))
                         + " |")
    return lines + [""]


def report(studies: list[Study], results: dict[str, dict[str, list[dict[str, Any]]]],
           args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Markdown (a table per regime, then the summaries) + JSON of the whole study."""
    levers = " ".join(f"{k}={v}" for k, v in args.levers.items()) or "(none)"
    lines = [
        "# SLIP vs CLIP quality study", "",
        f"- model: `{portable([args.model])[0]}`",
        f"- budget per run: {args.steps} steps × batch {args.batch_size} (equal for both methods)",
        f"- extra flags: both {' '.join(args.train_arg) or '(none)'}; SLIP only {' '.join(args.slip_arg) or '(none)'}"
        f"; SLIP levers {levers}",
        f"- seeds: {', '.join(map(str, args.seeds))} (mean ± sample std over seeds)",
        "- Δ = relative difference of the mean to CLIP's, signed so that + is better (ranks: lower is better)",
        f"- paired = mean ± std over seeds of SLIP − CLIP for the same seed (same init and data order), signed so "
        f"that + is better; ahead / behind when |mean| > {args.spread_k:g} × std, else level (bench/regimes.py)",
        "- `_cat_`: a hit is any product with the query's label; `_nbr_`: the product or a graph neighbour of it",
        "",
    ]
    summary: dict[str, Any] = {"model": portable([args.model])[0], "steps": args.steps, "batch_size": args.batch_size,
                               "seeds": args.seeds, "levers": args.levers, "spread_k": args.spread_k, "regimes": {}}
    all_verdicts = {}
    for study in studies:
        per_seed = aggregate(results[study.name])
        verdict = verdicts(per_seed, args.spread_k)
        all_verdicts[study.name] = verdict
        lines += regime_table(study, per_seed, verdict)
        timing = {m: [r["train_time_s"] for r in results[study.name][m] if r.get("train_time_s") is not None]
                  for m in METHODS}
        summary["regimes"][study.name] = {
            "release": portable([str(study.release)])[0], "knobs": REGIMES.get(study.regime or "", {}),
            "per_seed": per_seed,
            "train_time_s": timing, "verdicts": verdict,
            "mean_std": {column: {m: list(mean_std(v)) if v else None for m, v in metrics.items()}
                         for column, metrics in per_seed.items()}}
    if len(studies) > 1:
        for column, title in (("slip", "SLIP encoder-only"), ("slip_graph", "SLIP graph-aware")):
            lines += [f"## Summary: {title} vs CLIP, regimes by verdict", "", *summary_table(all_verdicts, column)]
    return "\n".join(lines) + "\n", summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--release", type=Path, help="Existing release folder.")
    source.add_argument("--sample-out", type=Path, help="Build the embedded sample release under this folder.")
    source.add_argument("--synthetic", action="store_true", help="A tiny synthetic release (smoke runs only).")
    source.add_argument("--regimes", nargs="*", metavar="NAME", default=None,
                        help=f"Build and study one sample release per regime (none named = all: {', '.join(REGIMES)}).")
    parser.add_argument("--sample-products", type=int, default=None,
                        help="Products of each built sample (default: pipelines.yaml's, 3000).")
    parser.add_argument("--etl-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="Extra `slip-etl build --set` for built samples, repeatable (labels.min_class_size=5).")
    parser.add_argument("--steps", type=int, default=1000, help="Training budget: optimizer steps per run.")
    parser.add_argument("--batch-size", type=int, default=128, help="Training batch size (both methods).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="At least 3 seeds.")
    parser.add_argument("--model", default=str(REPO / "trainer" / "model_configs" / "slip-tiny.json"),
                        help="open_clip model name or model-config JSON (both methods).")
    parser.add_argument("--workers", type=int, default=1, help="slip-train data workers.")
    parser.add_argument("--device", default="auto", help="slip-train --device.")
    parser.add_argument("--eval-device", default="cpu", help="slip-eval --device.")
    parser.add_argument("--max-samples", type=int, default=None, help="slip-eval --max-samples.")
    parser.add_argument("--train-arg", action="append", default=[],
                        help="Extra slip-train argument, repeatable, e.g. --train-arg=--lr=1e-4 (both methods).")
    parser.add_argument("--slip-arg", action="append", default=[],
                        help="Extra slip-train flag for the SLIP runs only (not part of the run folder's key).")
    parser.add_argument("--lever", action="append", default=[], metavar="NAME=VALUE",
                        help="SLIP option override, repeatable (e.g. lambda_struct=0.5); part of the run folder's key.")
    parser.add_argument("--spread-k", type=float, default=1.0,
                        help="Verdict threshold: ahead/behind when |mean paired difference| > k × its std.")
    parser.add_argument("--allow-few-seeds", action="store_true",
                        help="Accept fewer than 3 seeds (smoke runs only: verdicts need a spread).")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "quality", help="Output folder.")
    parser.add_argument("--force", action="store_true", help="Retrain runs that already finished.")
    parser.add_argument("--jobs", type=int, default=1,
                        help="Runs at a time, the CPU cores split between them (CPU studies; keep 1 on one GPU).")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if len(set(args.seeds)) < 3 and not args.allow_few_seeds:
        raise SystemExit("give at least 3 distinct seeds: one or two runs say nothing about the spread")
    if args.jobs < 1:
        raise SystemExit(f"--jobs {args.jobs}: must be at least 1")
    from trainer.config import TrainConfig
    args.lever_fields = TrainConfig.model_fields
    args.levers = parse_levers(args.lever, args.lever_fields)
    args.out = args.out.resolve()  # subprocesses run from REPO (run_logged): paths given here must not move
    args.release = args.release.resolve() if args.release else None
    args.sample_out = args.sample_out.resolve() if args.sample_out else None
    args.out.mkdir(parents=True, exist_ok=True)
    studies = prepare_studies(args)
    started = time.monotonic()

    def one(study: Study, method: str, seed: int) -> dict[str, Any]:
        print(f"[{time.monotonic() - started:7.0f}s] {study.name}: {method} seed {seed}", file=sys.stderr, flush=True)
        return train_and_evaluate(args, study, method, seed)

    tasks = [(study, method, seed) for study in studies for seed in args.seeds for method in METHODS]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each task is a subprocess: threads only wait
        done = list(pool.map(lambda task: one(*task), tasks))
    results: dict[str, dict[str, list[dict[str, Any]]]] = {study.name: {m: [] for m in METHODS} for study in studies}
    for (study, method, _seed), result in zip(tasks, done):
        results[study.name][method].append(result)
    table, summary = report(studies, results, args)
    reports = report_dir(args.out, args.levers)
    screen = f"+{lever_key(args.levers)}" if args.levers else ""
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "quality.md").write_text(table)
    (reports / "quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    for study in studies:
        runs = [r["run_dir"] for m in METHODS for r in results[study.name][m]]
        compare_out = reports / "compare" / study.name if study.regime else reports / "compare"
        run_logged([console_script("slip-eval"), "compare", *runs, "--out", str(compare_out)],
                   args.out / "logs" / f"compare-{study.name}{screen}.log")
    print(table)
    print(reports / "quality.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
