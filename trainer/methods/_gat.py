"""`GraphRefiner`: a GAT stack with residual fusion, the graph part SLIP adds per modality."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GATv2Conv

from trainer.config import TrainSetupError

if TYPE_CHECKING:
    from trainer.config import TrainConfig


class GraphRefiner(nn.Module):
    """GAT stack with residual fusion: h = normalize(e + alpha * GAT(e)), configured by the gat_* / fusion_* fields.

    Self loops are added inside the convolutions, so a sample without in-batch neighbours is still refined (from
    itself only) and refined embeddings are comparable across samples with and without neighbours. Runs in fp32
    outside autocast: the GAT is small and its scatter-softmax is the part that suffers in bf16.
    """

    def __init__(self, dim: int, cfg: TrainConfig):
        super().__init__()
        hidden = cfg.gat_hidden or dim
        if dim % cfg.gat_heads or hidden % cfg.gat_heads:
            raise TrainSetupError(f"embedding dim {dim} and gat_hidden {hidden} must be divisible by gat_heads "
                                  f"{cfg.gat_heads}")
        conv_cls = GATv2Conv if cfg.gat_type == "gatv2" else GATConv
        widths = [dim] + [hidden] * (cfg.gat_layers - 1) + [dim]
        self.use_edge_weight = cfg.gat_edge_weight
        self.convs = nn.ModuleList(
            conv_cls(w_in, w_out // cfg.gat_heads, heads=cfg.gat_heads, concat=True, dropout=cfg.gat_attn_dropout,
                     add_self_loops=True, edge_dim=1 if cfg.gat_edge_weight else None)
            for w_in, w_out in zip(widths[:-1], widths[1:]))
        self.dropout = nn.Dropout(cfg.gat_dropout)
        alpha = torch.tensor(float(cfg.fusion_alpha_init))
        if cfg.fusion_alpha_learnable:
            self.alpha = nn.Parameter(alpha)
        else:
            self.register_buffer("alpha", alpha)

    def forward(self, emb: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        with torch.autocast(emb.device.type, enabled=False):
            emb = emb.float()
            edge_attr = None
            if self.use_edge_weight:
                if edge_weight is None:
                    edge_weight = torch.ones(edge_index.shape[1], device=emb.device)
                edge_attr = edge_weight.float().view(-1, 1)
            h = emb
            for i, conv in enumerate(self.convs):
                if i > 0:
                    h = self.dropout(F.elu(h))
                h = conv(h, edge_index, edge_attr=edge_attr)
            return F.normalize(emb + self.alpha * h, dim=-1)
