"""slip-eval's category- and neighbourhood-level retrieval: which products count as neighbours, and the keys
`score` adds beside exact-pair retrieval (values are hand-checked in tests/test_metrics.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from trainer import evaluate
from trainer.batch_graph import CSRGraph


def test_eval_neighbours_are_positions_of_evaluated_neighbours() -> None:
    # edges 10-11, 11-12, 12-40 (40 is not evaluated); 99 is beyond the graph
    graph = CSRGraph.from_edges(np.array([10, 11, 12]), np.array([11, 12, 40]), np.ones(3), num_nodes=41)
    eval_ids = np.array([12, 10, 11, 99])
    assert [sorted(n) for n in evaluate.eval_neighbours(graph, eval_ids)] == [[2], [2], [0, 1], []]


def test_score_reports_category_and_neighbourhood_levels() -> None:
    image = text = torch.eye(4)[[0, 1, 1, 2]]  # products 1 and 2 look and read alike: a coin flip at exact level
    labels = np.array([0, 1, 1, -1])
    sets = evaluate.EvalSets(eval_rows=np.arange(4), fewshot_rows=np.zeros(0, np.int64),
                             lp_pool_rows=np.arange(4), lp_held_out=torch.zeros(2, 0, dtype=torch.long),
                             lp_known=torch.zeros(2, 0, dtype=torch.long), eval_neighbours=[[], [2], [1], []])
    cfg = SimpleNamespace(chunk_size=2, seed=0, lp_negatives=1)
    out = evaluate.score(image, text, labels, ["a", "b", "c", "d"], sets, None, 2, cfg)
    # exact level: 1 and 2 tie, and ties go against the query -> rank 2 for both
    assert out["i2t_R@1"] == 0.5 and out["t2i_R@1"] == 0.5
    # same label (1) and graph neighbours (1-2): either is a hit
    assert out["i2t_cat_R@1"] == out["t2i_cat_R@1"] == 1.0 and out["cat_n"] == 3
    assert out["i2t_nbr_R@1"] == out["t2i_nbr_R@1"] == 1.0 and out["nbr_with_neighbour"] == 0.5
    without = evaluate.score(image, text, labels, ["a", "b", "c", "d"],
                             evaluate.EvalSets(**{**sets.__dict__, "eval_neighbours": []}), None, 2, cfg)
    assert not any("_nbr_" in key for key in without)  # no graph, no neighbourhood level
