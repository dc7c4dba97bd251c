"""Lever table of a regime study: for each setting (the defaults and every lever screen), how many regimes put SLIP
ahead of / level with / behind CLIP on each headline metric, and where it misses on instance retrieval.

This is the table the defaults are chosen from (bench/README.md): a setting qualifies as a default when it is
behind CLIP on no instance metric (R@1 and mean rank, both directions) in any regime it was run on, encoder-only
and graph-aware, and ahead somewhere on what the structure serves (category level, zero-shot, link prediction).

    python bench/levers.py bench/results/regime-study [--min-regimes 7]

STUDY is a bench/quality.py --out folder; the verdicts are the ones bench/quality.py wrote (one-seed screens have
none and are skipped).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tradeoff import COLUMNS, cli_reports  # noqa: E402  (bench scripts are run as files, not as a package)

INSTANCE = ("i2t_R@1", "t2i_R@1", "i2t_mean_rank", "t2i_mean_rank")
STRUCTURE = ("t2i_cat_R@1", "i2t_cat_R@1", "zeroshot_acc1", "fewshot_16_acc1", "lp_mrr")
VERDICTS = ("ahead", "level", "behind")


def tally(report: dict[str, Any], column: str, metrics: tuple[str, ...]) -> dict[str, Any]:
    """Per metric, the count of regimes per verdict; `misses` lists (regime, metric) where SLIP is behind."""
    counts = {metric: dict.fromkeys(VERDICTS, 0) for metric in metrics}
    misses, regimes = [], []
    for regime, entry in report.get("regimes", {}).items():
        verdicts = entry.get("verdicts", {}).get(column, {})
        if not any(verdicts.get(m, {}).get("verdict") in VERDICTS for m in metrics):
            continue  # one seed (no spread) or a column this report has not got
        regimes.append(regime)
        for metric in metrics:
            verdict = verdicts.get(metric, {}).get("verdict")
            if verdict in VERDICTS:
                counts[metric][verdict] += 1
                if verdict == "behind":
                    misses.append((regime, metric))
    return {"regimes": regimes, "counts": counts, "misses": misses}


def table(reports: list[tuple[str, dict[str, Any]]], column: str, min_regimes: int) -> list[str]:
    """Markdown rows: setting, regimes scored, `a/l/b` per metric, instance misses."""
    metrics = (*INSTANCE, *STRUCTURE)
    lines = [f"{COLUMNS[column]}: regimes ahead / level / behind CLIP (paired by seed, beyond one std)", "",
             "| setting | regimes | " + " | ".join(metrics) + " | instance misses |",
             "| --- | ---: | " + " | ".join("---:" for _ in metrics) + " | --- |"]
    for label, report in reports:
        result = tally(report, column, metrics)
        if len(result["regimes"]) < min_regimes:
            continue
        cells = ["/".join(str(result["counts"][m][v]) for v in VERDICTS) for m in metrics]
        misses = [f"{regime} {metric}" for regime, metric in result["misses"] if metric in INSTANCE]
        lines.append(f"| {label} | {len(result['regimes'])} | " + " | ".join(cells) + " | "
                     + (", ".join(misses) or "none") + " |")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="A bench/quality.py --out folder.")
    parser.add_argument("--min-regimes", type=int, default=1,
                        help="Leave out settings scored (with ≥ 2 seeds) on fewer regimes than this.")
    args = parser.parse_args(argv)
    reports = cli_reports(args.study)
    if reports is None:
        return 2
    for column in COLUMNS:
        print("\n".join(table(reports, column, args.min_regimes)), end="\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
