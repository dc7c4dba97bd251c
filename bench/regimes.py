"""Regimes and levers of the quality study (`bench/quality.py --regimes`, `--lever`), and its paired verdicts.

A regime is a named preset of the sample generator's knobs (`etl/sample/knobs.py`); `default` is the historical
sample. Each one moves one thing the graph means, far enough to matter, and leaves the rest at the default:

| regime | knobs | what changes |
| --- | --- | --- |
| default | (none) | the sample the SLIP defaults were chosen on |
| brand-loyal | brand_loyalty 1.0 | co-purchases stay within a brand: neighbours share brand, not just kind |
| focused | category_focus 0.95 | users buy in one group: neighbours are mostly same-group products |
| substitutes | substitute_share 0.8 | baskets add same-leaf alternatives instead of kit complements |
| near-duplicates | near_duplicate_share 0.25 | a quarter of products are near-copies (same image, title ± model) |
| sparse | users_per_product 1.5 | far fewer shared buyers: few edges, many products without neighbours |
| noisy | noise_share 0.5 | half of the baskets start outside the user's interests |

Verdict "beyond the seed spread" (per regime, metric and SLIP column): with the runs of one seed paired (same init
and data order for both methods), d_s = SLIP_s − CLIP_s, sign-flipped for ranks so that d > 0 always means SLIP is
better. With mean d̄ and sample standard deviation s_d over the n seeds, SLIP is *ahead* when d̄ > k·s_d, *behind*
when d̄ < −k·s_d, and *level* otherwise (k = `--spread-k`, default 1; with s_d = 0 any non-zero d̄ counts). For
k = 1 this is the paired t statistic d̄ / (s_d / √n) beyond √n (1.73 for 3 seeds): a screen, not a test at a fixed
significance level.
"""

from __future__ import annotations

import math
import re
import typing
from statistics import mean, stdev
from typing import Any

REGIMES: dict[str, dict[str, float]] = {
    "default": {},
    "brand-loyal": {"brand_loyalty": 1.0},
    "focused": {"category_focus": 0.95},
    "substitutes": {"substitute_share": 0.8},
    "near-duplicates": {"near_duplicate_share": 0.25},
    "sparse": {"users_per_product": 1.5},
    "noisy": {"noise_share": 0.5},
}
LOWER_IS_BETTER = ("_mean_rank", "_median_rank")
AHEAD, LEVEL, BEHIND = "ahead", "level", "behind"


def regime_sets(name: str) -> list[str]:
    """The `slip-etl build --set` items that make regime `name`'s sample."""
    if name not in REGIMES:
        raise SystemExit(f"unknown regime {name!r}; known: {', '.join(REGIMES)}")
    return [f"sources.sample.sample_knobs.{knob}={value}" for knob, value in sorted(REGIMES[name].items())]


def improvement(slip: float, clip: float, metric: str) -> float:
    """SLIP − CLIP, signed so that > 0 means SLIP is better (ranks: lower is better)."""
    diff = slip - clip
    return -diff if metric.endswith(LOWER_IS_BETTER) else diff


def paired_verdict(slip: list[float], clip: list[float], metric: str, k: float = 1.0) -> dict[str, Any]:
    """Mean and std of the paired, signed differences and the verdict (see the module docstring)."""
    if len(slip) != len(clip) or len(slip) < 2:
        return {"mean": math.nan, "std": math.nan, "n": min(len(slip), len(clip)), "verdict": "n/a"}
    diffs = [improvement(s, c, metric) for s, c in zip(slip, clip)]
    d_mean, d_std = mean(diffs), stdev(diffs)
    if d_mean > k * d_std and d_mean > 0:
        verdict = AHEAD
    elif d_mean < -k * d_std and d_mean < 0:
        verdict = BEHIND
    else:
        verdict = LEVEL
    return {"mean": d_mean, "std": d_std, "n": len(diffs), "verdict": verdict,
            "seeds_better": sum(d > 0 for d in diffs)}


def parse_levers(items: list[str], fields: dict[str, Any]) -> dict[str, str]:
    """`NAME=VALUE` items (NAME a slip-train option field, e.g. `lambda_struct`) as a sorted dict of strings."""
    levers: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name or not value.strip():
            raise SystemExit(f"--lever {item!r}: expected NAME=VALUE, e.g. --lever lambda_struct=0.5")
        if name not in fields:
            raise SystemExit(f"--lever {item!r}: {name!r} is not a slip-train option; e.g. "
                             f"{', '.join(sorted(n for n in fields if n.startswith(('lambda', 'struct', 'gat'))))}")
        levers[name] = value.strip()
    return dict(sorted(levers.items()))


def lever_flags(levers: dict[str, str], fields: dict[str, Any]) -> list[str]:
    """slip-train flags for the levers: `--name value`, or `--name` / `--no-name` for a boolean option."""
    flags = []
    for name, value in levers.items():
        flag = "--" + name.replace("_", "-")
        if _is_bool(fields[name].annotation):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise SystemExit(f"--lever {name}={value}: {name} is on/off; give true or false")
            flags.append(flag if value.lower() in ("true", "1", "yes") else f"--no-{flag[2:]}")
        else:
            flags += [flag, value]
    return flags


def lever_key(levers: dict[str, str]) -> str:
    """A folder-name-safe key of the levers ('' without any): `lambda_struct=0.5,gat_layers=1`."""
    key = ",".join(f"{name}={value}" for name, value in levers.items())
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", key)


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or (typing.get_origin(annotation) is typing.Union and bool in typing.get_args(annotation))
