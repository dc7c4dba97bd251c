"""Benchmark: our 2023 co-purchase projection (the `edges` stage's code path) vs DuckDB doing the same query.

Both sides read the same generated reviews .jsonl.gz (bench/gen_electronics.py: heavy-tailed users, ~0.4
distinct users per review, a few broken lines), keep verified purchases of products in the node table (the
generator's product ASINs), one purchase per (user, product), users with min..max products, pairs with
weight >= min_weight, and write the edges to Parquet. Each side runs in its own process; the parent samples
the RSS of that process tree (psutil, every 50 ms) and reports wall seconds, peak RSS and edges.

Heavy users: DuckDB's `HAVING count(*) BETWEEN 2 AND 100` drops users with more than 100 products; our stage
default subsamples them to 100. For a like-for-like comparison the default runs our side with `--heavy drop`
(the same semantics; the edge sets are then compared exactly). `--heavy sample` measures the stage's default,
and `--max-user N` with a large N measures what the cap costs.

    python bench/bench_edges.py --reviews 1M                 # smoke
    python bench/bench_edges.py --reviews 20M                # the reference comparison
    python bench/bench_edges.py --reviews 44M --sides ours   # full Electronics scale, our side only
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import gen_electronics  # noqa: E402 - after the path set-up above
from procstats import PeakRSS  # noqa: E402


def reviews_file(out: Path, n_reviews: int, n_products: int, seed: int) -> Path:
    """The generated reviews file (same folder naming as gen_electronics' CLI, so a file made there is reused)."""
    path = out / f"electronics-p{n_products}-r{n_reviews}-s{seed}" / "Electronics.jsonl.gz"
    if not path.exists():
        print(f"generating {n_reviews:,} reviews over {n_products:,} products -> {path}", file=sys.stderr)
        info = gen_electronics.write_reviews(path, n_reviews, n_products, seed, progress=True)
        print(json.dumps(info), file=sys.stderr)
    return path


def nodes_file(folder: Path, n_products: int) -> Path:
    """node_id, asin for the generator's products (what the nodes stage would produce from its metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / f"nodes-{n_products}.parquet"
    if not path.exists():
        table = pa.table({"node_id": pa.array(np.arange(n_products, dtype=np.int64)),
                          "asin": gen_electronics.asins(np.arange(n_products))})
        pq.write_table(table, path)
    return path


# ----------------------------------------------------------------------------------------------- the two sides

def run_ours(reviews: Path, nodes: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    import polars as pl

    from etl.graph.projection import project_copurchase
    from etl.stages.edges import AsinIndex, read_purchases

    table = pl.read_parquet(nodes)
    node_ids = table["node_id"].to_numpy()
    t0 = time.perf_counter()
    users, purchase_nodes, scan = read_purchases(reviews, AsinIndex(table["asin"], node_ids), verified_only=True)
    t_read = time.perf_counter() - t0
    edges, stats = project_copurchase(users, purchase_nodes, int(node_ids.max()) + 1,
                                      min_user_products=args.min_user, max_user_products=args.max_user,
                                      min_weight=args.min_weight, seed=0, heavy_users=args.heavy)
    del users, purchase_nodes
    pl.DataFrame({"src": edges.src, "dst": edges.dst, "weight": edges.weight}).write_parquet(out)
    stats.pop("pair_weight_histogram")
    return {"edges": len(edges), "weight_sum": float(edges.weight.sum()), "read_s": round(t_read, 1),
            "reviews": scan.as_stats() | {"bad_line_examples": len(scan.bad_line_examples)}, "projection": stats}


def run_duckdb(reviews: Path, nodes: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET temp_directory = '{out.parent / 'duckdb_tmp'}'")
    query = f"""
        COPY (
          WITH r AS (
            SELECT user_id, parent_asin FROM read_json('{reviews}', format = 'newline_delimited',
                compression = 'gzip', ignore_errors = true,
                columns = {{user_id: 'VARCHAR', parent_asin: 'VARCHAR', verified_purchase: 'BOOLEAN'}})
            WHERE verified_purchase AND user_id <> ''
          ),
          p AS (SELECT DISTINCT r.user_id, n.node_id FROM r JOIN read_parquet('{nodes}') n ON n.asin = r.parent_asin),
          u AS (SELECT user_id FROM p GROUP BY user_id HAVING count(*) BETWEEN {args.min_user} AND {args.max_user}),
          b AS (SELECT p.user_id, p.node_id FROM p SEMI JOIN u USING (user_id))
          SELECT a.node_id AS src, c.node_id AS dst, count(*)::FLOAT AS weight
          FROM b a JOIN b c ON a.user_id = c.user_id AND a.node_id < c.node_id
          GROUP BY 1, 2 HAVING count(*) >= {args.min_weight}
        ) TO '{out}' (FORMAT parquet)
    """
    con.execute(query)
    edges, weight_sum = con.execute(f"SELECT count(*), sum(weight) FROM read_parquet('{out}')").fetchone()
    return {"edges": int(edges), "weight_sum": float(weight_sum or 0), "duckdb": duckdb.__version__}


SIDES = {"ours": run_ours, "duckdb": run_duckdb}


# ----------------------------------------------------------------------------------------------- measuring

def measure(side: str, argv: list[str]) -> dict[str, Any]:
    """Run one side in a child process; sample its process tree's RSS until it exits; add its CPU time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        proc = subprocess.Popen([sys.executable, __file__, *argv, "--_side", side, "--_result", result.name])
        t0 = time.perf_counter()
        with PeakRSS(proc.pid, interval_s=0.05) as rss:
            proc.wait()
        seconds, peak = time.perf_counter() - t0, rss.peak
        if proc.returncode != 0:
            raise SystemExit(f"{side} failed with exit code {proc.returncode}")
        out = json.loads(Path(result.name).read_text())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"side": side, "seconds": round(seconds, 1), "cpu_s": round(cpu, 1), "peak_rss_gib": round(peak / 2**30, 2),
            **out}


def same_edges(a: Path, b: Path) -> bool:
    import polars as pl

    def load(p: Path) -> pl.DataFrame:
        return pl.read_parquet(p).select(pl.col("src", "dst").cast(pl.Int64), pl.col("weight").cast(pl.Float32)
                                         ).sort("src", "dst")

    return load(a).equals(load(b))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reviews", type=gen_electronics._count, default=20_000_000, help="review lines (e.g. 1M, 20M)")
    ap.add_argument("--products", type=gen_electronics._count, default=1_600_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=gen_electronics.DEFAULT_OUT)
    ap.add_argument("--sides", default="ours,duckdb", help="comma-separated: ours, duckdb")
    ap.add_argument("--heavy", choices=["drop", "sample"], default="drop",
                    help="our side's policy for users above --max-user (DuckDB always drops them)")
    ap.add_argument("--min-user", type=int, default=2)
    ap.add_argument("--max-user", type=int, default=100)
    ap.add_argument("--min-weight", type=int, default=2)
    ap.add_argument("--_side", help=argparse.SUPPRESS)
    ap.add_argument("--_result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    reviews = reviews_file(args.out, args.reviews, args.products, args.seed)
    work = reviews.parent / "bench_edges"
    work.mkdir(exist_ok=True)
    nodes = nodes_file(work, args.products)
    if args._side:
        out = work / f"edges-{args._side}.parquet"
        Path(args._result).write_text(json.dumps(SIDES[args._side](reviews, nodes, out, args)))
        return 0

    child_argv = [a for a in (argv if argv is not None else sys.argv[1:])]
    results = [measure(side, child_argv) for side in args.sides.split(",")]
    print(f"{args.reviews:,} reviews ({reviews.stat().st_size / 2**30:.2f} GiB gz), {args.products:,} products, "
          f"users {args.min_user}..{args.max_user} (ours: {args.heavy}), weight >= {args.min_weight}")
    print(f"{'side':8} {'seconds':>8} {'CPU s':>8} {'peak RSS GiB':>13} {'edges':>12} {'weight sum':>14}")
    for r in results:
        print(f"{r['side']:8} {r['seconds']:8.1f} {r['cpu_s']:8.1f} {r['peak_rss_gib']:13.2f} {r['edges']:12,} "
              f"{r['weight_sum']:14,.0f}")
    by_side = {r["side"]: r for r in results}
    if len(by_side) == 2:
        ours, duck = by_side["ours"], by_side["duckdb"]
        print(f"ratio ours/duckdb: time {ours['seconds'] / duck['seconds']:.2f}, "
              f"CPU {ours['cpu_s'] / duck['cpu_s']:.2f}, peak RSS {ours['peak_rss_gib'] / duck['peak_rss_gib']:.2f}")
        if args.heavy == "drop":
            print("edge sets identical:", same_edges(work / "edges-ours.parquet", work / "edges-duckdb.parquet"))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
