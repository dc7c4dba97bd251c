"""Exact top-1 nearest neighbours over an embedding bank: what CLIP-PING's NN / XNN targets are looked up from.

Cosine similarity by a chunked matmul (numpy BLAS, float32): `chunk` query rows at a time against every candidate,
so memory is chunk x candidates, never queries x candidates. Exact, and deterministic: the query itself (same node
id) is never its own neighbour, and of equally similar candidates the one listed first wins (argmax keeps the first
maximum), so a resumed run looks up the same targets.
faiss's exact IndexFlatIP is not used: on this project's CPU it was not faster (bench/README.md, "nearest
neighbours").
"""
from __future__ import annotations

import numpy as np

NO_NEIGHBOUR = -1


def normalise(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm; an all-zero row (no embedding) stays zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def top1_neighbours(queries: np.ndarray, candidates: np.ndarray, query_ids: np.ndarray,
                    candidate_ids: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Index into `candidates` of each query's most cosine-similar candidate whose id differs from the query's.

    queries [Q, d], candidates [C, d] (same d; normalised here), ids int64 [Q] / [C]. A query with no candidate
    left (none, or only itself) gets NO_NEIGHBOUR (-1).
    """
    queries, candidates = normalise(queries), normalise(candidates)
    query_ids, candidate_ids = np.asarray(query_ids, np.int64), np.asarray(candidate_ids, np.int64)
    if queries.shape[1] != candidates.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} dims, candidates {candidates.shape[1]}")
    if len(query_ids) != len(queries) or len(candidate_ids) != len(candidates):
        raise ValueError("one id per query row and per candidate row")
    best = np.full(len(queries), NO_NEIGHBOUR, dtype=np.int64)
    if not len(candidates):
        return best
    for start in range(0, len(queries), chunk):
        stop = min(start + chunk, len(queries))
        sim = queries[start:stop] @ candidates.T  # [q, C]
        sim[query_ids[start:stop, None] == candidate_ids[None, :]] = -np.inf  # never the sample itself
        top = sim.argmax(axis=1)
        found = np.isfinite(sim[np.arange(stop - start), top])
        best[start:stop] = np.where(found, top, NO_NEIGHBOUR)
    return best
