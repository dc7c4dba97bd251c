"""`sail` and `sail-struct`: SAIL's alignment layers trained on a bank of frozen-encoder embeddings, alone or with
the product graph.

SAIL (CVPR 2025) freezes two pretrained unimodal encoders, encodes every pair once, and trains only one alignment
layer per modality on the stored embeddings with SigLIP's sigmoid loss. Here the stored embeddings are an
embedding bank (`slip-train encode`, given with `--bank`); the model has no open_clip towers (trainer/bank_model.py),
batches come from the bank in memory (trainer/bank_data.py), no image is decoded. The paper's values are the
defaults: `LayerNorm -> GLU MLP` with a ReLU6 gate and 8x hidden width, output 1024, t learnable from 20 and
clamped <= 100, b learnable from -10. SAIL trains with Lion (lr 1e-5, batch 32,768); the trainer's optimizer is
AdamW, so the learning rate is not the paper's (bench/README.md). `--sail-head linear` is SAIL's alignment probe:
one linear map per modality, which scores how well two frozen encoders already align.

`sail-struct` (no paper has it): in-batch graph neighbours are extra positives in the sigmoid loss
(losses.sigmoid_neighbour_loss: term `sail` over the diagonal and unlinked pairs, term `sail_struct` over the linked
pairs, weight `--sail-struct-weight`; weight 1 is the loss with neighbours labelled +1), and `--sail-gat` refines
the aligned embeddings with SLIP's GAT (its gat_* / fusion_* options) before the loss, as SLIP does.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import BaseModel, Field

from trainer.methods.base import BatchContext, Method
from trainer.methods.registry import register

if TYPE_CHECKING:
    from torch import Tensor, nn

    from trainer.config import TrainConfig


class SAILOptions(BaseModel):
    """SAIL's config fields (flattened into TrainConfig: `--sail-dim`, `--sail-head`, ...)."""

    sail_dim: int = Field(1024, ge=1, description="Output width of the alignment layers (the shared embedding "
                          "space); 1024 as SAIL. Smaller for tests and small banks.")
    sail_head: Literal["glu", "linear"] = Field(
        "glu", description="glu = SAIL's alignment layer (LayerNorm -> W_g(ReLU6(W_1 x) * W_2 x)); linear = SAIL's "
        "alignment probe (one linear map per modality: how well the frozen encoders align as they are).")
    sail_hidden_mult: int = Field(8, ge=1, description="GLU hidden width as a multiple of the input width (SAIL: 8).")
    sail_scale_init: float = Field(20.0, gt=0, description="Initial sigmoid-loss scale t (learned, as log t); "
                                   "SAIL: 20.")
    sail_scale_max: float = Field(100.0, gt=0, description="Upper clamp of t after every step (SAIL: 100).")
    sail_bias_init: float = Field(-10.0, description="Initial sigmoid-loss bias b (learned); SAIL and SigLIP: -10, "
                                  "the prior of one positive among many negatives.")


class SAILStructOptions(SAILOptions):
    """sail-struct's fields on top of SAIL's; `--sail-gat` also reads SLIP's gat_* / fusion_* options."""

    sail_struct_weight: float = Field(
        1.0, ge=0, description="Weight of the neighbour-positive term (sail_struct); 1.0 = the sigmoid loss with "
        "in-batch graph neighbours labelled +1, 0 = neighbours only left out of the negatives.")
    sail_gat: bool = Field(False, description="Refine the aligned embeddings with a GAT per modality over the "
                           "in-batch graph (SLIP's refiner and options) before the loss; slip-eval then also "
                           "scores the graph-aware embeddings.")


@register
class SAIL(Method):
    name = "sail"
    description = "SAIL: alignment layers on a --bank's frozen embeddings, sigmoid loss (no towers, no images)"
    Options = SAILOptions
    trains_on_bank = True
    no_decay = ("sail_log_scale", "sail_logit_bias")

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.image_dim = self.text_dim = 0

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        if cfg.bank is None:
            raise ValueError(f"--method {cfg.method} trains on stored embeddings: give --bank BANK (a folder from "
                             "`slip-train encode`, or NAME of REL/embeddings/NAME)")
        if cfg.release is None:
            raise ValueError(f"--method {cfg.method} needs --release (the bank's release: splits and node ids), not "
                             "--shards")
        if getattr(cfg, "loss", None) not in (None, "sigmoid"):
            raise ValueError(f"--method {cfg.method} trains SAIL's sigmoid loss; leave --loss unset")
        if getattr(cfg, "superclip_weight", 0):
            raise ValueError(f"--superclip-weight needs image patch tokens; --method {cfg.method} has no image tower")
        if cfg.sail_scale_init > cfg.sail_scale_max:
            raise ValueError(f"sail_scale_init {cfg.sail_scale_init} is above sail_scale_max {cfg.sail_scale_max}")

    @property
    def embed_dim(self) -> int:
        return self.cfg.sail_dim

    def bind_bank(self, image_dim: int, text_dim: int) -> None:
        """The widths of the bank's stored embeddings (the alignment layers' inputs); before `build`."""
        self.image_dim, self.text_dim = image_dim, text_dim

    def build(self, embed_dim: int) -> dict[str, nn.Module | Tensor]:
        import torch
        from torch import nn

        from trainer.methods._align import make_aligner
        if not (self.image_dim and self.text_dim):
            raise TypeError("bind_bank(image_dim, text_dim) must come before build")
        cfg = self.cfg
        parts = super().build(embed_dim)
        parts.update(
            sail_image=make_aligner(cfg.sail_head, self.image_dim, embed_dim, cfg.sail_hidden_mult),
            sail_text=make_aligner(cfg.sail_head, self.text_dim, embed_dim, cfg.sail_hidden_mult),
            sail_log_scale=nn.Parameter(torch.tensor(math.log(cfg.sail_scale_init))),
            sail_logit_bias=nn.Parameter(torch.tensor(float(cfg.sail_bias_init))))
        return parts

    def align(self, model: Any, features: Tensor, modality: str) -> Tensor:
        """L2-normalised aligned embeddings of stored `features` [B, dim_in] of one modality."""
        import torch.nn.functional as F
        return F.normalize(getattr(model, f"sail_{modality}")(features.float()), dim=-1)

    def logit_scale(self, model: Any) -> Tensor:
        """t (exponentiated)."""
        return model.sail_log_scale.exp()

    def loss_terms(self, model: Any, out: dict[str, Tensor], ctx: BatchContext) -> dict[str, Tensor]:
        from trainer.losses import sigmoid_loss
        return {"sail": sigmoid_loss(out["image_emb"], out["text_emb"], out["logit_scale"], model.sail_logit_bias,
                                     ctx.node_ids, rows=ctx.rows)}

    def clamp_(self, model: Any) -> None:
        super().clamp_(model)
        model.sail_log_scale.clamp_(max=math.log(self.cfg.sail_scale_max))

    def log_scalars(self, model: Any) -> dict[str, float]:
        return {**super().log_scalars(model), "sail_scale": model.sail_log_scale.exp().item(),
                "sail_bias": model.sail_logit_bias.item()}


@register
class SAILStruct(SAIL):
    name = "sail-struct"
    description = "SAIL + in-batch graph neighbours as extra sigmoid-loss positives (optionally a GAT: --sail-gat)"
    Options = SAILStructOptions
    needs_graph = True
    no_decay = (*SAIL.no_decay, "alpha")

    @property
    def refines_embeddings(self) -> bool:  # type: ignore[override]  # per run: only with --sail-gat
        return bool(self.cfg.sail_gat)

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if cfg.sail_gat and cfg.gat_hidden is not None and cfg.gat_hidden % cfg.gat_heads:
            raise ValueError(f"gat_hidden {cfg.gat_hidden} is not divisible by gat_heads {cfg.gat_heads}")

    def build(self, embed_dim: int) -> dict[str, nn.Module | Tensor]:
        parts = super().build(embed_dim)
        if self.cfg.sail_gat:
            from trainer.methods._gat import GraphRefiner
            parts.update(gat_image=GraphRefiner(embed_dim, self.cfg), gat_text=GraphRefiner(embed_dim, self.cfg))
        return parts

    def forward(self, model: Any, out: dict[str, Tensor], edge_index: Optional[Tensor],
                edge_weight: Optional[Tensor]) -> dict[str, Tensor]:
        if edge_index is None:
            raise ValueError(f"method {self.name} needs the batch edge_index")
        if not self.cfg.sail_gat:
            return {}
        return {"image_refined": self.graph_refine(model, out["image_emb"], edge_index, edge_weight, "image"),
                "text_refined": self.graph_refine(model, out["text_emb"], edge_index, edge_weight, "text")}

    def graph_refine(self, model: Any, emb: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor],
                     modality: str) -> Tensor:
        return getattr(model, f"gat_{modality}")(emb, edge_index, edge_weight)

    def loss_terms(self, model: Any, out: dict[str, Tensor], ctx: BatchContext) -> dict[str, Tensor]:
        from trainer.losses import sigmoid_neighbour_loss
        image, text = (out["image_refined"], out["text_refined"]) if self.cfg.sail_gat else (out["image_emb"],
                                                                                            out["text_emb"])
        pairs, neighbours = sigmoid_neighbour_loss(image, text, out["logit_scale"], model.sail_logit_bias,
                                                   ctx.edge_index, ctx.node_ids, rows=ctx.rows)
        return {"sail": pairs, "sail_struct": neighbours}

    def term_weights(self, step: int = 0) -> dict[str, float]:
        return {**super().term_weights(step), "sail_struct": self.cfg.sail_struct_weight}

    def log_scalars(self, model: Any) -> dict[str, float]:
        scalars = super().log_scalars(model)
        if self.cfg.sail_gat:
            scalars.update(alpha_image=model.gat_image.alpha.item(), alpha_text=model.gat_text.alpha.item())
        return scalars
