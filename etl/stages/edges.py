"""Stage `edges`: the product graph, then the graph filters.

2023 (and the sample): products are linked when they share purchasers. The raw reviews are streamed through the
one JSON-lines reader (etl/parse/jsonl.py; only `user_id`, `parent_asin`, `verified_purchase` are parsed; bad lines
are counted by the reader's rule, the same count the `reviews` stage quarantines, never fatal), each review
becomes a purchase (user key, node id), and `etl.graph.projection.project_copurchase` projects the user-product
graph onto products: one purchase per (user, product); users with fewer than `edges.min_user_products` products
add nothing; users with more than `edges.max_user_products` keep a seeded subsample of that many (the projection
is quadratic in a user's degree; what the bound removes is reported in `stats.projection`); weight = shared
purchasers; pairs with weight < `edges.min_weight` are dropped; with `edges.top_k` > 0 an edge is kept only if it
is among the k heaviest edges of at least one endpoint (2023 only: 2018 edges are unweighted). Memory is about 12
bytes per purchase plus one bounded block of candidate pairs (peak RSS at full scale: bench/README.md).

2018: `also_buy` lists give edges of kind `also_buy`, and `also_view` lists (with `edges.include_also_view`) give
edges of kind `also_view`, weight 1; listed ASINs absent from the node table are dropped and counted.

Every edge is undirected and stored once (`src < dst`), without self loops or duplicates per kind. The filters
then run in this order over the simple graph of all kinds: `drop_isolated`, `k_core` (k = `edges.k_core`),
`largest_component`; each removed node is counted under the filter's name and written to node_filter.parquet.

User ids are keyed by a 64-bit hash (polars' string hash): two users collide with probability ~n²/2⁶⁵ (~1e-5 for
18M users), which would merge their baskets. ASINs are looked up exactly (hash, then string comparison).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

import schemas
from etl.core.stage import Counts, StageContext, StageError, StageResult
from etl.graph.filters import filter_steps, graph_stats, log2_histogram
from etl.graph.projection import Edges, project_copurchase, top_k_mask
from etl.parse import jsonl
from slipio import atomic

VERSION = "1"

REVIEW_SCHEMA: dict[str, pl.DataType] = {"user_id": pl.String, "parent_asin": pl.String,
                                         "verified_purchase": pl.Boolean}
KINDS = ("copurchase", "also_buy", "also_view")
HASH_SEED = 0x5EED
MAX_EXAMPLES = 20
# Reviews are read in smaller batches than the reader's default: only three fields are parsed, so the batch text
# dominates this stage's transient memory, and nothing it writes depends on where batches are cut.
READ_BATCH_BYTES = 16 << 20


class AsinIndex:
    """Exact ASIN -> node id lookup for millions of strings per second without a per-batch hash table: node
    ASINs' 64-bit hashes are sorted and bucketed by their top bits (about one node per bucket, so a lookup is
    two or three cache misses instead of a binary search's twenty), then candidates are confirmed by comparing
    the strings."""

    def __init__(self, asins: pl.Series, node_ids: np.ndarray):
        hashes = asins.hash(HASH_SEED).to_numpy()
        self._order = np.argsort(hashes)
        self._hashes = hashes[self._order]
        if len(self._hashes) > 1 and bool((self._hashes[1:] == self._hashes[:-1]).any()):
            raise StageError("edges: two node ASINs share a 64-bit hash (or an ASIN repeats in nodes.parquet); "
                             "re-run `--force nodes` and report this")
        bits = max(1, int(len(hashes)).bit_length())
        self._shift = np.uint64(64 - bits)
        self._bucket_start = np.zeros(2**bits + 1, np.int64)
        np.cumsum(np.bincount((self._hashes >> self._shift).astype(np.int64), minlength=2**bits),
                  out=self._bucket_start[1:])
        self._asins = asins
        self._node_ids = np.asarray(node_ids, dtype=np.int64)

    def lookup(self, asins: pl.Series) -> np.ndarray:
        """Node id per ASIN, -1 where the ASIN is not in the node table (or null)."""
        out = np.full(len(asins), -1, np.int64)
        if len(self._hashes) == 0 or len(asins) == 0:
            return out
        hashes = asins.hash(HASH_SEED).to_numpy()
        bucket = (hashes >> self._shift).astype(np.int64)
        lo, hi = self._bucket_start[bucket], self._bucket_start[bucket + 1]
        pos = np.full(len(asins), -1, np.int64)
        todo = np.flatnonzero((hi > lo) & asins.is_not_null().to_numpy())
        step = 0
        while len(todo):
            candidate = lo[todo] + step
            hit = self._hashes[candidate] == hashes[todo]
            pos[todo[hit]] = candidate[hit]
            step += 1
            todo = todo[~hit & (lo[todo] + step < hi[todo])]
        found = np.flatnonzero(pos >= 0)
        rows = self._order[pos[found]]
        queried = asins if len(found) == len(asins) else asins.gather(found)
        same = (self._asins.gather(rows) == queried).fill_null(False).to_numpy()
        out[found[same]] = self._node_ids[rows[same]]
        return out


@dataclass
class PurchaseScan:
    """What streaming the reviews found; every non-blank line has exactly one fate, in this order:
    bad_lines (`jsonl.decode_line`: not JSON, not an object, a lone surrogate escape, or over-long; the lines
    the `reviews` stage quarantines as bad_json / not_an_object / bad_text), missing_fields (no user_id or
    parent_asin), unknown_product (parent_asin not in the node table), unverified (only with verified_only),
    purchases."""

    lines: int = 0
    bad_lines: int = 0
    missing_fields: int = 0
    unknown_product: int = 0
    unverified: int = 0
    purchases: int = 0
    bad_line_examples: list[dict[str, Any]] = field(default_factory=list)

    def as_stats(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_purchases(path: Path, index: AsinIndex, verified_only: bool, progress: Any = None,
                   ) -> tuple[np.ndarray, np.ndarray, PurchaseScan]:
    """Stream a reviews .jsonl(.gz) into purchases: (uint64 user keys, int32 node ids) in file order."""
    scan = PurchaseScan()
    users: list[np.ndarray] = []
    nodes: list[np.ndarray] = []
    for batch in jsonl.read_line_batches(path, READ_BATCH_BYTES):
        df, failures = jsonl.parse_json_lines(batch, REVIEW_SCHEMA)
        bad = jsonl.bad_lines(batch, failures)
        scan.lines += batch.records
        scan.bad_lines += len(bad)
        for line in sorted(bad)[:MAX_EXAMPLES - len(scan.bad_line_examples)]:
            scan.bad_line_examples.append({"line": line.line_no, "text": line.raw[:200].decode("utf-8", "replace")})
        block_users, block_nodes = _purchases(df, index, verified_only, scan)
        users.append(block_users)
        nodes.append(block_nodes)
        if progress is not None:
            progress.update(batch.records)
    if not users:
        return np.zeros(0, np.uint64), np.zeros(0, np.int32), scan
    return np.concatenate(users), np.concatenate(nodes), scan


def _purchases(df: pl.DataFrame, index: AsinIndex, verified_only: bool,
               scan: PurchaseScan) -> tuple[np.ndarray, np.ndarray]:
    present = df.select((pl.col("user_id").fill_null("") != "") & (pl.col("parent_asin").fill_null("") != "")
                        ).to_series()
    scan.missing_fields += int(df.height - present.sum())
    df = df.filter(present)
    node = index.lookup(df["parent_asin"])
    known = node >= 0
    scan.unknown_product += int(len(node) - known.sum())
    keep = known
    if verified_only:
        verified = df["verified_purchase"].fill_null(False).to_numpy()
        scan.unverified += int((known & ~verified).sum())
        keep = known & verified
    scan.purchases += int(keep.sum())
    users = df["user_id"].filter(pl.Series(keep)).hash(HASH_SEED).to_numpy()
    return users, node[keep].astype(np.int32)


def list_edges(node_ids: np.ndarray, lists: pl.Series, index: AsinIndex) -> tuple[Edges, dict[str, int]]:
    """Undirected edges from per-node ASIN lists (2018 also_buy / also_view), weight 1."""
    lists = lists.list.drop_nulls()
    lengths = lists.list.len().fill_null(0).to_numpy()
    targets = index.lookup(lists.explode().drop_nulls())
    sources = np.repeat(np.asarray(node_ids, np.int64), lengths)
    known = targets >= 0
    loops = known & (targets == sources)
    keep = known & ~loops
    a, b = sources[keep], targets[keep]
    size = int(max(node_ids.max(initial=0), 0)) + 1
    keys = np.minimum(a, b) * size + np.maximum(a, b)
    unique_keys = np.unique(keys)
    stats = {"references": int(lengths.sum()), "absent": int((~known).sum()), "self_loops": int(loops.sum()),
             "duplicates": int(len(keys) - len(unique_keys)), "edges": int(len(unique_keys))}
    return Edges(unique_keys // size, unique_keys % size, np.ones(len(unique_keys), np.float32)), stats


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg.edges
    fmt = ctx.cfg.source(ctx.opts.source).format
    columns = ["node_id", "asin"] + (["also_buy", "also_view"] if fmt == "amazon-2018" else [])
    nodes = pl.read_parquet(ctx.input("nodes", "nodes"), columns=columns)
    node_ids = nodes["node_id"].to_numpy().astype(np.int64)
    if len(node_ids) and (node_ids.min() < 0 or node_ids.max() >= 2**31 or nodes["node_id"].n_unique() != len(nodes)):
        raise StageError("edges: nodes.parquet has negative, too large or repeated node_id values; "
                         "re-run `--force nodes`")
    index = AsinIndex(nodes["asin"], node_ids)
    size = int(node_ids.max()) + 1 if len(node_ids) else 0
    if fmt == "amazon-2023":
        parts, stats = _copurchase_edges(ctx, index, size)
    else:
        parts, stats = _list_edges(ctx, nodes, node_ids, index)
    src, dst, weight, kind = _concat(parts)

    alive = np.zeros(size, bool)
    alive[node_ids] = True
    reason = np.full(size, None, dtype=object)
    steps = [{"step": "built", "nodes": int(alive.sum()), "edges": _per_kind(kind, np.ones(len(src), bool))}]
    filtered: dict[str, int] = {}
    for name, after in filter_steps(node_ids, src, dst, drop_isolated=cfg.drop_isolated, k_core=cfg.k_core,
                                    largest_component=cfg.largest_component):
        removed = alive & ~after
        reason[removed] = name
        filtered[name] = int(removed.sum())
        alive = after
        steps.append({"step": name, "nodes": int(alive.sum()), "nodes_removed": filtered[name],
                      "edges": _per_kind(kind, alive[src] & alive[dst])})
    live = alive[src] & alive[dst]
    stats.update(steps=steps, graph=graph_stats(alive, src[live], dst[live]), edges_by_kind=_per_kind(kind, live))

    edges_path, filter_path = ctx.out_dir / "edges.parquet", ctx.out_dir / "node_filter.parquet"
    table = pl.DataFrame({"src": src[live], "dst": dst[live], "weight": weight[live],
                          "kind": pl.Series(kind[live]).cast(pl.UInt32).replace_strict(
                              list(range(len(KINDS))), list(KINDS), return_dtype=pl.String)}
                         ).sort(["src", "dst", "kind"])
    atomic.write_parquet(edges_path, schemas.conform(table.to_arrow(), "edges"))
    node_filter = pl.DataFrame({"node_id": node_ids, "kept": alive[node_ids],
                                "reason": pl.Series(reason[node_ids].tolist(), dtype=pl.String)})
    atomic.write_parquet(filter_path, schemas.conform(node_filter.to_arrow(), "node_filter"))
    kept = int(alive[node_ids].sum())
    ctx.log.info("edges: %d edges %s, %d of %d nodes kept", table.height, stats["edges_by_kind"], kept,
                 len(node_ids))
    return StageResult(
        outputs={"edges": edges_path, "node_filter": filter_path},
        counts=Counts(input=len(node_ids), kept=kept, filtered=filtered),
        stats=stats,
        provenance={"format": fmt},
    )


def _copurchase_edges(ctx: StageContext, index: AsinIndex, size: int) -> tuple[list[tuple[str, Edges]], dict]:
    cfg = ctx.cfg.edges
    with ctx.progress(desc="edges: reviews", unit="line", unit_scale=True) as bar:
        users, purchase_nodes, scan = read_purchases(ctx.input("fetch", "reviews"), index, cfg.verified_only, bar)
    edges, projection = project_copurchase(
        users, purchase_nodes, size, min_user_products=cfg.min_user_products,
        max_user_products=cfg.max_user_products, min_weight=cfg.min_weight, seed=cfg.seed)
    del users, purchase_nodes
    projection["edges_min_weight"] = len(edges)
    if cfg.top_k > 0:
        edges = edges.take(top_k_mask(edges, cfg.top_k))
    projection["edges_top_k"] = len(edges)
    projection["edge_weight_histogram"] = log2_histogram(np.bincount(edges.weight.astype(np.int64)))
    return [("copurchase", edges)], {"format": "amazon-2023", "reviews": scan.as_stats(), "projection": projection}


def _list_edges(ctx: StageContext, nodes: pl.DataFrame, node_ids: np.ndarray,
                index: AsinIndex) -> tuple[list[tuple[str, Edges]], dict]:
    parts, lists = [], {}
    for kind in ["also_buy"] + (["also_view"] if ctx.cfg.edges.include_also_view else []):
        edges, lists[kind] = list_edges(node_ids, nodes[kind], index)
        parts.append((kind, edges))
    return parts, {"format": "amazon-2018", "lists": lists}


def _concat(parts: list[tuple[str, Edges]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """src, dst, weight and kind code (index into KINDS) of all parts together."""
    return (np.concatenate([np.zeros(0, np.int64)] + [e.src for _, e in parts]),
            np.concatenate([np.zeros(0, np.int64)] + [e.dst for _, e in parts]),
            np.concatenate([np.zeros(0, np.float32)] + [e.weight for _, e in parts]),
            np.concatenate([np.zeros(0, np.int8)] + [np.full(len(e), KINDS.index(k), np.int8) for k, e in parts]))


def _per_kind(kind: np.ndarray, mask: np.ndarray) -> dict[str, int]:
    counts = np.bincount(kind[mask], minlength=len(KINDS))
    return {k: int(counts[i]) for i, k in enumerate(KINDS) if counts[i]}
