"""Trade-off plot of a regime study: SLIP's instance-retrieval gain over CLIP against what it costs elsewhere.

One panel per other metric (category-level retrieval, zero-shot, 16-shot, link prediction); each point is a regime
(and, with screens, a lever setting) at (paired Δ instance R@1, paired Δ metric), error bars one std over seeds,
encoder-only filled and graph-aware hollow. Points right of 0 gain on instance retrieval, points above 0 gain on
the other metric: a lever that moves points up without moving them left is the one a preset should take.

    python bench/tradeoff.py bench/results/regime-study --out bench/results/regime-study/tradeoff.png

STUDY is a bench/quality.py --out folder: its quality.json and every screens/*/quality.json are read.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regimes import lever_key  # noqa: E402  (bench scripts are run as files, not as a package)

INSTANCE = ("i2t_R@1", "t2i_R@1")
OTHERS = ("t2i_cat_R@1", "zeroshot_acc1", "fewshot_16_acc1", "lp_mrr")
COLUMNS = {"slip": "encoder-only", "slip_graph": "graph-aware"}


def load_reports(study: Path) -> list[tuple[str, dict[str, Any]]]:
    """(label, quality.json) for the study's defaults and each lever screen beside it; ValueError (one line naming
    the folder) when STUDY is not a study."""
    if not study.is_dir():
        raise ValueError(f"{study}: not a folder; give the --out folder of a bench/quality.py study")
    paths = [study / "quality.json", *sorted((study / "screens").glob("*/quality.json"))]
    reports = []
    for path in paths:
        if not path.is_file():
            continue
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON ({error}); rerun bench/quality.py to rewrite it") from error
        label = lever_key(report.get("levers", {})) or "defaults"
        reports.append((label, report))
    if not reports:
        raise ValueError(f"{study}: no quality.json; give the --out folder of a bench/quality.py study")
    return reports


def cli_reports(study: Path) -> Optional[list[tuple[str, dict[str, Any]]]]:
    """load_reports for a command line: None after printing the one-line error (the caller exits 2)."""
    try:
        return load_reports(study)
    except ValueError as error:
        print(error, file=sys.stderr)
        return None


def points(reports: list[tuple[str, dict[str, Any]]], metric: str) -> list[dict[str, Any]]:
    """One point per (report, regime, column): paired means and stds of instance R@1 (averaged over i2t/t2i) and of
    METRIC, as bench/quality.py's verdicts hold them (+ = SLIP better)."""
    rows = []
    for label, report in reports:
        for regime, entry in report.get("regimes", {}).items():
            for column in COLUMNS:
                verdicts = entry.get("verdicts", {}).get(column, {})
                if not all(math.isfinite(verdicts.get(m, {}).get("mean", math.nan)) for m in (*INSTANCE, metric)):
                    continue  # a one-seed screen has no paired spread: bench/quality.py writes NaN
                rows.append({"label": label, "regime": regime, "column": column,
                             "x": sum(verdicts[m]["mean"] for m in INSTANCE) / len(INSTANCE),
                             "x_std": sum(verdicts[m]["std"] for m in INSTANCE) / len(INSTANCE),
                             "y": verdicts[metric]["mean"], "y_std": verdicts[metric]["std"]})
    return rows


def plot(reports: list[tuple[str, dict[str, Any]]], out: Path) -> int:
    """Write the figure; returns the number of points drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({label for label, _ in reports}, key=lambda s: (s != "defaults", s))
    regimes = sorted({regime for _, report in reports for regime in report.get("regimes", {})})
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    markers = dict(zip(regimes, "osD^vP*Xh<>"))
    figure, axes = plt.subplots(1, len(OTHERS), figsize=(5 * len(OTHERS), 4.6))
    drawn = 0
    for axis, metric in zip(axes, OTHERS):
        for row in points(reports, metric):
            colour = colours[row["label"]]
            axis.errorbar(row["x"], row["y"], xerr=row["x_std"], yerr=row["y_std"], fmt=markers.get(row["regime"], "o"),
                          color=colour, mfc=colour if row["column"] == "slip" else "none", ms=7, alpha=0.8,
                          elinewidth=0.6, capsize=2)
            drawn += 1
        axis.axhline(0, color="grey", lw=0.7)
        axis.axvline(0, color="grey", lw=0.7)
        axis.set_xlabel("paired Δ instance R@1 (mean of i2t, t2i)")
        axis.set_ylabel(f"paired Δ {metric}")
        axis.set_title(metric)
    handles = [plt.Line2D([], [], color=colours[label], marker="o", ls="", label=label) for label in labels]
    handles += [plt.Line2D([], [], color="black", marker=markers[r], ls="", mfc="none", label=r) for r in regimes]
    handles += [plt.Line2D([], [], color="black", marker="o", ls="", label="encoder-only"),
                plt.Line2D([], [], color="black", marker="o", ls="", mfc="none", label="graph-aware")]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    figure.suptitle("SLIP − CLIP, paired by seed (+ = SLIP better; bars: one std over seeds)")
    figure.tight_layout(rect=(0, 0.12, 1, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return drawn


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="A bench/quality.py --out folder.")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default STUDY/tradeoff.png).")
    args = parser.parse_args(argv)
    reports = cli_reports(args.study)
    if reports is None:
        return 2
    out = args.out or args.study / "tradeoff.png"
    drawn = plot(reports, out)
    print(f"{out}: {drawn} points from {len(reports)} report(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
