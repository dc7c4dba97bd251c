"""Training batches drawn from an embedding bank in memory (SAIL): stored feature rows, no image decoding.

The rows trained on are the bank's rows of the `--split` nodes with an image embedding, in node-id order, held
once on the training device (fp16, as stored; each batch is cast to fp32). The sample stream is an endless
concatenation of seeded permutations of those rows, one per epoch (epoch e: `default_rng([seed, e])`), cut into
global batches of batch_size x world_size; rank r takes its block of each. Batch k is a pure function of (seed, k,
batch size, world size), so the data position in a checkpoint is one number (batches consumed) and a resumed run
sees exactly the batches the first run would have: no loader, no buffer, no RNG state. A batch larger than the
rows, or one across an epoch boundary, may hold a product twice (the loss masks same-product pairs).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from trainer.bank import Bank, BankError
from trainer.release import Release


def train_rows(bank: Bank, release: Release, split: str) -> np.ndarray:
    """Bank rows (ascending node id) of the `split` nodes with an image embedding; BankError when there is none."""
    nodes = release.nodes()
    in_split = nodes["node_id"][nodes["split"] == split]
    rows = bank.rows(np.sort(in_split))
    rows = rows[bank.image_mask[rows]]
    if not len(rows):
        raise BankError(f"bank {bank.path}: no {split}-split node of release {release.path} has an image "
                        f"embedding (nothing to train on; is --split right?)")
    return rows


class BankBatches:
    """Endless batches `{"images": [b, image_dim], "tokens": [b, text_dim], "node_ids": [b]}` from bank rows.

    The keys are the model inputs the loop passes on (for a bank run: the stored image and text features)."""

    workers = 0  # no loader processes

    def __init__(self, bank: Bank, rows: np.ndarray, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 consumed_batches: int = 0, device: torch.device | str = "cpu"):
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world_size
        self.consumed = consumed_batches
        self.image = torch.from_numpy(np.ascontiguousarray(bank.image[rows])).to(device)
        self.text = torch.from_numpy(np.ascontiguousarray(bank.text[rows])).to(device)
        self.node_ids = torch.from_numpy(np.ascontiguousarray(bank.node_id[rows]))
        self.n = len(rows)
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 4:  # a step spans at most a few epochs
                self._orders.pop(min(self._orders))
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._orders[epoch]

    def indices(self, k: int) -> np.ndarray:
        """Rows of this rank's part of global batch `k`."""
        start = (k * self.world + self.rank) * self.batch_size
        positions = np.arange(start, start + self.batch_size)
        epochs, offsets = np.divmod(positions, self.n)
        out = np.empty(self.batch_size, np.int64)
        for epoch in np.unique(epochs):
            at = epochs == epoch
            out[at] = self._order(int(epoch))[offsets[at]]
        return out

    def batch(self, k: int) -> dict[str, Any]:
        index = torch.from_numpy(self.indices(k))
        on_device = index.to(self.image.device)
        return {"images": self.image.index_select(0, on_device).float(),
                "tokens": self.text.index_select(0, on_device).float(), "node_ids": self.node_ids[index]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            batch = self.batch(self.consumed)
            self.consumed += 1
            yield batch

    def skipped(self) -> dict[str, int]:
        return {}

    def position(self) -> dict[str, Any]:
        """What a checkpoint needs to resume the stream exactly (the same keys as trainer.data's)."""
        return {"consumed_batches": self.consumed, "num_workers": 0, "batch_size": self.batch_size,
                "bank_rows": self.n}
