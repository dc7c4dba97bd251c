"""`slip-eval compare RUN... [--out DIR]`: do the runs differ, and by how much? From their eval JSONs and logs.

Runs are grouped by their method (the eval JSON's `method`, else RUN/config.json or RUN/summary.json); a method
whose runs repeat a seed is not one experiment over seeds, so those runs stay separate groups (named by folder).
With one run per group a cell is its value; with several, mean ± sample std. Deltas are relative to the first
group (the first run given); with seeds on both sides, paired wins count the seeds where a group beats the first
one (ties apart; lower is better for ranks).

Writes DIR/compare.md: the headline metrics first (R@1 both ways, mean rank, zero-shot acc1, few-shot-16, LP
MRR), encoder-only and graph-aware tables; then the other metrics; then housekeeping keys (few-shot weight decays,
short classes, counts) in their own table. DIR/compare.json holds the same numbers for scripts;
DIR/metrics.png bars of the headline metrics with std error bars; DIR/training_curves.png each loss term against
step.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from trainer.run_io import read_log  # noqa: E402

GRAPH_PREFIX = "graph_"
#: the metrics that answer "which method is better", in this order; ranks are lower-is-better
HEADLINE_METRICS = ("i2t_R@1", "t2i_R@1", "i2t_mean_rank", "t2i_mean_rank", "zeroshot_acc1", "fewshot_16_acc1",
                    "lp_mrr")
#: keys that describe how a number was obtained, not how good a model is
HOUSEKEEPING = re.compile(r"(weight_decay|short_classes|short_negatives|_n|_n_queries|_pool|_products|"
                          r"_held_out_edges|max_neighbors|^n_samples|^skipped|^step)$")
INFO_KEYS = ("method", "split", "step")


def lower_is_better(metric: str) -> bool:
    return metric.endswith("_rank")


def is_housekeeping(key: str, value: Any) -> bool:
    """Settings and counts: few-shot weight decays, short classes, sample and query counts, non-numbers."""
    return HOUSEKEEPING.search(key) is not None or not isinstance(value, float)  # metrics are floats (NaN too)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_value(value: Any) -> str:
    """Table cell text: 4 decimals for floats (tiny ones like weight decays in e-notation), n/a for missing/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.1e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


# ---- runs and groups --------------------------------------------------------------------------------------------
@dataclass
class Run:
    label: str
    folder: Path
    result: dict[str, Any]
    method: str
    seed: Optional[int]


@dataclass
class Group:
    """Runs of one method (one column of the tables)."""

    name: str
    runs: list[Run] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [float(r.result[key]) for r in self.runs if _is_number(r.result.get(key))]

    def mean(self, key: str) -> Optional[float]:
        values = self.values(key)
        return statistics.fmean(values) if values else None

    def std(self, key: str) -> Optional[float]:
        values = self.values(key)
        return statistics.stdev(values) if len(values) > 1 else None

    def by_seed(self, key: str) -> dict[int, float]:
        return {r.seed: float(r.result[key]) for r in self.runs
                if r.seed is not None and _is_number(r.result.get(key))}


def eval_json_path(run: Path, split: str) -> Path:
    """`run` itself when it is a JSON file, else RUN/eval-SPLIT.json (what slip-eval writes by default)."""
    return run if run.suffix == ".json" else run / f"eval-{split}.json"


def _run_dir(run: Path) -> Path:
    return run.parent if run.suffix == ".json" else run


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def load_runs(runs: list[Path], split: str) -> list[Run]:
    """Each run's eval result, method and seed; labels are folder names, made unique with their parents."""
    loaded: list[Run] = []
    labels: set[str] = set()
    for run in runs:
        path = eval_json_path(run, split)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `slip-eval {run} --release REL --split {split}` first")
        result = _read_json(path)
        if not isinstance(result, dict):
            raise ValueError(f"{path}: expected a JSON object of metrics")
        folder = _run_dir(run)
        config = _side_file(folder / "config.json")
        summary = _side_file(folder / "summary.json")
        method = result.get("method") or config.get("method") or summary.get("method") or folder.name
        seed = config.get("seed", summary.get("seed"))
        label = folder.name if folder.name not in labels else str(folder)
        labels.add(label)
        loaded.append(Run(label, folder, result, str(method), int(seed) if isinstance(seed, int) else None))
    return loaded


def _side_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    value = _read_json(path)
    return value if isinstance(value, dict) else {}


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups by method in first-seen order; a method whose runs repeat (or lack) a seed: one group per run."""
    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    groups: list[Group] = []
    for method, members in by_method.items():
        seeds = [r.seed for r in members]
        if len(members) == 1 or (None not in seeds and len(set(seeds)) == len(seeds)):
            groups.append(Group(method, members))
        else:
            groups.extend(Group(f"{method}:{r.label}", [r]) for r in members)
    return groups


def paired_wins(base: Group, other: Group, key: str) -> Optional[tuple[int, int, int]]:
    """(wins, ties, losses) of `other` against `base` over the seeds both have; None without a common seed."""
    a, b = base.by_seed(base_key(base, key)), other.by_seed(key)
    common = sorted(set(a) & set(b))
    if not common:
        return None
    sign = -1.0 if lower_is_better(key) else 1.0
    diffs = [sign * (b[s] - a[s]) for s in common]
    return sum(d > 0 for d in diffs), sum(d == 0 for d in diffs), sum(d < 0 for d in diffs)


# ---- tables -----------------------------------------------------------------------------------------------------
def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table whose columns are as wide as their content (first column left, the rest right)."""
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "| " + " | ".join(cells) + " |"

    rule = "| " + " | ".join(("-" * w if i == 0 else "-" * (w - 1) + ":") for i, w in enumerate(widths)) + " |"
    return "\n".join([line(header), rule, *(line(r) for r in rows)]) + "\n"


def _cell(group: Group, key: str) -> str:
    mean, std = group.mean(key), group.std(key)
    if mean is None:
        return "n/a"
    return format_value(mean) + (f" ± {format_value(std)}" if std is not None else "")


def base_key(base: Group, key: str) -> str:
    """The baseline's key to compare `key` with: its graph-aware score falls back to its encoder-only one (a CLIP
    baseline has no graph-aware scores; graph-aware SLIP is then compared with plain CLIP)."""
    if key.startswith(GRAPH_PREFIX) and not base.values(key):
        return key[len(GRAPH_PREFIX):]
    return key


def _delta(base: Group, other: Group, key: str) -> str:
    a, b = base.mean(base_key(base, key)), other.mean(key)
    if a is None or b is None:
        return "n/a"
    if a == 0:
        return "n/a" if b != 0 else "+0.0%"
    return f"{100 * (b - a) / abs(a):+.1f}%"


def _wins(base: Group, other: Group, key: str) -> str:
    counted = paired_wins(base, other, key)
    if counted is None:
        return "n/a"
    wins, ties, losses = counted
    return f"{wins}/{wins + ties + losses}" + (f" ({ties} tied)" if ties else "")


def metric_table(groups: list[Group], keys: list[str]) -> str:
    """One row per metric: each group's value (mean ± std), then per later group its delta against the first
    group and, when seeds pair up, its paired wins."""
    base, others = groups[0], groups[1:]
    paired = [g for g in others if len(g.runs) > 1 and any(sum(paired_wins(base, g, k) or ()) > 1 for k in keys)]
    header = ["metric", *(f"{g.name} (n={len(g.runs)})" if len(g.runs) > 1 else g.name for g in groups)]
    header += [f"Δ {g.name} vs {base.name}" for g in others]
    header += [f"{g.name} wins (by seed)" for g in paired]
    rows = []
    for key in keys:
        name = key + (" ↓" if lower_is_better(key) else "")
        fallback = base_key(base, key) != key
        rows.append([name, _cell(base, base_key(base, key)) + (" (enc.)" if fallback else ""),
                     *(_cell(g, key) for g in others), *(_delta(base, g, key) for g in others),
                     *(_wins(base, g, key) for g in paired)])
    return markdown_table(header, rows)


def plain_table(groups: list[Group], keys: list[str]) -> str:
    """Housekeeping: one column per run (settings and counts are not averaged)."""
    runs = [r for g in groups for r in g.runs]
    rows = [[key, *(format_value(r.result.get(key)) for r in runs)] for key in keys]
    return markdown_table(["key", *(r.label for r in runs)], rows)


def split_keys(runs: list[Run]) -> dict[str, list[str]]:
    """{'encoder': headline keys, 'graph': graph-aware headline keys, 'other': other metrics, 'housekeeping': ...}
    with only keys some run has, in first-seen order (headlines in HEADLINE_METRICS order)."""
    seen: dict[str, None] = {}
    for run in runs:
        seen.update(dict.fromkeys(run.result))
    numeric = {k for k in seen if any(not is_housekeeping(k, r.result.get(k)) for r in runs if k in r.result)}
    encoder = [m for m in HEADLINE_METRICS if m in numeric]
    graph = [GRAPH_PREFIX + m for m in HEADLINE_METRICS if GRAPH_PREFIX + m in numeric]
    headline = set(encoder) | set(graph)
    other = [k for k in seen if k in numeric and k not in headline]
    housekeeping = [k for k in seen if k not in numeric and k not in ("method",)]
    return {"encoder": encoder, "graph": graph, "other": other, "housekeeping": housekeeping}


def comparison_markdown(groups: list[Group], split: str) -> str:
    runs = [r for g in groups for r in g.runs]
    keys = split_keys(runs)
    described = ", ".join(f"{g.name}: {len(g.runs)} run{'s' * (len(g.runs) > 1)}"
                          + (f" (seeds {', '.join(str(r.seed) for r in g.runs)})" if len(g.runs) > 1 else "")
                          for g in groups)
    lines = [f"# slip-eval compare ({split} split)", "", f"{described}. Deltas are relative to {groups[0].name} "
             f"(graph-aware rows: to its encoder-only score, marked (enc.), where it has no graph-aware one); ↓ marks "
             "lower-is-better; with several seeds a cell is mean ± std and wins count the seeds where a method beats "
             "the first one.", ""]
    if any(len(g.runs) == 1 for g in groups) and len(groups) > 1:
        lines += ["One run per method cannot separate a difference from seed noise: run each method with a few "
                  "`--seed` values and compare them all.", ""]
    for title, part in (("Headline, encoder-only", "encoder"), ("Headline, graph-aware", "graph"),
                        ("Other metrics", "other")):
        if keys[part]:
            lines += [f"## {title}", "", metric_table(groups, keys[part])]
    if keys["housekeeping"]:
        lines += ["## Housekeeping (settings and counts)", "", plain_table(groups, keys["housekeeping"])]
    return "\n".join(lines)


def comparison_json(groups: list[Group]) -> dict[str, Any]:
    """The numbers behind compare.md: per group its runs, means and stds; per later group deltas and wins."""
    runs = [r for g in groups for r in g.runs]
    keys = split_keys(runs)
    metrics = keys["encoder"] + keys["graph"] + keys["other"]
    base = groups[0]
    out: dict[str, Any] = {"baseline": base.name, "headline": keys["encoder"] + keys["graph"],
                           "housekeeping": keys["housekeeping"], "groups": {}}
    for g in groups:
        entry: dict[str, Any] = {"runs": [r.label for r in g.runs], "seeds": [r.seed for r in g.runs],
                                 "mean": {k: g.mean(k) for k in metrics}, "std": {k: g.std(k) for k in metrics}}
        if g is not base:
            entry["wins"] = {k: paired_wins(base, g, k) for k in metrics}
        out["groups"][g.name] = entry
    return out


# ---- plots ------------------------------------------------------------------------------------------------------
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


def _save(fig: Any, out_path: Path, bbox_inches: Optional[str] = None) -> Path:
    fig.tight_layout()
    fig.savefig(out_path, dpi=100, bbox_inches=bbox_inches)
    plt.close(fig)
    return out_path


def plot_metric_bars(groups: list[Group], out_path: Path) -> Optional[Path]:
    """Bars of each group's mean headline metrics (std error bars with several seeds): scores in [0, 1] on the
    left, mean ranks (lower is better) on the right."""
    keys = split_keys([r for g in groups for r in g.runs])
    names = keys["encoder"] + keys["graph"]
    panels = [("score", [n for n in names if not lower_is_better(n)]), ("mean rank ↓", [n for n in names
                                                                                       if lower_is_better(n)])]
    panels = [(title, ks) for title, ks in panels if ks]
    if not panels:
        return None
    width = 0.8 / len(groups)
    widths = [max(2.0, 0.9 * len(ks)) for _, ks in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(min(24.0, 3.0 + sum(widths)), 5.0), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, (title, ks) in zip(axes[0], panels):
        for i, g in enumerate(groups):
            means = [g.mean(k) if g.mean(k) is not None else math.nan for k in ks]
            errs = [g.std(k) or 0.0 for k in ks]
            ax.bar([x + i * width for x in range(len(ks))], means, width, yerr=errs, capsize=3,
                   label=f"{g.name} (n={len(g.runs)})")
        ax.set_xticks([x + width * (len(groups) - 1) / 2 for x in range(len(ks))], ks, rotation=60, ha="right")
        ax.set_ylabel(title)
        if not title.startswith("mean rank"):
            ax.set_ylim(0, 1)
    # one legend above the panels: inside them it hides bars once there are more than a few methods
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(groups), 5),
               fontsize="small", frameon=False)
    return _save(fig, out_path, bbox_inches="tight")  # "tight" keeps the legend outside the axes in the file


def write_comparison(runs: list[Path], out: Path, split: str = "test") -> list[Path]:
    """Write OUT/compare.md, OUT/compare.json and the plots (those with data) for `runs`; return the files."""
    loaded = load_runs(runs, split)
    groups = group_runs(loaded)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "compare.md"
    table.write_text(comparison_markdown(groups, split), encoding="utf-8")
    numbers = out / "compare.json"
    numbers.write_text(json.dumps(comparison_json(groups), indent=2), encoding="utf-8")
    written = [table, numbers, plot_training_curves({r.label: r.folder for r in loaded}, out / "training_curves.png"),
               plot_metric_bars(groups, out / "metrics.png")]
    return [path for path in written if path is not None]
