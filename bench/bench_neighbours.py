"""Exact top-1 neighbours over a bank: trainer.neighbours' chunked numpy matmul vs faiss IndexFlatIP (k=2, self
dropped) and a torch matmul, on N random unit vectors (all N against all N, self excluded).

    python bench/bench_neighbours.py --n 50000 --dim 384

faiss is optional (`pip install faiss-cpu`); without it that row is skipped. Prints one JSON line per backend with
wall seconds and whether its neighbours equal the numpy ones.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from trainer.neighbours import normalise, top1_neighbours


def faiss_top1(vectors: np.ndarray) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    _, found = index.search(vectors, 2)
    self_first = found[:, 0] == np.arange(len(vectors))
    return np.where(self_first, found[:, 1], found[:, 0])


def torch_top1(vectors: np.ndarray, chunk: int) -> np.ndarray:
    import torch

    x = torch.from_numpy(vectors)
    best = torch.empty(len(x), dtype=torch.long)
    for start in range(0, len(x), chunk):
        sim = x[start:start + chunk] @ x.T
        sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))] = -float("inf")
        best[start:start + chunk] = sim.argmax(1)
    return best.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--chunk", type=int, default=2048)
    args = parser.parse_args()
    vectors = normalise(np.random.default_rng(0).standard_normal((args.n, args.dim), dtype=np.float32))
    ids = np.arange(args.n)
    t0 = time.perf_counter()
    reference = top1_neighbours(vectors, vectors, ids, ids, chunk=args.chunk)
    print(json.dumps({"backend": "numpy chunked (trainer.neighbours)", "n": args.n, "dim": args.dim,
                      "chunk": args.chunk, "wall_s": round(time.perf_counter() - t0, 2)}))
    t0 = time.perf_counter()
    got = torch_top1(vectors, args.chunk)
    print(json.dumps({"backend": "torch chunked", "wall_s": round(time.perf_counter() - t0, 2),
                      "same": bool((got == reference).all())}))
    try:
        import faiss  # noqa: F401
    except ImportError:
        print(json.dumps({"backend": "faiss IndexFlatIP", "skipped": "faiss not installed"}))
        return
    t0 = time.perf_counter()
    got = faiss_top1(vectors)
    print(json.dumps({"backend": "faiss IndexFlatIP", "wall_s": round(time.perf_counter() - t0, 2),
                      "same": bool((got == reference).all())}))


if __name__ == "__main__":
    main()
