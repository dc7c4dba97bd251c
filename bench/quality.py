"""Quality study: SLIP vs CLIP trained with the same budget on the same release, over several seeds.

For every seed, `slip-train --method slip` and `--method clip` run with identical flags (same model, steps,
batch size, seed: the trainer gives both the same init and data order), then `slip-eval` scores each on the
test split. The report gives mean ± sample std over seeds of every metric for CLIP, SLIP encoder-only and
SLIP graph-aware, and the relative difference of each SLIP column to CLIP ((slip - clip) / |clip|; for ranks
lower is better). Runs already finished with the same budget are reused with their evaluations, so an interrupted
study resumes and more seeds can be added later.

    python bench/quality.py --release path/to/release --steps 2000 --batch-size 256 --device cuda
    python bench/quality.py --sample-out bench/out/sample        # builds the embedded sample release first
    python bench/quality.py --synthetic --steps 2 --batch-size 16 --workers 0   # smoke run, minutes on CPU

Writes OUT/quality.md, OUT/quality.json and OUT/compare/ (slip-eval compare: table, curves, bar chart).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]

METRICS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_mrr", "t2i_mrr",
           "i2t_mean_rank", "t2i_mean_rank", "i2t_median_rank", "t2i_median_rank",
           "zeroshot_acc1", "zeroshot_acc5", "zeroshot_mean_per_class_recall",
           "fewshot_1_acc1", "fewshot_5_acc1", "fewshot_16_acc1", "lp_mrr", "lp_hits@1", "lp_hits@10")
LOWER_IS_BETTER = ("_mean_rank", "_median_rank")
METHODS = ("clip", "slip")


def console_script(name: str) -> str:
    """The project's console script installed beside this interpreter."""
    path = Path(sys.executable).with_name(name)
    if not path.is_file():
        raise SystemExit(f"{path} not found: install the project (pip install -e .) in this environment")
    return str(path)


def run_logged(cmd: list[str], log: Path) -> str:
    """Run a command with stderr to `log`; return stdout; fail loudly with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"command failed ({done.returncode}): {' '.join(cmd)}\n--- {log} ---\n{tail}")
    return done.stdout


def prepare_release(args: argparse.Namespace) -> Path:
    """The release to study: given, built from the embedded sample, or a tiny synthetic one."""
    if args.release is not None:
        return args.release
    if args.sample_out is not None:
        stdout = run_logged([console_script("slip-etl"), "build", "--category", "electronics", "--source", "sample",
                             "--out", str(args.sample_out)], args.out / "logs" / "build-sample.log")
        return Path(stdout.strip().splitlines()[-1])  # CLI contract: last stdout line = release folder
    from trainer.synthetic import make_synthetic_release
    release = args.out / "synthetic-release"
    if not (release / "manifest.json").is_file():
        make_synthetic_release(release, n_nodes=400, n_classes=8, seed=0)
    return release


def finished(run_dir: Path, steps: int) -> bool:
    summary = run_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("steps") == steps


def train_and_evaluate(args: argparse.Namespace, release: Path, method: str, seed: int) -> dict[str, Any]:
    """One run: train (unless already done with this budget), evaluate; returns the eval JSON + timing."""
    run_dir = args.out / "runs" / f"{method}-s{seed}"
    eval_json = run_dir / "eval-test.json"
    trained = args.force or not finished(run_dir, args.steps)
    if trained:
        run_logged([console_script("slip-train"), "--release", str(release), "--method", method,
                    "--model", args.model, "--batch-size", str(args.batch_size), "--workers", str(args.workers),
                    "--steps", str(args.steps), "--seed", str(seed), "--out", str(run_dir),
                    "--device", args.device, *args.train_arg, *(args.slip_arg if method == "slip" else [])],
                   args.out / "logs" / f"train-{method}-s{seed}.log")
    eval_cmd = [console_script("slip-eval"), str(run_dir), "--release", str(release), "--split", "test",
                "--json", str(eval_json), "--device", args.eval_device, "--seed", str(seed)]
    if args.max_samples:
        eval_cmd += ["--max-samples", str(args.max_samples)]
    if trained or not eval_json.is_file():  # a reused run keeps its evaluation (delete it to score again)
        run_logged(eval_cmd, args.out / "logs" / f"eval-{method}-s{seed}.log")
    result = json.loads(eval_json.read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    result["train_time_s"] = summary.get("train_time_s")
    result["samples_per_s"] = summary.get("samples_per_s")
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    return mean(values), (stdev(values) if len(values) > 1 else math.nan)


def aggregate(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, list[float]]]:
    """{column: {metric: [value per seed]}} for CLIP, SLIP encoder-only and SLIP graph-aware."""
    columns = {"clip": ("clip", ""), "slip": ("slip", ""), "slip_graph": ("slip", "graph_")}
    return {column: {m: [r[prefix + m] for r in results[method] if r.get(prefix + m) is not None]
                     for m in METRICS}
            for column, (method, prefix) in columns.items()}


def relative_difference(new: float, base: float, metric: str) -> float:
    """(new - base) / |base|, signed so that > 0 is always an improvement."""
    if base == 0:
        return math.nan
    diff = (new - base) / abs(base)
    return -diff if metric.endswith(LOWER_IS_BETTER) else diff


def report(per_seed: dict[str, dict[str, list[float]]], args: argparse.Namespace, release: Path,
           timing: dict[str, list[float]]) -> tuple[str, dict[str, Any]]:
    """Markdown table + JSON summary of the study."""
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

    def wins(column: str, metric: str) -> str:
        """Seeds where SLIP beats CLIP: the runs of one seed share init and data order, so they pair up."""
        new, base = per_seed[column][metric], per_seed["clip"][metric]
        if not new or len(new) != len(base):
            return "n/a"
        better = sum(relative_difference(n, b, metric) > 0 for n, b in zip(new, base) if b != 0)
        return f"{better}/{len(new)}"

    lines = [
        "# SLIP vs CLIP quality study", "",
        f"- release: `{release}`", f"- model: `{args.model}`",
        f"- budget per run: {args.steps} steps × batch {args.batch_size} (equal for both methods)",
        f"- extra flags: both {' '.join(args.train_arg) or '(none)'}; SLIP only {' '.join(args.slip_arg) or '(none)'}",
        f"- seeds: {', '.join(map(str, args.seeds))} (mean ± sample std over seeds)",
        f"- train time per run (s): clip {cell(timing['clip'])}, slip {cell(timing['slip'])}",
        "- Δ = relative difference of the mean to CLIP's, signed so that + is better (ranks: lower is better)",
        "- seeds better = seeds in which SLIP beats the CLIP run of the same seed (same init and data order)",
        "",
        "| metric | CLIP | SLIP encoder-only | SLIP graph-aware | Δ encoder vs CLIP | Δ graph-aware vs CLIP "
        "| seeds better (encoder / graph) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for metric in METRICS:
        lines.append(f"| {metric} | {cell(per_seed['clip'][metric])} | {cell(per_seed['slip'][metric])} | "
                     f"{cell(per_seed['slip_graph'][metric])} | {rel('slip', metric)} | "
                     f"{rel('slip_graph', metric)} | {wins('slip', metric)} / {wins('slip_graph', metric)} |")
    summary = {"release": str(release), "model": args.model, "steps": args.steps, "batch_size": args.batch_size,
               "seeds": args.seeds, "per_seed": per_seed, "train_time_s": timing,
               "mean_std": {column: {m: list(mean_std(v)) if v else None for m, v in metrics.items()}
                            for column, metrics in per_seed.items()}}
    return "\n".join(lines) + "\n", summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--release", type=Path, help="Existing release folder.")
    source.add_argument("--sample-out", type=Path, help="Build the embedded sample release under this folder.")
    source.add_argument("--synthetic", action="store_true", help="A tiny synthetic release (smoke runs only).")
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
                        help="Extra slip-train flag for the SLIP runs only (ablations: CLIP runs stay reusable).")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "quality", help="Output folder.")
    parser.add_argument("--force", action="store_true", help="Retrain runs that already finished.")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if len(set(args.seeds)) < 3:
        raise SystemExit("give at least 3 distinct seeds: one or two runs say nothing about the spread")
    args.out.mkdir(parents=True, exist_ok=True)
    release = prepare_release(args)
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    started = time.monotonic()
    for seed in args.seeds:
        for method in METHODS:
            print(f"[{time.monotonic() - started:7.0f}s] {method} seed {seed}", file=sys.stderr, flush=True)
            results[method].append(train_and_evaluate(args, release, method, seed))
    timing = {m: [r["train_time_s"] for r in results[m] if r.get("train_time_s") is not None] for m in METHODS}
    table, summary = report(aggregate(results), args, release, timing)
    (args.out / "quality.md").write_text(table)
    (args.out / "quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    run_dirs = [str(args.out / "runs" / f"{m}-s{s}") for s in args.seeds for m in METHODS]
    run_logged([console_script("slip-eval"), "compare", *run_dirs, "--out", str(args.out / "compare")],
               args.out / "logs" / "compare.log")
    print(table)
    print(args.out / "quality.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
