"""`slip-eval compare RUN... [--out DIR]`: runs side by side, from their eval JSONs and training logs.

Writes DIR/compare.md (every metric of every run), DIR/training_curves.png (each loss term of each run's
log.jsonl against step) and DIR/metrics.png (grouped bars of the headline metrics, all in [0, 1]).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from trainer.run_io import read_log  # noqa: E402

HEADLINE_METRICS = ("i2t_R@1", "t2i_R@1", "i2t_R@10", "t2i_R@10", "zeroshot_acc1", "zeroshot_mean_per_class_recall",
                    "fewshot_1_acc1", "fewshot_16_acc1", "lp_mrr", "lp_hits@10")
GRAPH_PREFIX = "graph_"


def format_value(value: Any) -> str:
    """Table cell text: 4 decimals for floats (tiny ones like weight decays in e-notation), n/a for missing/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.1e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


def eval_json_path(run: Path, split: str) -> Path:
    """`run` itself when it is a JSON file, else RUN/eval-SPLIT.json (what slip-eval writes by default)."""
    return run if run.suffix == ".json" else run / f"eval-{split}.json"


def load_evals(runs: list[Path], split: str) -> dict[str, dict[str, Any]]:
    """{column label: eval result}; labels are run folder names, made unique with their parents if needed."""
    evals: dict[str, dict[str, Any]] = {}
    for run in runs:
        path = eval_json_path(run, split)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `slip-eval {run} --release REL --split {split}` first")
        label = _run_dir(run).name
        if label in evals:
            label = str(_run_dir(run))
        evals[label] = json.loads(path.read_text())
    return evals


def _run_dir(run: Path) -> Path:
    return run.parent if run.suffix == ".json" else run


def comparison_table(evals: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per key seen in any run (first-seen order), one column per run."""
    keys: dict[str, None] = {}
    for result in evals.values():
        keys.update(dict.fromkeys(result))
    header = "| metric | " + " | ".join(evals) + " |"
    rule = "| --- |" + " ---: |" * len(evals)
    rows = [f"| {key} | " + " | ".join(format_value(result.get(key)) for result in evals.values()) + " |"
            for key in keys]
    return "\n".join([header, rule, *rows]) + "\n"


def plot_training_curves(runs: dict[str, Path], out_path: Path) -> Optional[Path]:
    """One panel per loss term found in the logs (keys containing 'loss'), one line per run; None if no log."""
    logs = {label: read_log(run_dir) for label, run_dir in runs.items()}
    terms = sorted({k for log in logs.values() for line in log for k, v in line.items()
                    if "loss" in k and isinstance(v, (int, float))})
    if not terms:
        return None
    fig, axes = plt.subplots(1, len(terms), figsize=(4.5 * len(terms), 3.5), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for label, log in logs.items():
            points = [(line["step"], line[term]) for line in log if isinstance(line.get(term), (int, float))]
            if points:
                ax.plot(*zip(*points), label=label)
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.legend(fontsize="small")
    return _save(fig, out_path)


def _save(fig: Any, out_path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def plot_metric_bars(evals: dict[str, dict[str, Any]], out_path: Path) -> Optional[Path]:
    """Grouped bars of the headline metrics (encoder-only and graph-aware) present in any run."""
    names = [prefix + m for m in HEADLINE_METRICS for prefix in ("", GRAPH_PREFIX)
             if any(isinstance(r.get(prefix + m), (int, float)) for r in evals.values())]
    if not names:
        return None
    width = 0.8 / len(evals)
    fig, ax = plt.subplots(figsize=(min(24.0, 3.0 + 0.9 * len(names)), 5.0))  # ~1 inch per metric group
    for i, (label, result) in enumerate(evals.items()):
        values = [result.get(n) if isinstance(result.get(n), (int, float)) else math.nan for n in names]
        ax.bar([x + i * width for x in range(len(names))], values, width, label=label)
    ax.set_xticks([x + width * (len(evals) - 1) / 2 for x in range(len(names))], names, rotation=60, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(fontsize="small")
    return _save(fig, out_path)


def write_comparison(runs: list[Path], out: Path, split: str = "test") -> list[Path]:
    """Write OUT/compare.md and the plots (those with data) for `runs`; return the files written."""
    evals = load_evals(runs, split)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "compare.md"
    table.write_text(f"# slip-eval compare ({split} split)\n\n" + comparison_table(evals))
    run_dirs = dict(zip(evals, (_run_dir(r) for r in runs)))
    written = [table, plot_training_curves(run_dirs, out / "training_curves.png"),
               plot_metric_bars(evals, out / "metrics.png")]
    return [path for path in written if path is not None]
