"""`slip`: CLIP + a GAT refiner per modality over the in-batch product graph + SLIP's structural loss.

The SLIP paper leaves the graph part undisclosed (GAT variant and size, how the GAT output is fused with the
encoder output, the structural loss weight and temperature, ...); each choice is an option below with a default
and the reason for it. The model parts keep the names `gat_image`, `gat_text`, `struct_log_inv_temperature`
(state-dict keys of existing runs).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field

from trainer.methods.base import BatchContext
from trainer.methods.clip import CLIP, ContrastiveLossOptions
from trainer.methods.registry import register

if TYPE_CHECKING:
    from torch import Tensor, nn

    from trainer.config import TrainConfig


class SLIPOptions(ContrastiveLossOptions):
    """SLIP's config fields (flattened into TrainConfig: `--gat-layers`, `--lambda-struct`, ...); the CLIP term's
    `--loss softmax|sigmoid` comes with ContrastiveLossOptions."""

    # ---- graph refiner ------------------------------------------------------------------------------------------
    gat_type: Literal["gatv2", "gat"] = Field(
        "gatv2", description="GATv2Conv (dynamic attention, strictly more expressive than GAT) or GATConv.")
    gat_layers: int = Field(
        2, ge=1, description="GAT layers; 2 reaches 2-hop neighbours, beyond that batches rarely hold the path.")
    gat_heads: int = Field(4, ge=1, description="Attention heads per layer (outputs concatenated).")
    gat_hidden: Optional[int] = Field(
        None, ge=1, description="Hidden width between GAT layers; None = the CLIP embedding dim (keeps the "
        "refiner as wide as its input). Must be divisible by gat_heads, as must the embedding dim.")
    gat_dropout: float = Field(0.1, ge=0, lt=1, description="Feature dropout between GAT layers (PyG default 0 "
                               "overfits tiny neighbourhoods; 0.1 is the usual light setting).")
    gat_attn_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on attention coefficients.")
    gat_edge_weight: bool = Field(
        False, description="Feed edge weights to the GAT as a 1-d edge attribute. Off by default: release "
        "weights are co-purchase counts whose scale differs between sources.")
    fusion_alpha_init: float = Field(
        0.1, description="Residual fusion h = normalize(e + alpha * GAT(e)); 0.1 keeps the refined embedding "
        "close to the encoder's at the start (safe with pretrained towers) yet gives the GAT a gradient from "
        "step one (alpha = 0 would not).")
    fusion_alpha_learnable: bool = Field(True, description="Learn alpha (one scalar per modality).")

    # ---- structural loss ----------------------------------------------------------------------------------------
    lambda_struct: float = Field(
        0.5, ge=0, description="Total = CLIP + lambda * structural. 0.5 (with struct_neighbor_weight 0.25) is the "
        "setting the regime study (bench/README.md) found behind CLIP on no instance metric in any regime; 1.0 "
        "weighs both objectives equally, as published.")
    lambda_struct_warmup: int = Field(
        0, ge=0, description="Steps over which lambda ramps linearly up to lambda_struct (step s weighs "
        "lambda * min(1, (s + 1) / N)); 0 = full weight from the first step. Lets the instance alignment form before "
        "neighbours pull captions together.")
    gat_refiner: bool = Field(
        True, description="The GAT refiner per modality. Off: the structural loss acts on the encoder embeddings "
        "themselves and evaluation has no graph-aware rows (structure as a training signal only).")
    struct_head: bool = Field(
        False, description="Score the structural loss on a separate projection (LayerNorm -> Linear per modality, "
        "then L2-normalised) of the embeddings it would see, so neighbours are pulled together in that head's space "
        "rather than in the retrieval space; the head is used in training only (not exported, not evaluated).")
    struct_stop_grad: bool = Field(
        False, description="Detach the encoder embeddings in the structural branch: the structural loss trains only "
        "the GAT (and head, temperature), the towers learn from the contrastive term alone.")
    struct_hops: int = Field(
        1, ge=1, le=2, description="Neighbour positives: in-batch 1-hop neighbours, or also 2-hop ones (neighbours "
        "of neighbours in the batch graph, each weighted like a 1-hop neighbour of weight 1).")
    struct_temperature_init: float = Field(
        0.07, gt=0, description="Initial structural temperature; 0.07 is CLIP's own initial temperature.")
    struct_temperature_learnable: bool = Field(True, description="Learn the structural temperature (as log 1/T).")
    struct_temperature_min: float = Field(
        0.01, gt=0, description="Lower clamp of the structural temperature (= CLIP's logit-scale cap of 100).")
    struct_intra_modal: bool = Field(
        False, description="Add intra-modal terms (image-image, text-text) to the always-on cross-modal terms.")
    struct_neighbor_weight: float = Field(
        0.25, ge=0, description="Weight of each neighbour positive relative to the true pair (weight 1) in the "
        "cross-modal structural term. 1 (SLIP as published: every positive alike) counts a neighbour's caption as "
        "correct as the product's own and costs instance retrieval on some catalogs; 0.25 keeps the true pair "
        "first (chosen with lambda_struct 0.5 by the regime study).")
    struct_edge_weight: bool = Field(
        False, description="Weigh neighbour positives by edge weight (self pair weight 1); off for the same "
        "reason as gat_edge_weight.")
    struct_no_neighbor: Literal["self", "exclude"] = Field(
        "self", description="Rows with no in-batch neighbour: 'self' keeps them with the self pair as the only "
        "positive (every sample contributes, the term degrades to InfoNCE); 'exclude' drops them (a batch with "
        "no edges then gives structural loss 0).")


@register
class SLIP(CLIP):
    name = "slip"
    description = "CLIP + GATs over in-batch co-purchase neighbours + structural loss"
    Options = SLIPOptions
    needs_graph = True
    no_decay = (*CLIP.no_decay, "struct_log_inv_temperature", "alpha")

    @property
    def refines_embeddings(self) -> bool:  # type: ignore[override]  # per run: not with --no-gat-refiner
        return bool(self.cfg.gat_refiner)

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        if not cfg.gat_refiner and cfg.struct_stop_grad and not cfg.struct_head:
            raise ValueError("--struct-stop-grad with --no-gat-refiner leaves the structural loss nothing to train; "
                             "add --struct-head or keep the GAT")
        if cfg.gat_hidden is not None and cfg.gat_hidden % cfg.gat_heads:
            raise ValueError(f"gat_hidden {cfg.gat_hidden} is not divisible by gat_heads {cfg.gat_heads}")

    def build(self, embed_dim: int) -> dict[str, nn.Module | Tensor]:
        import torch
        from torch import nn

        from trainer.methods._gat import GraphRefiner
        cfg = self.cfg
        parts = super().build(embed_dim)
        if cfg.gat_refiner:
            parts.update(gat_image=GraphRefiner(embed_dim, cfg), gat_text=GraphRefiner(embed_dim, cfg))
        if cfg.struct_head:
            parts.update({f"struct_head_{modality}": nn.Sequential(nn.LayerNorm(embed_dim),
                                                                   nn.Linear(embed_dim, embed_dim))
                          for modality in ("image", "text")})
        log_inv_t = torch.tensor(math.log(1.0 / cfg.struct_temperature_init))
        parts["struct_log_inv_temperature"] = nn.Parameter(log_inv_t) if cfg.struct_temperature_learnable \
            else log_inv_t
        return parts

    def forward(self, model: Any, out: dict[str, Tensor], edge_index: Optional[Tensor],
                edge_weight: Optional[Tensor]) -> dict[str, Tensor]:
        """The embeddings the structural loss scores (`image_struct`, `text_struct`): encoder output, detached
        with struct_stop_grad, GAT-refined unless --no-gat-refiner, through the structural head with struct_head."""
        import torch.nn.functional as F
        if edge_index is None:
            raise ValueError("method slip needs the batch edge_index")
        cfg = self.cfg
        extra: dict[str, Tensor] = {"struct_temperature": self.struct_temperature(model)}
        for modality in ("image", "text"):
            emb = out[f"{modality}_emb"]
            if cfg.struct_stop_grad:
                emb = emb.detach()
            if cfg.gat_refiner:
                emb = model.graph_refine(emb, edge_index, edge_weight, modality)
            if cfg.struct_head:
                emb = F.normalize(getattr(model, f"struct_head_{modality}")(emb.float()), dim=-1)
            extra[f"{modality}_struct"] = emb
        return extra

    def graph_refine(self, model: Any, emb: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor],
                     modality: str) -> Tensor:
        return getattr(model, f"gat_{modality}")(emb, edge_index, edge_weight)

    def loss_terms(self, model: Any, out: dict[str, Tensor], ctx: BatchContext) -> dict[str, Tensor]:
        from trainer.losses import structural_loss
        cfg = self.cfg
        terms = super().loss_terms(model, out, ctx)
        terms["struct"] = structural_loss(
            out["image_struct"], out["text_struct"], ctx.edge_index, out["struct_temperature"],
            intra_modal=cfg.struct_intra_modal, edge_weight=ctx.edge_weight if cfg.struct_edge_weight else None,
            no_neighbor=cfg.struct_no_neighbor, rows=ctx.rows, neighbor_weight=cfg.struct_neighbor_weight,
            hops=cfg.struct_hops)
        return terms

    def term_weights(self, step: int = 0) -> dict[str, float]:
        warmup = self.cfg.lambda_struct_warmup
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return {**super().term_weights(step), "struct": self.cfg.lambda_struct * ramp}

    @staticmethod
    def struct_temperature(model: Any) -> Tensor:
        return (-model.struct_log_inv_temperature).exp()

    def clamp_(self, model: Any) -> None:
        super().clamp_(model)
        model.struct_log_inv_temperature.clamp_(max=math.log(1.0 / self.cfg.struct_temperature_min))

    def log_scalars(self, model: Any) -> dict[str, float]:
        scalars = {**super().log_scalars(model), "struct_temperature": self.struct_temperature(model).item()}
        if self.cfg.gat_refiner:
            scalars.update(alpha_image=model.gat_image.alpha.item(), alpha_text=model.gat_text.alpha.item())
        return scalars
