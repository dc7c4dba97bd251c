"""Evaluation metrics on precomputed embeddings: retrieval, zero-shot, few-shot probe, link prediction.

Pure functions (no model, no I/O) so `slip-eval` and the tests call the same code. Retrieval and
zero-shot follow CLIP_benchmark's definitions exactly (the tests compare against that package); the
differences are deliberate and documented where they occur:

- Similarity matrices are built in chunks of queries, never N x N at once, so 100k products fit in
  bounded memory (about ``chunk_size * n_candidates`` floats at a time).
- Ties are broken *against* the query: a non-positive candidate whose score equals the best
  positive's score ranks above it. On real-valued embeddings ties do not occur and the result equals
  ``torch.topk``'s; on a collapsed model (all embeddings equal) the ranks are the worst, not the best.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

RECALL_KS = (1, 5, 10)
FEWSHOT_KS = (1, 5, 16)
IGNORE_LABEL = -1
"""Label of a product without a class (``label = -1`` in the release); left out of classification."""

DEFAULT_WEIGHT_DECAYS = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
ZEROSHOT_LOGIT_SCALE = 100.0


def _require_finite(**tensors: torch.Tensor) -> None:
    """Refuse NaN/inf embeddings (a diverged run): NaN scores compare false and would rank first."""
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name} contains NaN or inf values")


# ---------------------------------------------------------------------------------------------
# retrieval


def _positive_lists(positives: Mapping[int, Iterable[int]] | Sequence[Iterable[int]] | None,
                    n_queries: int, n_candidates: int) -> list[list[int]]:
    """Normalise the positive relation to one sorted list per query, refusing queries without one."""
    if positives is None:
        if n_queries != n_candidates:
            raise ValueError(
                f"{n_queries} queries vs {n_candidates} candidates: pass `positives` when they are not paired 1:1")
        return [[i] for i in range(n_queries)]
    if isinstance(positives, Mapping):
        lists = [sorted(set(positives.get(q, ()))) for q in range(n_queries)]
        unknown = set(positives) - set(range(n_queries))
        if unknown:
            raise ValueError(f"positives name {len(unknown)} unknown query indices, e.g. {sorted(unknown)[:3]}")
    else:
        if len(positives) != n_queries:
            raise ValueError(f"positives has {len(positives)} entries for {n_queries} queries")
        lists = [sorted(set(p)) for p in positives]
    empty = [q for q, p in enumerate(lists) if not p]
    if empty:
        raise ValueError(f"{len(empty)} queries have no positive (e.g. query {empty[0]}); every query needs one")
    bad = [c for p in lists for c in p if not 0 <= c < n_candidates]
    if bad:
        raise ValueError(f"positive index {bad[0]} out of range for {n_candidates} candidates")
    return lists


def invert_positives(positives: Sequence[Iterable[int]], n_candidates: int) -> list[list[int]]:
    """Turn query->positive-candidates into candidate->positive-queries (i2t positives -> t2i)."""
    inverted: list[list[int]] = [[] for _ in range(n_candidates)]
    for query, candidates in enumerate(positives):
        for candidate in candidates:
            inverted[candidate].append(query)
    return inverted


def retrieval_ranks(queries: torch.Tensor, candidates: torch.Tensor,
                    positives: Mapping[int, Iterable[int]] | Sequence[Iterable[int]] | None = None,
                    chunk_size: int = 512) -> torch.Tensor:
    """1-based rank of each query's best-scoring positive among all candidates (dot-product scores).

    `positives[q]` is the set of candidate indices that are correct for query `q`; by default query
    `i` is paired with candidate `i`. Other positives never push a positive down: the rank counts only
    non-positive candidates scoring at least as high as the best positive.
    """
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"need [Nq, D] and [Nc, D] embeddings, got {tuple(queries.shape)} and {tuple(candidates.shape)}")
    _require_finite(queries=queries, candidates=candidates)
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    n_queries, n_candidates = len(queries), len(candidates)
    lists = _positive_lists(positives, n_queries, n_candidates)
    candidates_t = candidates.float().t()
    ranks = torch.empty(n_queries, dtype=torch.long)
    for start in range(0, n_queries, chunk_size):
        stop = min(start + chunk_size, n_queries)
        chunk_lists = lists[start:stop]
        width = max(len(p) for p in chunk_lists)
        positive_idx = torch.tensor([p + [-1] * (width - len(p)) for p in chunk_lists])
        scores = queries[start:stop].float() @ candidates_t
        positive_scores = scores.gather(1, positive_idx.clamp(min=0)).masked_fill(positive_idx < 0, -math.inf)
        best = positive_scores.max(dim=1, keepdim=True).values
        # non-positives at or above the best positive = everything at or above it minus the positives there
        ranks[start:stop] = 1 + (scores >= best).sum(dim=1) - (positive_scores >= best).sum(dim=1)
    return ranks


def rank_summary(ranks: torch.Tensor, prefix: str, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Recall@k (1 if any positive is in the top k), MRR, mean and median rank from 1-based ranks."""
    if len(ranks) == 0:
        raise ValueError("no ranks to summarise")
    ranks_f = ranks.double()
    out = {f"{prefix}_R@{k}": float((ranks <= k).double().mean()) for k in ks}
    out[f"{prefix}_mrr"] = float((1.0 / ranks_f).mean())
    out[f"{prefix}_mean_rank"] = float(ranks_f.mean())
    out[f"{prefix}_median_rank"] = float(np.median(ranks.numpy()))
    return out


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor,
                      i2t_positives: Mapping[int, Iterable[int]] | Sequence[Iterable[int]] | None = None,
                      chunk_size: int = 512, ks: Sequence[int] = RECALL_KS, level: str = "") -> dict[str, float]:
    """Image->text (`i2t_*`) and text->image (`t2i_*`) retrieval metrics.

    `i2t_positives[i]` lists the texts that describe image `i` (default: text `i`); the text->image
    positives are its inverse. Embeddings are expected L2-normalised (scores are dot products).
    `level` names a looser relation in the keys (`i2t_{level}_R@1`), e.g. ``nbr`` for graph neighbours.
    """
    lists = _positive_lists(i2t_positives, len(image_emb), len(text_emb))
    t2i = invert_positives(lists, len(text_emb))
    tag = f"_{level}" if level else ""
    out = rank_summary(retrieval_ranks(image_emb, text_emb, lists, chunk_size), f"i2t{tag}", ks)
    out.update(rank_summary(retrieval_ranks(text_emb, image_emb, t2i, chunk_size), f"t2i{tag}", ks))
    return out


def label_retrieval_ranks(queries: torch.Tensor, candidates: torch.Tensor, query_labels: torch.Tensor,
                          candidate_labels: torch.Tensor, chunk_size: int = 512) -> torch.Tensor:
    """1-based rank of each query's best-scoring candidate that carries the query's label.

    The same tie rule as `retrieval_ranks` (ties go against the query). Candidates labelled `IGNORE_LABEL` never
    match; every query needs a label and at least one candidate with it.
    """
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"need [Nq, D] and [Nc, D] embeddings, got {tuple(queries.shape)} and {tuple(candidates.shape)}")
    query_labels, candidate_labels = torch.as_tensor(query_labels).long(), torch.as_tensor(candidate_labels).long()
    if len(query_labels) != len(queries) or len(candidate_labels) != len(candidates):
        raise ValueError(f"{len(query_labels)} / {len(candidate_labels)} labels for {len(queries)} queries and "
                         f"{len(candidates)} candidates")
    if (query_labels == IGNORE_LABEL).any():
        raise ValueError("every query needs a label: leave unlabelled queries out")
    _require_finite(queries=queries, candidates=candidates)
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    candidates_t = candidates.float().t()
    ranks = torch.empty(len(queries), dtype=torch.long)
    for start in range(0, len(queries), chunk_size):
        stop = min(start + chunk_size, len(queries))
        positive = candidate_labels[None, :] == query_labels[start:stop, None]  # queries are never unlabelled
        if not positive.any(dim=1).all():
            raise ValueError("a query's label has no candidate: every query needs a positive")
        scores = queries[start:stop].float() @ candidates_t
        best = scores.masked_fill(~positive, -math.inf).max(dim=1, keepdim=True).values
        ranks[start:stop] = 1 + ((scores >= best) & ~positive).sum(dim=1)
    return ranks


def category_retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, labels: torch.Tensor,
                               chunk_size: int = 512, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Category-level retrieval (`i2t_cat_*`, `t2i_cat_*`): a hit is any retrieved item with the query's label.

    Rows are paired products (image `i` with text `i`) labelled `labels[i]`; unlabelled products are neither
    queries nor hits. Separates "finds the right kind of product" from exact-pair recall. Empty without labels.
    """
    labels = torch.as_tensor(labels).long()
    keep = labels != IGNORE_LABEL
    if not keep.any():
        return {}
    out = rank_summary(label_retrieval_ranks(image_emb[keep], text_emb, labels[keep], labels, chunk_size),
                       "i2t_cat", ks)
    out.update(rank_summary(label_retrieval_ranks(text_emb[keep], image_emb, labels[keep], labels, chunk_size),
                            "t2i_cat", ks))
    out["cat_n"] = int(keep.sum())
    return out


def neighbour_retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor,
                                neighbours: Sequence[Iterable[int]],
                                same: Sequence[Iterable[int]] | None = None, chunk_size: int = 512,
                                ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Neighbourhood-level retrieval (`i2t_nbr_*`, `t2i_nbr_*`): a hit is the product itself or a graph neighbour.

    `neighbours[i]` lists the rows adjacent to row `i` (a symmetric relation); `same[i]` the rows that count as
    the product itself (default: `i`; e.g. products with an identical caption). Separates "finds a product bought
    with it" from exact-pair recall; `nbr_with_neighbour` is the share of rows with any neighbour among the rows
    (without one, the score equals exact-pair recall for that query).
    """
    if len(neighbours) != len(image_emb):
        raise ValueError(f"neighbours has {len(neighbours)} entries for {len(image_emb)} products")
    selves = [[i] for i in range(len(image_emb))] if same is None else same
    positives = [sorted({*self_rows, *near}) for self_rows, near in zip(selves, neighbours)]
    out = retrieval_metrics(image_emb, text_emb, positives, chunk_size, ks, level="nbr")
    out["nbr_with_neighbour"] = sum(1 for i, near in enumerate(neighbours) if set(near) - {i}) / len(neighbours)
    return out


# ---------------------------------------------------------------------------------------------
# zero-shot classification


def zeroshot_class_weights(template_emb: torch.Tensor) -> torch.Tensor:
    """[C, T, D] text embeddings of T prompts per class -> [D, C] classifier (CLIP_benchmark's recipe).

    Each prompt embedding is L2-normalised, averaged per class, and the mean renormalised.
    """
    if template_emb.ndim != 3:
        raise ValueError(f"need [classes, templates, dim] embeddings, got {tuple(template_emb.shape)}")
    class_emb = F.normalize(template_emb.float(), dim=-1).mean(dim=1)
    return (class_emb / class_emb.norm(dim=-1, keepdim=True)).t().contiguous()


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, k: int) -> float:
    """Fraction of rows whose target is among the k largest logits (CLIP_benchmark's `accuracy`)."""
    top = logits.topk(k, dim=1).indices
    return float((top == target[:, None]).any(dim=1).double().mean())


def mean_per_class_recall(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Balanced accuracy: the mean over classes present in `target` of that class's recall.

    Equals sklearn's `balanced_accuracy_score`, which CLIP_benchmark reports as `mean_per_class_recall`.
    """
    classes = target.unique()
    recalls = [(pred[target == c] == c).double().mean() for c in classes]
    return float(torch.stack(recalls).mean())


def macro_f1(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Unweighted mean over classes of F1 = 2TP / (2TP + FP + FN), over every class in `target` or `pred`.

    sklearn's `f1_score(average="macro")` with its default labels (a class never predicted, or predicted but
    absent, scores 0). Beside accuracy because product categories are imbalanced: a classifier that always says
    the biggest category keeps a fair accuracy and a low macro-F1.
    """
    pred, target = torch.as_tensor(pred).long(), torch.as_tensor(target).long()
    if len(pred) != len(target) or len(target) == 0:
        raise ValueError(f"need as many predictions as targets (> 0), got {len(pred)} and {len(target)}")
    scores = []
    for c in torch.cat([target, pred]).unique():
        tp = int(((pred == c) & (target == c)).sum())
        wrong = int((pred == c).sum()) + int((target == c).sum()) - 2 * tp  # FP + FN
        scores.append(2 * tp / (2 * tp + wrong))
    return float(np.mean(scores))


def classification_summary(logits: torch.Tensor, target: torch.Tensor, prefix: str) -> dict[str, float]:
    """acc1, acc5 (NaN below 5 classes, as in CLIP_benchmark), mean per-class recall and macro-F1."""
    n_classes = logits.shape[1]
    pred = logits.argmax(dim=1)
    return {
        f"{prefix}_acc1": topk_accuracy(logits, target, 1),
        f"{prefix}_acc5": topk_accuracy(logits, target, 5) if n_classes >= 5 else math.nan,
        f"{prefix}_mean_per_class_recall": mean_per_class_recall(pred, target),
        f"{prefix}_macro_f1": macro_f1(pred, target),
    }


def _labelled(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mask of rows with a class; refuses labels that are neither a class id nor IGNORE_LABEL."""
    labels = torch.as_tensor(labels)
    bad = (labels != IGNORE_LABEL) & ((labels < 0) | (labels >= n_classes))
    if bad.any():
        raise ValueError(f"label {int(labels[bad][0])} is neither {IGNORE_LABEL} nor in [0, {n_classes})")
    return labels != IGNORE_LABEL


def zeroshot_metrics(image_emb: torch.Tensor, class_weights: torch.Tensor, labels: torch.Tensor,
                     prefix: str = "zeroshot") -> dict[str, float]:
    """Zero-shot classification with logits = 100 * normalise(image) @ W; rows labelled -1 are skipped."""
    _require_finite(image_emb=image_emb, class_weights=class_weights)
    labels = torch.as_tensor(labels, dtype=torch.long)
    keep = _labelled(labels, class_weights.shape[1])
    if not keep.any():
        raise ValueError("no labelled samples for zero-shot classification")
    logits = ZEROSHOT_LOGIT_SCALE * F.normalize(image_emb[keep].float(), dim=-1) @ class_weights.float()
    out = classification_summary(logits, labels[keep], prefix)
    out[f"{prefix}_n"] = int(keep.sum())
    return out


# ---------------------------------------------------------------------------------------------
# few-shot linear probe


@contextmanager
def _single_threaded() -> Iterator[None]:
    """Run tiny full-batch fits on one intra-op thread, restoring the setting after.

    Each L-BFGS evaluation is a few microseconds of math; extra OpenMP threads only add barriers, which
    cost 10-20x on a loaded machine (measured on a 2-core host).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float,
                             seed: int, max_iter: int = 100) -> torch.nn.Linear:
    """Full-batch L-BFGS on cross-entropy + weight_decay/2 * ||W||^2: deterministic, no lr to tune.

    `max_iter` bounds the cost where the loss has no minimum (separable shots with a tiny decay).
    """
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], n_classes)
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    x, y = x.float(), y.long()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(x), y) + 0.5 * weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


def _split_validation(labels: torch.Tensor, val_fraction: float,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified shuffle: per class, floor(val_fraction * n) rows (kept >= 1 train row) go to validation."""
    pool, val = [], []
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        n_val = min(int(val_fraction * len(rows)), len(rows) - 1)
        val.append(rows[:n_val])
        pool.append(rows[n_val:])
    return torch.cat(pool), torch.cat(val)


def _take_k_per_class(pool: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """First k rows of each class in the (already shuffled) pool, and how many classes had fewer."""
    chosen, short = [], 0
    for c in labels[pool].unique().tolist():
        rows = pool[labels[pool] == c]
        short += len(rows) < k
        chosen.append(rows[:k])
    return torch.cat(chosen), short


def fewshot_metrics(train_emb: torch.Tensor, train_labels: torch.Tensor, test_emb: torch.Tensor,
                    test_labels: torch.Tensor, n_classes: int, ks: Sequence[int] = FEWSHOT_KS, seed: int = 0,
                    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS, val_fraction: float = 0.2,
                    prefix: str = "fewshot") -> dict[str, float]:
    """k-shot linear-probe accuracy on frozen embeddings, for each k.

    A stratified `val_fraction` of the train embeddings is set aside once (seeded) to pick the weight
    decay (best validation acc1; ties go to the stronger decay); the k shots per class are drawn from
    the rest (nested: the 1-shot set is inside the 5-shot set) and the probe is fit on them alone.
    Classes with fewer than k remaining examples use all they have, never duplicates, and are counted in
    `{prefix}_{k}_short_classes`; a class with no train example still has an output, so its test rows
    count as errors rather than vanishing. Rows labelled -1 are skipped on both sides. With an empty
    validation split the middle weight decay is used. Also reports the chosen `{prefix}_{k}_weight_decay` and the
    probe's `{prefix}_{k}_macro_f1` on the test rows.
    """
    _require_finite(train_emb=train_emb, test_emb=test_emb)
    train_labels = torch.as_tensor(train_labels, dtype=torch.long)
    test_labels = torch.as_tensor(test_labels, dtype=torch.long)
    train_keep, test_keep = _labelled(train_labels, n_classes), _labelled(test_labels, n_classes)
    if not train_keep.any() or not test_keep.any():
        raise ValueError("few-shot needs labelled train and test embeddings")
    x_train, y_train = train_emb[train_keep].float(), train_labels[train_keep]
    x_test, y_test = test_emb[test_keep].float(), test_labels[test_keep]
    generator = torch.Generator().manual_seed(seed)
    pool, val = _split_validation(y_train, val_fraction, generator)
    out: dict[str, float] = {}
    for k in ks:
        shots, short = _take_k_per_class(pool, y_train, k)
        with _single_threaded():
            out.update(_probe_accuracy(x_train, y_train, shots, val, x_test, y_test, n_classes, weight_decays,
                                       seed, f"{prefix}_{k}"))
        out[f"{prefix}_{k}_short_classes"] = short
    return out


def _probe_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, shots: torch.Tensor, val: torch.Tensor,
                    x_test: torch.Tensor, y_test: torch.Tensor, n_classes: int, weight_decays: Sequence[float],
                    seed: int, prefix: str) -> dict[str, float]:
    """Sweep the decay on `val`, score the chosen probe on the test rows."""
    sweep = weight_decays if len(val) else [sorted(weight_decays)[len(weight_decays) // 2]]
    best: tuple[float, float, torch.nn.Linear] | None = None
    for wd in sweep:
        probe = _fit_logistic_regression(x_train[shots], y_train[shots], n_classes, wd, seed)
        with torch.no_grad():
            val_acc = topk_accuracy(probe(x_train[val]), y_train[val], 1) if len(val) else 0.0
        if best is None or (val_acc, wd) > best[:2]:
            best = (val_acc, wd, probe)
    _, best_wd, probe = best
    with torch.no_grad():
        logits = probe(x_test)
    return {f"{prefix}_acc1": topk_accuracy(logits, y_test, 1),
            f"{prefix}_macro_f1": macro_f1(logits.argmax(dim=1), y_test), f"{prefix}_weight_decay": best_wd}


# ---------------------------------------------------------------------------------------------
# link prediction


def _pair_keys(src: torch.Tensor, dst: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """One int64 key per undirected pair, for membership tests with searchsorted."""
    return torch.minimum(src, dst) * n_nodes + torch.maximum(src, dst)


def _is_member(keys: torch.Tensor, sorted_keys: torch.Tensor) -> torch.Tensor:
    if len(sorted_keys) == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, keys).clamp(max=len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def sample_negatives(queries: torch.Tensor, positives: torch.Tensor, candidates: torch.Tensor,
                     known_edges: torch.Tensor, n_nodes: int, n_negatives: int, seed: int,
                     max_rounds: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform negatives from `candidates` for each (query, positive) pair, seeded.

    A negative is never the query, the positive, or any node the query is linked to in `known_edges`
    ([2, E] local indices; pass all edges so that a real neighbour is never scored as a negative).
    Rejected draws are redrawn up to `max_rounds` times; slots still invalid after that (a query
    linked to nearly every candidate) are masked out in the returned validity mask.
    """
    generator = torch.Generator().manual_seed(seed)
    known = torch.unique(_pair_keys(known_edges[0], known_edges[1], n_nodes))
    shape = (len(queries), n_negatives)
    negatives = torch.zeros(shape, dtype=torch.long)
    valid = torch.zeros(shape, dtype=torch.bool)
    for _ in range(max_rounds):
        todo = ~valid
        if not todo.any():
            break
        draws = candidates[torch.randint(len(candidates), (int(todo.sum()),), generator=generator)]
        q = queries[:, None].expand(shape)[todo]
        p = positives[:, None].expand(shape)[todo]
        ok = (draws != q) & (draws != p) & ~_is_member(_pair_keys(q, draws, n_nodes), known)
        negatives[todo] = torch.where(ok, draws, negatives[todo])
        valid[todo] = ok
    return negatives, valid


def link_prediction_metrics(emb: torch.Tensor, held_out: torch.Tensor, known_edges: torch.Tensor,
                            candidates: torch.Tensor | None = None, n_negatives: int = 100, seed: int = 0,
                            both_directions: bool = True, chunk_size: int = 4096,
                            prefix: str = "lp") -> dict[str, float]:
    """Rank each held-out neighbour against sampled non-neighbours by embedding dot product.

    `held_out` is [2, E] node indices into `emb`; with `both_directions` each undirected edge is a
    query from either end. Rank = 1 + number of valid negatives scoring >= the positive (ties count
    against the model). Reports MRR, hits@1, hits@3, hits@10, the number of queries and how many queries got
    fewer than `n_negatives` valid negatives.
    """
    if held_out.ndim != 2 or held_out.shape[0] != 2 or held_out.shape[1] == 0:
        raise ValueError(f"held_out must be a non-empty [2, E] tensor, got {tuple(held_out.shape)}")
    _require_finite(emb=emb)
    n_nodes = len(emb)
    candidates = torch.arange(n_nodes) if candidates is None else torch.as_tensor(candidates, dtype=torch.long)
    queries, positives = held_out[0].long(), held_out[1].long()
    if both_directions:
        queries, positives = torch.cat([queries, positives]), torch.cat([positives, queries])
    negatives, valid = sample_negatives(queries, positives, candidates, known_edges.long(), n_nodes,
                                        n_negatives, seed)
    emb = emb.float()
    ranks = torch.empty(len(queries), dtype=torch.long)
    for start in range(0, len(queries), chunk_size):
        stop = min(start + chunk_size, len(queries))
        q = emb[queries[start:stop]]
        positive_score = (q * emb[positives[start:stop]]).sum(-1)
        negative_score = torch.einsum("bd,bnd->bn", q, emb[negatives[start:stop]])
        outranking = (negative_score >= positive_score[:, None]) & valid[start:stop]
        ranks[start:stop] = 1 + outranking.sum(dim=1)
    ranks_f = ranks.double()
    return {
        f"{prefix}_mrr": float((1.0 / ranks_f).mean()),
        f"{prefix}_hits@1": float((ranks <= 1).double().mean()),
        f"{prefix}_hits@3": float((ranks <= 3).double().mean()),
        f"{prefix}_hits@10": float((ranks <= 10).double().mean()),
        f"{prefix}_n_queries": len(queries),
        f"{prefix}_short_negatives": int((valid.sum(dim=1) < n_negatives).sum()),
    }
