"""`slip-eval`: score a run on one split of a release, encoder-only and (SLIP runs) graph-aware.

What the numbers mean:
- Evaluated set: every valid sample of `REL/shards/{split}-*.tar` in shard order (the first --max-samples);
  bad samples are skipped and counted by reason with trainer.data's own reader stages.
- Retrieval pairs each product's image with its caption. Products with the very same caption string are
  interchangeable (identical text embeddings would otherwise tie and rank by chance), so any of them is a hit.
- Looser retrieval levels, to see what structure changed: `*_cat_*` (category level: a hit is any evaluated
  product with the query's label; unlabelled products are neither queries nor hits) and `*_nbr_*` (neighbourhood
  level: a hit is the product itself or an evaluated product adjacent to it in the release graph, held-out
  link-prediction edges included; `nbr_with_neighbour` = share of queries with such a neighbour).
- Retrieval cut-offs: R@k for every k of --recall-k (default 1 5 10) at every level.
- Zero-shot: class names from `REL/labels.json`, prompts from trainer.prompts (or --templates FILE: its templates
  and class-name overrides; `zeroshot_templates` counts the templates); label -1 is left out. Accuracy, mean
  per-class recall and macro-F1.
- Few-shot: the probe is trained on a seeded subsample (--fewshot-pool) of the train split's labelled products,
  with k shots per class for each k of --fewshot-k (default 1 5 16); acc1 and macro-F1 per k.
- Link prediction (`lp_protocol` in the result): `release` when the release has a fixed split (lp_split.parquet,
  rule in etl/graph/lpsplit.py): each row of the split whose query is an evaluated product ranks its held-out
  partner against the row's fixed negatives (trainer/lp_eval.py; MRR, Hits@1/3/10). Otherwise (older releases, or
  --split train) `sampled`: every evaluated product with >= 2 linkable neighbours (neighbours with an image) gets one
  incident edge held out (seeded, at most once per edge); each end of a held-out edge is a query ranking the
  other end against --lp-negatives sampled non-neighbours from the same pool (evaluated products + held-out
  partners). Encoder-only and graph-aware scores use the same edges and the same negatives.
- Graph-aware (keys `graph_*`, SLIP runs only): the run's GATs refine each product's image and caption
  embeddings over the product graph as in training: each product picks its top --max-neighbors neighbours
  (weight desc, id asc; default: the run's max_neighbors) among the encoded products, the picks are
  symmetrised. The encoded products are the evaluated, few-shot and link-prediction products plus their
  picked neighbours, read from every split's shards; deeper hops of a multi-layer GAT see what of their
  neighbourhood happens to be encoded. Encoder-only text embeddings of the prompts classify refined images.
- No leakage: held-out edges (and every pair of the release's lp_split, which training never saw either) are
  deleted from the graph before anything is refined or any neighbour is
  picked, so no refinement (of the endpoints or of any other product) sees them; negatives are drawn
  excluding every real edge, held-out ones included.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor
from torch_geometric.utils import k_hop_subgraph

from trainer import metrics
from trainer.bank_eval import bank_nodes, bank_zeroshot_weights
from trainer.batch_graph import CSRGraph
from trainer.compare import GRAPH_PREFIX, format_value
from trainer.data import decode_samples, tar_samples
from trainer.eval_config import EvalConfig
from trainer.lp_eval import FixedLinkRows, fixed_link_prediction_metrics, fixed_split
from trainer.prompts import PromptSet, load_prompt_file
from trainer.release import Release
from trainer.run_io import LoadedRun, atomic_write_json, load_run

# ---------------------------------------------------------------------------------------------
# reading and encoding


@dataclass
class EncodedNodes:
    """Embeddings of products read from shards, row-aligned."""

    node_ids: np.ndarray  # int64 [N]
    labels: np.ndarray  # int64 [N], -1 = no class
    captions: list[str]
    image_emb: Tensor  # [N, D], L2-normalised
    text_emb: Tensor  # [N, D], L2-normalised

    def __len__(self) -> int:
        return len(self.node_ids)

    def concat(self, other: "EncodedNodes") -> "EncodedNodes":
        return EncodedNodes(np.concatenate([self.node_ids, other.node_ids]),
                            np.concatenate([self.labels, other.labels]), self.captions + other.captions,
                            torch.cat([self.image_emb, other.image_emb]), torch.cat([self.text_emb, other.text_emb]))


def _key_node_id(key: str) -> Optional[int]:
    """node_id from a `{node_id:010d}` sample key, or None when the key is not of that form."""
    name = key.rsplit("/", 1)[-1]
    return int(name) if name.isdigit() else None


def _is_selected(node_id: int, wanted: Optional[set[int]], skip_ids: frozenset[int]) -> bool:
    """The one node filter of encode_shards: in `wanted` (when given) and not in `skip_ids`."""
    return node_id not in skip_ids and (wanted is None or node_id in wanted)


def _select(raw: Iterable[dict], wanted: Optional[set[int]], skip_ids: frozenset[int]) -> Iterator[dict]:
    """Drop unwanted samples before their JPEG is decoded (the key names the product)."""
    for sample in raw:
        node_id = _key_node_id(sample["__key__"])
        if node_id is None or _is_selected(node_id, wanted, skip_ids):
            yield sample


def _valid_label(value: Any, n_classes: int) -> Optional[int]:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if value == metrics.IGNORE_LABEL or 0 <= value < n_classes else None


@torch.inference_mode()
def encode_shards(run: LoadedRun, shards: list[str], n_classes: int, batch_size: int, device: str,
                  skipped: Counter, wanted: Optional[set[int]] = None, skip_ids: frozenset[int] = frozenset(),
                  limit: Optional[int] = None) -> EncodedNodes:
    """Read, validate and encode samples: all of them, or only node ids in `wanted`, at most `limit`.

    Bad samples are counted in `skipped` by reason (trainer.data's reasons, plus `bad_label` and
    `duplicate_node` for a product met a second time); ids in `skip_ids` are silently passed over.
    """
    raw = _select(tar_samples(shards, skipped), wanted, skip_ids)
    node_ids: list[int] = []
    labels: list[int] = []
    captions: list[str] = []
    image_chunks: list[Tensor] = []
    text_chunks: list[Tensor] = []
    pending: list[dict] = []
    seen: set[int] = set()

    def flush() -> None:
        images = torch.stack([run.preprocess(s["image"]) for s in pending]).to(device)
        tokens = run.tokenizer([s["caption"] for s in pending]).to(device)
        image_chunks.append(run.model.encode_image(images).float().cpu())
        text_chunks.append(run.model.encode_text(tokens).float().cpu())
        pending.clear()

    for sample in decode_samples(raw, skipped):
        node_id = sample["node_id"]
        if not _is_selected(node_id, wanted, skip_ids):  # a key that does not name its product passed _select
            continue
        if node_id in seen:
            skipped["duplicate_node"] += 1
            continue
        label = _valid_label(sample["meta"].get("label"), n_classes)
        if label is None:
            skipped["bad_label"] += 1
            continue
        seen.add(node_id)
        node_ids.append(node_id)
        labels.append(label)
        captions.append(sample["caption"])
        pending.append(sample)
        if len(pending) == batch_size:
            flush()
        if limit is not None and len(node_ids) >= limit:
            break
    if pending:
        flush()
    dim = run.model.embed_dim
    return EncodedNodes(np.asarray(node_ids, np.int64), np.asarray(labels, np.int64), captions,
                        torch.cat(image_chunks) if image_chunks else torch.empty(0, dim),
                        torch.cat(text_chunks) if text_chunks else torch.empty(0, dim))


@torch.inference_mode()
def zeroshot_weights(run: LoadedRun, classnames: list[str], device: str,
                     prompt_set: PromptSet = PromptSet()) -> Tensor:
    """[D, C] zero-shot classifier from the prompts of `prompt_set` (CLIP_benchmark's template averaging)."""
    prompts = prompt_set.prompts(classnames)
    tokens = run.tokenizer([p for per_class in prompts for p in per_class]).to(device)
    emb = run.model.encode_text(tokens).float().cpu()
    return metrics.zeroshot_class_weights(emb.view(len(classnames), len(prompts[0]), -1))


# ---------------------------------------------------------------------------------------------
# release metadata


def sample_fewshot_pool(nodes: dict[str, np.ndarray], exclude: np.ndarray, size: int, seed: int) -> set[int]:
    """Seeded subsample of labelled train-split products with an image, never an evaluated one."""
    ok = (nodes["split"] == "train") & (nodes["label"] >= 0) & nodes["has_image"]
    candidates = np.setdiff1d(nodes["node_id"][ok], exclude)
    rng = np.random.default_rng(seed)
    return set(rng.permutation(candidates)[:size].tolist())


# ---------------------------------------------------------------------------------------------
# graph: held-out edges, refinement graph, neighbour picks


def undirected_edges(graph: CSRGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src, dst, weight) with src < dst, one row per (merged) edge."""
    rows = np.repeat(np.arange(graph.num_nodes), np.diff(graph.indptr))
    once = rows < graph.indices
    return rows[once], graph.indices[once], graph.weights[once]


def choose_held_out_edges(graph: CSRGraph, eval_ids: np.ndarray, linkable: np.ndarray, seed: int) -> np.ndarray:
    """[H, 2] (lo, hi) pairs: one seeded incident edge per evaluated product with >= 2 linkable neighbours.

    Requiring two keeps every such product at least one neighbour for graph-aware refinement.
    """
    rng = np.random.default_rng(seed)
    chosen: dict[tuple[int, int], None] = {}
    for node in np.sort(eval_ids):
        if node >= graph.num_nodes:
            continue
        neighbours = graph.neighbors(int(node))
        neighbours = neighbours[linkable[neighbours]]
        if len(neighbours) < 2:
            continue
        other = int(neighbours[rng.integers(len(neighbours))])
        chosen.setdefault((min(int(node), other), max(int(node), other)))
    return np.asarray(list(chosen), np.int64).reshape(-1, 2)


def without_edges(graph: CSRGraph, pairs: np.ndarray, max_neighbors: Optional[int]) -> CSRGraph:
    """The graph minus the (lo, hi) `pairs`, with the given neighbour cap."""
    src, dst, weight = undirected_edges(graph)
    n = graph.num_nodes
    keep = ~np.isin(src * n + dst, pairs[:, 0] * n + pairs[:, 1])
    return CSRGraph.from_edges(src[keep], dst[keep], weight[keep], num_nodes=n, max_neighbors=max_neighbors)


def picked_neighbours(graph: CSRGraph, centres: Iterable[int], usable: np.ndarray, k: int) -> set[int]:
    """Each centre's top-k usable neighbours (CSR rows are weight desc, id asc, as batch_edge_index picks)."""
    picked: set[int] = set()
    for node in centres:
        if node < graph.num_nodes:
            neighbours = graph.neighbors(int(node))
            picked.update(neighbours[usable[neighbours]][:k].tolist())
    return picked


@torch.inference_mode()
def refine(run: LoadedRun, emb: Tensor, edge_index: Tensor, edge_weight: Tensor, modality: str,
           targets: Tensor, num_hops: int, chunk_size: int, device: str) -> Tensor:
    """Graph-refined embeddings of `targets`, computed on each chunk's `num_hops`-hop subgraph.

    A GAT layer reads only its node's in-neighbours, so an L-layer GAT's output on a target depends only
    on its L-hop in-neighbourhood: chunking bounds memory without changing the result.
    """
    out = torch.empty(len(targets), emb.shape[1])
    for start in range(0, len(targets), chunk_size):
        chunk = targets[start:start + chunk_size]
        subset, sub_edges, mapping, edge_mask = k_hop_subgraph(chunk, num_hops, edge_index, relabel_nodes=True,
                                                               num_nodes=len(emb))
        refined = run.model.graph_refine(emb[subset].to(device), sub_edges.to(device),
                                         edge_weight[edge_mask].to(device), modality=modality)
        out[start:start + len(chunk)] = refined[mapping].float().cpu()
    return out


# ---------------------------------------------------------------------------------------------
# scoring


@dataclass
class EvalSets:
    """Row indices into the encoded table for every metric."""

    eval_rows: np.ndarray
    fewshot_rows: np.ndarray
    lp_pool_rows: np.ndarray
    lp_held_out: Tensor  # [2, H] rows
    lp_known: Tensor  # [2, E] rows: every real edge among the encoded products
    eval_neighbours: list[list[int]] = dataclasses.field(default_factory=list)  # per eval row: adjacent eval rows
    lp_fixed: Optional[FixedLinkRows] = None  # the release's lp_split (then lp_held_out is empty)


def caption_positives(captions: list[str]) -> list[list[int]]:
    """For each product, the products with the identical caption (itself included)."""
    groups: dict[str, list[int]] = {}
    for i, caption in enumerate(captions):
        groups.setdefault(caption, []).append(i)
    return [groups[c] for c in captions]


def score(image: Tensor, text: Tensor, labels: np.ndarray, captions: list[str], sets: EvalSets,
          class_weights: Optional[Tensor], n_classes: int, cfg: EvalConfig) -> dict[str, float]:
    """Every metric on one embedding table (encoder-only or refined); classification and LP when possible."""
    rows = torch.as_tensor(sets.eval_rows)
    eval_labels = torch.as_tensor(labels[sets.eval_rows])
    same = caption_positives([captions[i] for i in sets.eval_rows])
    ks = getattr(cfg, "recall_k", metrics.RECALL_KS)
    out = metrics.retrieval_metrics(image[rows], text[rows], same, chunk_size=cfg.chunk_size, ks=ks)
    out.update(metrics.category_retrieval_metrics(image[rows], text[rows], eval_labels, chunk_size=cfg.chunk_size,
                                                  ks=ks))
    if sets.eval_neighbours:
        out.update(metrics.neighbour_retrieval_metrics(image[rows], text[rows], sets.eval_neighbours, same,
                                                       chunk_size=cfg.chunk_size, ks=ks))
    if class_weights is not None and (eval_labels >= 0).any():
        out.update(metrics.zeroshot_metrics(image[rows], class_weights, eval_labels))
        if len(sets.fewshot_rows):
            few = torch.as_tensor(sets.fewshot_rows)
            out.update(metrics.fewshot_metrics(image[few], torch.as_tensor(labels[sets.fewshot_rows]), image[rows],
                                               eval_labels, n_classes, seed=cfg.seed,
                                               ks=getattr(cfg, "fewshot_k", metrics.FEWSHOT_KS)))
    if sets.lp_fixed is not None and len(sets.lp_fixed):
        out.update(fixed_link_prediction_metrics(image, sets.lp_fixed, chunk_size=cfg.chunk_size))
    elif sets.lp_held_out.shape[1]:
        out.update(metrics.link_prediction_metrics(image, sets.lp_held_out, sets.lp_known,
                                                   candidates=torch.as_tensor(sets.lp_pool_rows),
                                                   n_negatives=cfg.lp_negatives, seed=cfg.seed))
    return out


def eval_neighbours(graph: CSRGraph, eval_ids: np.ndarray) -> list[list[int]]:
    """Per evaluated product (in `eval_ids` order): the positions of its graph neighbours that are evaluated too.

    The full graph (held-out link-prediction edges included): it is the relation scored, never an input.
    """
    position = {int(node): p for p, node in enumerate(eval_ids.tolist())}
    return [[position[n] for n in graph.neighbors(int(node)).tolist() if n in position]
            if node < graph.num_nodes else [] for node in eval_ids]


def _rows_of(table_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of `ids` in the sorted `table_ids` (all must be present)."""
    return np.searchsorted(table_ids, ids)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the whole protocol (see the module docstring) and return the flat result."""
    release = Release(cfg.release)
    run = load_run(Path(cfg.run), checkpoint=cfg.checkpoint, device=cfg.device, release=release)
    classnames = release.class_names()
    n_classes = len(classnames)
    prompt_set = load_prompt_file(cfg.templates) if cfg.templates is not None else PromptSet()
    prompt_set.prompt_names(classnames)  # class-name overrides that do not fit the release fail before encoding
    nodes = release.nodes()
    skipped: Counter = Counter()
    _log(f"encoding {cfg.split} split of {release} with {run.method} run {run.run_dir} (step {run.step})")
    if run.bank is not None:  # a bank-trained run (SAIL): stored embeddings through its layers (trainer/bank_eval.py)
        evaluated = EncodedNodes(*bank_nodes(run, nodes, n_classes, cfg.device, skipped, split=cfg.split,
                                             limit=cfg.max_samples))
    else:
        evaluated = encode_shards(run, release.shards(cfg.split), n_classes, cfg.batch_size,
                                  cfg.device, skipped, limit=cfg.max_samples)
    if len(evaluated) == 0:
        raise ValueError(f"no valid sample in the {cfg.split} split (skipped: {dict(skipped)})")

    train_cfg = run.config
    max_neighbors = cfg.max_neighbors or train_cfg.max_neighbors
    full_graph = CSRGraph.from_table(release.edges(kinds=train_cfg.edge_kinds))
    size = max(full_graph.num_nodes, int(nodes["node_id"].max()) + 1, int(evaluated.node_ids.max()) + 1)
    linkable = np.zeros(size, bool)
    linkable[nodes["node_id"][nodes["has_image"]]] = True
    linkable[evaluated.node_ids] = True
    fixed = fixed_split(release, cfg.split, evaluated.node_ids)  # the release's lp_split; None: sample edges here
    held_out = (choose_held_out_edges(full_graph, evaluated.node_ids, linkable, cfg.seed) if fixed is None
                else np.empty((0, 2), np.int64))
    refine_graph = without_edges(full_graph, np.concatenate([held_out, release.held_out_pairs()]), max_neighbors)

    fewshot_ids = (sample_fewshot_pool(nodes, evaluated.node_ids, cfg.fewshot_pool, cfg.seed)
                   if n_classes else set())
    centres = set(evaluated.node_ids.tolist()) | fewshot_ids | set(held_out.ravel().tolist())
    if fixed is not None:
        centres |= set(fixed.node_ids().tolist())
    wanted = set(centres)
    if run.model.has_graph:
        wanted |= picked_neighbours(refine_graph, centres, linkable, max_neighbors)
    wanted -= set(evaluated.node_ids.tolist())
    _log(f"encoding {len(wanted)} few-shot / link-prediction / neighbour products from all splits")
    if run.bank is not None:
        context = EncodedNodes(*bank_nodes(run, nodes, n_classes, cfg.device, skipped, wanted=wanted,
                                           skip_ids=frozenset(evaluated.node_ids.tolist())))
    else:
        context = encode_shards(run, release.all_shards(), n_classes,
                                cfg.batch_size, cfg.device, skipped, wanted=wanted,
                                skip_ids=frozenset(evaluated.node_ids.tolist()))
    encoded = evaluated.concat(context)
    order = np.argsort(encoded.node_ids)
    ids = encoded.node_ids[order]
    image, text = encoded.image_emb[order], encoded.text_emb[order]
    labels, captions = encoded.labels[order], [encoded.captions[i] for i in order]
    present = set(ids.tolist())

    found_held = np.asarray([p for p in held_out.tolist() if p[0] in present and p[1] in present],
                            np.int64).reshape(-1, 2)
    lp_pool = np.unique(np.concatenate([evaluated.node_ids, found_held.ravel()]))
    known = dataclasses.replace(full_graph, max_neighbors=None).batch_edge_index(torch.as_tensor(ids))[0]
    sets = EvalSets(eval_rows=_rows_of(ids, evaluated.node_ids),
                    fewshot_rows=_rows_of(ids, np.asarray(sorted(fewshot_ids & present), np.int64)),
                    lp_pool_rows=_rows_of(ids, lp_pool),
                    lp_held_out=torch.as_tensor(_rows_of(ids, found_held).T.reshape(2, -1)),
                    lp_known=known,
                    eval_neighbours=eval_neighbours(full_graph, evaluated.node_ids),
                    lp_fixed=fixed.rows(ids) if fixed is not None else None)
    zeroshot_skipped = None
    if run.bank is not None and n_classes:  # prompts need the bank's own text encoder
        class_weights, zeroshot_skipped = bank_zeroshot_weights(run, prompt_set.prompts(classnames), cfg.device)
    else:
        class_weights = zeroshot_weights(run, classnames, cfg.device, prompt_set) if n_classes else None

    result: dict[str, Any] = {"method": run.method, "split": cfg.split, "step": run.step,
                              "n_samples": len(evaluated), "skipped": sum(skipped.values()),
                              **{f"skipped_{reason}": n for reason, n in sorted(skipped.items())},
                              "lp_protocol": "sampled" if fixed is None else "release",
                              "lp_held_out_edges": int(found_held.shape[0]) if fixed is None else len(sets.lp_fixed),
                              "fewshot_pool": len(sets.fewshot_rows),
                              "zeroshot_templates": len(prompt_set.templates)}
    if zeroshot_skipped is not None:
        result["zeroshot_skipped"] = f"zero-shot and few-shot skipped: {zeroshot_skipped}"
    _log("scoring encoder-only embeddings")
    result.update(score(image, text, labels, captions, sets, class_weights, n_classes, cfg))
    if run.model.has_graph:
        edge_index, edge_weight = refine_graph.batch_edge_index(torch.as_tensor(ids))
        targets = torch.as_tensor(_rows_of(ids, np.asarray(sorted(centres & present), np.int64)))
        refined_image, refined_text = image.clone(), text.clone()
        for modality, table in (("image", refined_image), ("text", refined_text)):
            table[targets] = refine(run, table, edge_index, edge_weight, modality, targets, train_cfg.gat_layers,
                                    cfg.graph_chunk, cfg.device)
        _log(f"scoring graph-aware embeddings ({len(ids)} products, {edge_index.shape[1]} directed edges)")
        graph_scores = score(refined_image, refined_text, labels, captions, sets, class_weights, n_classes, cfg)
        result.update({f"{GRAPH_PREFIX}{k}": v for k, v in graph_scores.items()})
        result[f"{GRAPH_PREFIX}context_products"] = len(ids)
        result[f"{GRAPH_PREFIX}max_neighbors"] = max_neighbors
    return result


# ---------------------------------------------------------------------------------------------
# output


def json_safe(result: dict[str, Any]) -> dict[str, Any]:
    """NaN (e.g. acc5 with fewer than 5 classes) becomes null: strict JSON has no NaN."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}


INFO_KEYS = ("method", "split", "step", "n_samples", "skipped", "fewshot_pool", "zeroshot_templates",
             "lp_protocol", "lp_held_out_edges",
             f"{GRAPH_PREFIX}context_products", f"{GRAPH_PREFIX}max_neighbors")


def markdown_report(result: dict[str, Any], run_dir: Path, release: str | Path) -> str:
    """Header facts, then one row per metric: encoder-only beside graph-aware (when the run has a graph)."""
    lines = [f"# slip-eval: {run_dir.name}", "", f"- run: `{run_dir}`", f"- release: `{release}`"]
    lines += [f"- {key}: {format_value(result[key])}" for key in INFO_KEYS if key in result]
    lines += [f"- {key}: {value}" for key, value in result.items() if key.startswith("skipped_")]
    metric_keys = [k for k in result if k not in INFO_KEYS and not k.startswith(("skipped", GRAPH_PREFIX))]
    if any(GRAPH_PREFIX + key in result for key in metric_keys):
        lines += ["", "| metric | encoder-only | graph-aware |", "| --- | ---: | ---: |"]
        lines += [f"| {k} | {format_value(result[k])} | {format_value(result.get(GRAPH_PREFIX + k))} |"
                  for k in metric_keys]
    else:
        lines += ["", "| metric | encoder-only |", "| --- | ---: |"]
        lines += [f"| {k} | {format_value(result[k])} |" for k in metric_keys]
    return "\n".join(lines) + "\n"


def _log(message: str) -> None:
    print(f"slip-eval: {message}", file=sys.stderr, flush=True)


def write_reports(cfg: EvalConfig, result: dict[str, Any]) -> Path:
    """Write the result JSON and its Markdown table where `cfg` says; return the JSON's path."""
    json_path, md_path = cfg.json_path(), cfg.md_path()
    atomic_write_json(json_path, json_safe(result))
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown_report(result, cfg.run, cfg.release))
    _log(f"wrote {md_path}")
    return json_path


def main(argv: Optional[list[str]] = None) -> int:
    """`slip-eval RUN --release REL ...` or `slip-eval compare RUN... [--out DIR]` (the CLI is trainer.cli's)."""
    from trainer.cli import eval_main

    return eval_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
