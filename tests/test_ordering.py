"""Graph-aware ordering: neighbours land in the same batch far more often than in a random order, batches still mix
labels, cluster sizes stay near the target, and the shuffle simulation is the trainer's own sample shuffle."""
from __future__ import annotations

import random

import numpy as np
import pytest

from etl.graph.ordering import (
    TRAINER_SHUFFLE_BUFFER,
    graph_order,
    in_batch_stats,
    random_order,
    reservoir_shuffle_permutation,
)
from trainer.config import TrainConfig
from trainer.data import StreamSpec, shuffle_buffer


def clustered_graph(n: int = 6000, community: int = 24, n_labels: int = 12, degree: int = 4, p_in: float = 0.85,
                    isolated: float = 0.15, seed: int = 0):
    """Communities of one label each; most edges inside a community, the rest anywhere; some nodes isolated."""
    rng = np.random.default_rng(seed)
    comm = rng.permutation(np.arange(n) // community)
    labels = (comm * 7) % n_labels
    members = np.argsort(comm, kind="stable")
    start = np.searchsorted(comm[members], np.arange(comm.max() + 1))
    size = np.bincount(comm)
    src = np.repeat(np.arange(n), degree)
    src = src[rng.random(len(src)) >= isolated * 2]  # fewer edges for some
    inside = rng.random(len(src)) < p_in
    c = comm[src]
    partner = np.where(inside, members[start[c] + (rng.random(len(src)) * size[c]).astype(np.int64)],
                       rng.integers(0, n, len(src)))
    alone = rng.random(n) < isolated
    keep = (src != partner) & ~alone[src] & ~alone[partner]
    a, b = np.minimum(src, partner)[keep], np.maximum(src, partner)[keep]
    key = np.unique(a * n + b)
    return key // n, key % n, labels, alone


@pytest.fixture(scope="module")
def graph():
    return clustered_graph()


def test_graph_order_puts_neighbours_in_batches_and_still_mixes_labels(graph):
    src, dst, labels, _ = graph
    ids = np.arange(len(labels))
    ordered = graph_order(ids, src, dst, labels=labels, cluster_size=32, seed=0)
    baseline = random_order(ids, seed=0)
    for batch, gain in ((64, 10), (256, 4), (1024, 1.5)):  # random gets better as batch/N grows
        g = in_batch_stats(ordered.node_ids, (src, dst), batch, labels=labels[ordered.node_ids])
        r = in_batch_stats(baseline.node_ids, (src, dst), batch, labels=labels[baseline.node_ids])
        assert g["frac_with_neighbor"] > 0.7 and g["frac_with_neighbor"] > gain * r["frac_with_neighbor"], (g, r)
        assert g["edges_per_batch"] > gain * r["edges_per_batch"], (g, r)
        if batch >= 256:
            assert g["labels_per_batch"] >= 0.8 * r["labels_per_batch"], (batch, g, r)
    # the trainer's sample shuffle weakens but does not erase the effect at training batch sizes
    g = in_batch_stats(ordered.node_ids, (src, dst), 256, shuffle_buffer=TRAINER_SHUFFLE_BUFFER,
                       labels=labels[ordered.node_ids])
    r = in_batch_stats(baseline.node_ids, (src, dst), 256, shuffle_buffer=TRAINER_SHUFFLE_BUFFER,
                       labels=labels[baseline.node_ids])
    assert g["frac_with_neighbor"] > 1.5 * r["frac_with_neighbor"]
    assert g["labels_per_batch"] >= 0.9 * r["labels_per_batch"]


def test_clusters_are_a_partition_of_about_the_target_size(graph):
    src, dst, labels, alone = graph
    ids = np.arange(len(labels)) * 3 + 5  # node ids need not be dense
    ordered = graph_order(ids, src * 3 + 5, dst * 3 + 5, labels=labels, cluster_size=32, seed=1)
    assert sorted(ordered.node_ids.tolist()) == ids.tolist()
    cluster = ordered.cluster
    assert (np.diff(cluster) >= 0).all() and cluster[0] == 0, "clusters are contiguous, numbered in write order"
    sizes = np.bincount(cluster)
    assert sizes.max() < 48 and np.median(sizes) >= 24
    isolated_ids = set((np.flatnonzero(alone) * 3 + 5).tolist())
    isolated_clusters = {c for n, c in zip(ordered.node_ids.tolist(), cluster.tolist()) if n in isolated_ids}
    assert len(isolated_clusters) < len(isolated_ids) / 10, "isolated nodes are packed, not left as singletons"


def test_star_respects_the_cap_and_order_is_deterministic():
    hub_leaves = np.arange(1, 301)
    src, dst = np.zeros(300, dtype=np.int64), hub_leaves
    ids = np.arange(301)
    first = graph_order(ids, src, dst, cluster_size=16, seed=3)
    again = graph_order(ids, src, dst, cluster_size=16, seed=3)
    other = graph_order(ids, src, dst, cluster_size=16, seed=4)
    assert np.bincount(first.cluster).max() < 24
    assert np.array_equal(first.node_ids, again.node_ids) and np.array_equal(first.cluster, again.cluster)
    assert not np.array_equal(first.node_ids, other.node_ids)


def test_edges_outside_the_split_are_ignored_and_bad_input_is_refused():
    ordered = graph_order(np.array([10, 11, 12]), np.array([10, 11, 0]), np.array([11, 99, 12]), cluster_size=4)
    assert sorted(ordered.node_ids.tolist()) == [10, 11, 12]
    empty = graph_order(np.array([], dtype=np.int64), np.array([1]), np.array([2]))
    assert len(empty.node_ids) == 0
    with pytest.raises(ValueError, match="duplicates"):
        graph_order(np.array([1, 1]), np.array([1]), np.array([2]))
    with pytest.raises(ValueError, match="cluster_size"):
        graph_order(np.array([1, 2]), np.array([1]), np.array([2]), cluster_size=1)
    with pytest.raises(ValueError, match=">= 0"):
        graph_order(np.array([-1, 2]), np.array([1]), np.array([2]))


def test_in_batch_stats_by_hand():
    order = np.array([0, 1, 2, 3, 4])
    edges = (np.array([0, 2, 1, 3]), np.array([1, 3, 2, 4]))
    stats = in_batch_stats(order, edges, 2, labels=np.array([0, 0, 1, 2, -1]))
    # batches {0,1} {2,3} {4}: in-batch edges (0,1) and (2,3); node 4 has no in-batch neighbour
    assert stats == {"frac_with_neighbor": 0.8, "edges_per_batch": round(2 / 3, 3), "labels_per_batch": 1.0}
    assert in_batch_stats(order, edges, 5)["edges_per_batch"] == 4.0


@pytest.mark.parametrize("n,size,seed", [(0, 10, 0), (5, 10, 7), (10, 10, 1), (11, 10, 2), (1000, 100, 7),
                                         (3000, 256, "buffer:0:0:0:0"), (500, 1, 3), (500, 0, 3)])
def test_shuffle_simulation_is_the_trainers_sample_shuffle(n, size, seed):
    expected = list(shuffle_buffer(iter(range(n)), size, random.Random(seed)))
    got = reservoir_shuffle_permutation(n, size, seed=seed).tolist()
    assert got == expected
    assert sorted(got) == list(range(n))


def test_ordering_stats_use_the_trainers_default_buffer():
    assert TRAINER_SHUFFLE_BUFFER == TrainConfig.model_fields["shuffle_buffer"].default
    assert TRAINER_SHUFFLE_BUFFER == StreamSpec.__dataclass_fields__["shuffle_buffer"].default
