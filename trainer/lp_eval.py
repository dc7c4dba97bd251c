"""Link prediction on the release's fixed split (`lp_split.parquet`): the same positives and negatives for every run.

Each row of the split is one query: rank the held-out partner `dst` of the query `src` against the row's fixed
negatives by embedding dot product. Rank = 1 + the number of negatives scoring >= the positive (ties count against
the model, as in the sampled protocol of trainer.metrics). Reports MRR and Hits@1/3/10 under the keys the sampled
protocol uses, so runs compare across protocols only where the eval JSON's `lp_protocol` agrees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

if TYPE_CHECKING:
    from trainer.release import Release

HITS_AT = (1, 3, 10)


@dataclass
class FixedLinkSplit:
    """One split's queries as node ids: queries [Q], positives [Q], negatives [Q, K] (-1 pads a short row)."""

    queries: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray

    @classmethod
    def from_table(cls, table: pa.Table) -> "FixedLinkSplit":
        negatives = table.column("negatives").to_pylist()
        width = max((len(n) for n in negatives), default=0)
        padded = np.full((len(negatives), width), -1, np.int64)
        for i, row in enumerate(negatives):
            padded[i, :len(row)] = row
        return cls(np.asarray(table.column("src").to_pylist(), np.int64),
                   np.asarray(table.column("dst").to_pylist(), np.int64), padded)

    def __len__(self) -> int:
        return len(self.queries)

    def restricted(self, query_ids: np.ndarray) -> "FixedLinkSplit":
        """Only the rows whose query is one of `query_ids` (the evaluated products, e.g. under --max-samples)."""
        keep = np.isin(self.queries, query_ids)
        return FixedLinkSplit(self.queries[keep], self.positives[keep], self.negatives[keep])

    def node_ids(self) -> np.ndarray:
        """Every node the split needs an embedding of: queries, positives and negatives."""
        return np.unique(np.concatenate([self.queries, self.positives, self.negatives[self.negatives >= 0]]))

    def rows(self, table_ids: np.ndarray) -> "FixedLinkRows":
        """The split as row indices into an embedding table whose sorted node ids are `table_ids`; a query whose
        query or positive was not encoded (a bad sample) is dropped, a missing negative is masked out."""
        def lookup(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            pos = np.minimum(np.searchsorted(table_ids, values), max(len(table_ids) - 1, 0))
            found = (values >= 0) & (table_ids[pos] == values) if len(table_ids) else np.zeros(values.shape, bool)
            return pos, found

        q, q_ok = lookup(self.queries)
        p, p_ok = lookup(self.positives)
        n, n_ok = lookup(self.negatives)
        keep = q_ok & p_ok
        return FixedLinkRows(torch.as_tensor(q[keep]), torch.as_tensor(p[keep]), torch.as_tensor(n[keep]),
                             torch.as_tensor(n_ok[keep]), width=self.negatives.shape[1])


@dataclass
class FixedLinkRows:
    """A fixed split as rows of one embedding table (see FixedLinkSplit.rows)."""

    queries: Tensor  # [Q]
    positives: Tensor  # [Q]
    negatives: Tensor  # [Q, K]
    valid: Tensor  # [Q, K] bool: the negative exists in the table
    width: int  # K, the negatives per row the release asked for

    def __len__(self) -> int:
        return len(self.queries)


def fixed_link_prediction_metrics(emb: Tensor, rows: FixedLinkRows, chunk_size: int = 4096,
                                  prefix: str = "lp") -> dict[str, float]:
    """MRR, Hits@1/3/10, the number of queries and of queries with fewer valid negatives than the release's K."""
    if len(rows) == 0:
        raise ValueError("no link-prediction query has both ends encoded")
    emb = emb.float()
    ranks = torch.empty(len(rows), dtype=torch.long)
    for start in range(0, len(rows), chunk_size):
        stop = min(start + chunk_size, len(rows))
        q = emb[rows.queries[start:stop]]
        positive = (q * emb[rows.positives[start:stop]]).sum(-1)
        negative = torch.einsum("bd,bkd->bk", q, emb[rows.negatives[start:stop]])
        ranks[start:stop] = 1 + ((negative >= positive[:, None]) & rows.valid[start:stop]).sum(dim=1)
    out = {f"{prefix}_mrr": float((1.0 / ranks.double()).mean())}
    out.update({f"{prefix}_hits@{k}": float((ranks <= k).double().mean()) for k in HITS_AT})
    out[f"{prefix}_n_queries"] = len(rows)
    out[f"{prefix}_short_negatives"] = int((rows.valid.sum(dim=1) < rows.width).sum())
    return out


def fixed_split(release: "Release", split: str, query_ids: np.ndarray) -> "FixedLinkSplit | None":
    """The release's fixed split for `split`, only the queries among `query_ids` (the evaluated products); None when
    the release has no lp_split.parquet or no row for `split` (slip-eval then samples held-out edges itself)."""
    table = release.lp_split(split)
    if table is None or table.num_rows == 0:
        return None
    return FixedLinkSplit.from_table(table).restricted(np.asarray(query_ids, np.int64))
