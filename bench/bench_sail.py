"""Throughput of `slip-train --method sail` (and sail-struct) on CPU: alignment layers on an embedding bank.

A synthetic release with `--nodes` products and a bank of random unit rows with the widths of real frozen
encoders (image 768: a ViT-B/16; text 384: MiniLM-L6) written through the bank API; then `slip-train` runs
`--steps` steps at `--batch-size` and the summary's in-loop samples/s (train time only, setup excluded) is printed
per method. What is timed is the alignment layers' forward/backward, the sigmoid loss over the B x B pairs and
AdamW: no image is decoded.

    python bench/bench_sail.py [--nodes 20000] [--batch-size 4096] [--steps 20] [--sail-dim 1024] [--threads T]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_bank(root: Path, nodes: int, image_dim: int, text_dim: int) -> Path:
    from trainer.bank import release_nodes_sha256, write_bank
    from trainer.release import Release
    from trainer.synthetic import make_synthetic_release

    release = Release(make_synthetic_release(root / "release", n_nodes=nodes, shard_size=4096, image_size=16))
    rng = np.random.default_rng(0)

    def unit(dim: int) -> np.ndarray:
        rows = rng.standard_normal((nodes, dim)).astype(np.float32)
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)

    out = release.path / "embeddings" / "random"
    out.mkdir(parents=True)
    write_bank(out, {"node_id.npy": np.sort(release.nodes()["node_id"]).astype(np.int64), "text.npy": unit(text_dim),
                     "image.npy": unit(image_dim), "image_mask.npy": np.ones(nodes, bool)},
               {"release_name": "synthetic", "release_version": "0.0.0",
                "release_nodes_sha256": release_nodes_sha256(release), "n_nodes": nodes, "n_images": nodes,
                "image_encoder": "random", "image_pretrained": None, "image_dim": image_dim, "text_encoder": "random",
                "text_pretrained": None, "text_field": "title", "text_dim": text_dim, "dtype": "float16",
                "normalized": True, "created_with": {"bench": "bench/bench_sail.py"}})
    return release.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sail-dim", type=int, default=1024)
    parser.add_argument("--image-dim", type=int, default=768)
    parser.add_argument("--text-dim", type=int, default=384)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--methods", nargs="+", default=["sail", "sail-struct"])
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        release = make_bank(Path(tmp), args.nodes, args.image_dim, args.text_dim)
        for method in args.methods:
            cmd = [sys.executable, "-c", "import sys; from trainer.cli import train_main; "
                   "sys.exit(train_main(sys.argv[1:]))", "--release", str(release), "--method", method,
                   "--bank", "random", "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                   "--sail-dim", str(args.sail_dim), "--warmup", "2", "--log-every", str(args.steps),
                   "--ckpt-every", str(args.steps), "--device", "cpu", "--out", str(Path(tmp) / method)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=True)
            summary = json.loads(done.stdout.splitlines()[0])
            print(json.dumps({"method": method, "batch_size": args.batch_size, "sail_dim": args.sail_dim,
                              "image_dim": args.image_dim, "text_dim": args.text_dim, "threads": args.threads,
                              "samples_per_s": round(summary["samples_per_s"]),
                              "train_time_s": round(summary["train_time_s"], 2),
                              "setup_time_s": round(summary["setup_time_s"], 2)}))


if __name__ == "__main__":
    main()
