"""Benchmark: our `nodes` stage vs DuckDB doing the same parse/clean on the same generated Electronics file.

Both run in a fresh child process on the same `meta_Electronics.jsonl.gz` (bench/gen_electronics.py makes it);
this script reports each side's wall seconds, CPU seconds and peak RSS (the child's process tree, sampled every
50 ms with psutil; `ru_maxrss` as a cross-check) and the ratios.

* ours: the real stage through the real framework (`run_stages(["nodes"], force=["nodes"])`), on a dataset
  root where the generated file is adopted as the fetch output (hard link, no copy). Includes what the stage
  always does: quarantine, stats, Parquet writing, the output hash in the stage record.
* duckdb: one SQL query: read_json on the .gz with the same fields and types, HTML tag strip, the common
  entities, whitespace collapse and length caps via regexp_replace/replace (title, features, description,
  store, main_category, categories; like ours, only on values a cheap regexp_matches says can change), id
  check, first-occurrence dedupe, MAIN-first image choice, price parse, and COPY to Parquet (zstd). It does less
  than ours (no mojibake repair, no exact entity decoding, no quarantine, no per-reason accounting, no
  word-boundary caps), so the comparison favours it.

    python bench/gen_electronics.py --products 1.6M --reviews 0        # once (cached under bench/out/)
    python bench/bench_nodes.py --products 1.6M
    python bench/bench_nodes.py --input path/to/meta.jsonl.gz --only ours
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

DUCKDB_COLUMNS = ("{parent_asin: 'VARCHAR', title: 'VARCHAR', features: 'VARCHAR[]', description: 'VARCHAR[]', "
                  "store: 'VARCHAR', main_category: 'VARCHAR', categories: 'VARCHAR[]', price: 'VARCHAR', "
                  "average_rating: 'DOUBLE', rating_number: 'BIGINT', "
                  "images: 'STRUCT(thumb VARCHAR, large VARCHAR, variant VARCHAR, hi_res VARCHAR)[]'}")

DUCKDB_SQL = r"""
CREATE MACRO clean_all(s) AS trim(regexp_replace(
    replace(replace(replace(replace(replace(replace(
        regexp_replace(regexp_replace(s, '(?is)<script\b.*?</script\s*>|<style\b.*?</style\s*>', ' ', 'g'),
                       '</?[A-Za-z][^<>]*>', ' ', 'g'),
        '&lt;', '<'), '&gt;', '>'), '&quot;', '"'), '&#39;', ''''), '&nbsp;', ' '), '&amp;', '&'),
    '\s+', ' ', 'g'));
-- Like ours, only values that can change go through the regexes.
CREATE MACRO clean(s, n) AS left(CASE WHEN regexp_matches(s, '[<&\x00-\x1f]|\s\s|^\s|\s$') THEN clean_all(s)
                                      ELSE s END, n);
CREATE MACRO http(u) AS CASE WHEN regexp_matches(u, '^(?i)https?://[^\s/?#]+') THEN u END;
COPY (
  WITH raw AS (
    SELECT *, row_number() OVER () AS line
    FROM read_json('{path}', format = 'newline_delimited', ignore_errors = true, columns = {columns})
  ), valid AS (
    SELECT * FROM raw WHERE regexp_full_match(parent_asin, '[A-Z0-9]{{10}}')
    QUALIFY row_number() OVER (PARTITION BY parent_asin ORDER BY line) = 1
  ), cleaned AS (
    SELECT line, parent_asin AS asin, clean(title, {title}) AS title,
      list_filter(list_transform(features, lambda f: clean(f, {feature})), lambda f: f <> '')[1:{features}] AS features,
      coalesce(clean(array_to_string(description, ' '), {description}), '') AS description,
      nullif(clean(store, {store}), '') AS store, nullif(clean(main_category, {category}), '') AS main_category,
      list_filter(list_transform(categories, lambda c: clean(c, {category})), lambda c: c <> '') AS category_path,
      TRY_CAST(replace(regexp_extract(price, '^\$?\s*([0-9][0-9,]*(\.[0-9]+)?)', 1), ',', '') AS DOUBLE) AS price,
      average_rating, rating_number,
      coalesce(
        list_filter(list_transform(list_filter(images, lambda i: i.variant = 'MAIN'),
                                   lambda i: coalesce(http(i.hi_res), http(i.large), http(i.thumb))),
                    lambda u: u IS NOT NULL)[1],
        list_filter(list_transform(images, lambda i: coalesce(http(i.hi_res), http(i.large), http(i.thumb))),
                    lambda u: u IS NOT NULL)[1]) AS image_url
    FROM valid
  )
  SELECT row_number() OVER (ORDER BY line) - 1 AS node_id, * EXCLUDE (line) FROM cleaned
  WHERE title <> '' AND image_url IS NOT NULL
) TO '{out}' (FORMAT parquet, COMPRESSION zstd);
"""


# ----------------------------------------------------------------------------------------------- children

def child_duckdb(path: Path, out: Path) -> dict[str, Any]:
    import duckdb

    from etl.config import load_config

    n = load_config().nodes
    sql = DUCKDB_SQL.format(path=path, columns=DUCKDB_COLUMNS, out=out, title=n.max_title_chars,
                            feature=n.max_feature_chars, features=n.max_features,
                            description=n.max_description_chars, store=n.max_store_chars,
                            category=n.max_category_chars)
    con = duckdb.connect()
    con.execute(sql)
    rows = con.execute(f"SELECT count(*) FROM '{out}'").fetchone()[0]
    return {"kept": rows}


def child_ours(path: Path, root: Path) -> dict[str, Any]:
    from etl.config import load_config
    from etl.core.stage import run_stages
    from etl.harness import make_opts
    from etl.stages import STAGES

    cfg = load_config()
    opts = make_opts(root)
    record = run_stages(["nodes"], STAGES, cfg, opts, force=["nodes"])["nodes"]
    return {"kept": record["counts"]["kept"], "rejected": record["counts"]["rejected"],
            "stage_duration_s": record["duration_s"]}


def adopt_input(path: Path, root: Path) -> None:
    """Make `path` the finished fetch output of a dataset root (hard link when possible: no 5 GB copy)."""
    from etl.config import load_config
    from etl.harness import adopt_stage, make_opts

    cfg = load_config()
    opts = make_opts(root)
    dest = opts.work_dir / "fetch" / path.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(path, dest)
    except OSError:
        shutil.copy2(path, dest)
    adopt_stage(cfg, opts, "fetch", {"metadata": dest})


# ----------------------------------------------------------------------------------------------- measuring

def measure(argv: list[str]) -> dict[str, Any]:
    """Run a child command; wall time, CPU time and the peak RSS of its process tree."""
    from procstats import PeakRSS

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    with PeakRSS(proc.pid, interval_s=0.05) as rss:
        out, _ = proc.communicate()
    wall, peak = time.perf_counter() - t0, rss.peak
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"child {' '.join(argv[-3:])} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(wall_s=round(wall, 2),
                  cpu_s=round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
                  peak_rss_gib=round(peak / 2 ** 30, 3),
                  maxrss_gib=round(after.ru_maxrss * 1024 / 2 ** 30, 3))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--products", default="100k", help="generated size to use or make (default 100k)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input", type=Path, help="an existing 2023 metadata .jsonl.gz instead of a generated one")
    ap.add_argument("--only", choices=["ours", "duckdb"], help="run one side only")
    ap.add_argument("--child", choices=["ours", "duckdb"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        fn = child_ours if args.child == "ours" else child_duckdb
        print(json.dumps(fn(args.input, args.work)))
        return 0

    path = args.input
    if path is None:
        import gen_electronics as gen

        n = gen._count(args.products)
        path = gen.DEFAULT_OUT / f"electronics-p{n}-r0-s{args.seed}" / "meta_Electronics.jsonl.gz"
        if not path.exists():
            print(f"generating {path} ...", file=sys.stderr)
            print(json.dumps(gen.write_metadata(path, n, args.seed, progress=True)), file=sys.stderr)
    size = path.stat().st_size
    print(f"input: {path} ({size / 2 ** 30:.2f} GiB compressed)")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-nodes-", dir=path.parent) as tmp:
        me = [sys.executable, str(Path(__file__).resolve()), "--input", str(path)]
        if args.only in (None, "ours"):
            root = Path(tmp) / "ours"
            adopt_input(path, root)
            results["ours"] = measure(me + ["--child", "ours", "--work", str(root)])
            print(f"ours:   {json.dumps(results['ours'])}", flush=True)
        if args.only in (None, "duckdb"):
            results["duckdb"] = measure(me + ["--child", "duckdb", "--work", str(Path(tmp) / "duck.parquet")])
            print(f"duckdb: {json.dumps(results['duckdb'])}", flush=True)
    if len(results) == 2:
        o, d = results["ours"], results["duckdb"]
        print(f"{'':8}{'wall s':>10}{'cpu s':>10}{'peak RSS GiB':>14}{'kept':>12}")
        for name, r in results.items():
            print(f"{name:8}{r['wall_s']:>10.1f}{r['cpu_s']:>10.1f}{r['peak_rss_gib']:>14.2f}{r['kept']:>12}")
        print(f"ratio ours/duckdb: wall {o['wall_s'] / d['wall_s']:.2f}x, cpu {o['cpu_s'] / d['cpu_s']:.2f}x, "
              f"peak RSS {o['peak_rss_gib'] / max(d['peak_rss_gib'], 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
