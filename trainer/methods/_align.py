"""SAIL's alignment layers: what a bank-trained method puts on top of each frozen encoder's stored embeddings."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class GLUAligner(nn.Module):
    """SAIL's alignment layer: `LayerNorm -> W_g(ReLU6(W_1 x) * (W_2 x))`, hidden = `mult` x the input width.

    The LayerNorm puts stored embeddings of any encoder (unit rows or not) on one scale; the gated MLP is
    SAIL's choice over a plain MLP (the gate lets the layer pass a feature through nearly linearly)."""

    def __init__(self, dim_in: int, dim_out: int, mult: int):
        super().__init__()
        hidden = mult * dim_in
        self.norm = nn.LayerNorm(dim_in)
        self.w1 = nn.Linear(dim_in, hidden)
        self.w2 = nn.Linear(dim_in, hidden)
        self.wg = nn.Linear(hidden, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        return self.wg(F.relu6(self.w1(x)) * self.w2(x))


def make_aligner(kind: str, dim_in: int, dim_out: int, mult: int) -> nn.Module:
    """'glu' (SAIL's alignment layer) or 'linear' (SAIL's alignment probe: one linear map, nothing else)."""
    if kind == "glu":
        return GLUAligner(dim_in, dim_out, mult)
    if kind == "linear":
        return nn.Linear(dim_in, dim_out)
    raise ValueError(f"unknown alignment head {kind!r} (glu or linear)")
