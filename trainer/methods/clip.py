"""`clip`: CLIP's symmetric InfoNCE on the encoder embeddings, the baseline every other method is compared with.

`ContrastiveLossOptions` (`--loss softmax|sigmoid`) is the one declaration of the contrastive-loss choice: every
method with a contrastive term subclasses CLIP and takes these options (its own Options subclass this class), so
TrainConfig sees each field declared once. With `--loss sigmoid` the term is SigLIP's (`siglip`): the CLIP's own
`logit_scale` is its t (initialised to `sigmoid_scale_init`, clamped to [1, 100] like CLIP's) and the bias b is a
part of the method (`siglip_logit_bias`; not in the exported open_clip state dict, retrieval does not need it).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional

from pydantic import BaseModel, Field

from trainer.methods.base import BatchContext, Method
from trainer.methods.registry import register

if TYPE_CHECKING:
    from torch import Tensor, nn

SIGMOID_BIAS = "siglip_logit_bias"


class ContrastiveLossOptions(BaseModel):
    """The contrastive term's loss (flattened into TrainConfig: `--loss`, `--sigmoid-scale-init`, ...)."""

    loss: Optional[Literal["softmax", "sigmoid"]] = Field(
        None, description="Contrastive loss: softmax (CLIP's symmetric InfoNCE) or sigmoid (SigLIP's pairwise "
        "loss with a learned bias, no batch-wide normalisation); None = the method's own (sigmoid for siglip, "
        "softmax for every other method).")
    sigmoid_scale_init: Optional[float] = Field(
        10.0, gt=0, description="Sigmoid loss: initial t, written into the CLIP's logit_scale (log t) at model "
        "build; 10 = SigLIP's log(10) init. None keeps the CLIP's own (e.g. a pretrained model's).")
    sigmoid_bias_init: float = Field(
        -10.0, description="Sigmoid loss: initial bias b; SigLIP's -10 puts every pair near the prior of 1 "
        "positive among many negatives, so the first steps do not spend themselves pushing negatives down.")
    sigmoid_duplicates: Literal["mask", "positive"] = Field(
        "mask", description="Sigmoid loss: pairs of two batch rows holding the same product are left out of the "
        "sum ('mask', as the softmax loss masks them from its negatives) or count as positives ('positive').")


@register
class CLIP(Method):
    name = "clip"
    description = "CLIP InfoNCE on the encoder embeddings (the baseline)"
    Options = ContrastiveLossOptions
    default_loss: ClassVar[str] = "softmax"  # the contrastive loss when --loss is not given
    no_decay = (SIGMOID_BIAS,)

    @property
    def contrastive_loss(self) -> str:
        """'softmax' or 'sigmoid': --loss, or the method's default."""
        return self.cfg.loss or self.default_loss

    def bind(self, clip: nn.Module) -> None:
        super().bind(clip)
        if self.contrastive_loss == "sigmoid" and self.cfg.sigmoid_scale_init is not None:
            import torch
            with torch.no_grad():
                clip.logit_scale.fill_(math.log(self.cfg.sigmoid_scale_init))

    def build(self, embed_dim: int) -> dict[str, nn.Module | Tensor]:
        parts = super().build(embed_dim)
        if self.contrastive_loss == "sigmoid":
            import torch
            from torch import nn
            parts[SIGMOID_BIAS] = nn.Parameter(torch.tensor(float(self.cfg.sigmoid_bias_init)))
        return parts

    def loss_terms(self, model: Any, out: dict[str, Tensor], ctx: BatchContext) -> dict[str, Tensor]:
        if self.contrastive_loss == "sigmoid":
            from trainer.losses import sigmoid_loss
            return {"siglip": sigmoid_loss(out["image_emb"], out["text_emb"], out["logit_scale"],
                                           getattr(model, SIGMOID_BIAS), ctx.node_ids,
                                           duplicates=self.cfg.sigmoid_duplicates, rows=ctx.rows)}
        from trainer.losses import clip_loss
        return {"clip": clip_loss(out["image_emb"], out["text_emb"], out["logit_scale"], ctx.node_ids,
                                  rows=ctx.rows)}

    def log_scalars(self, model: Any) -> dict[str, float]:
        scalars = super().log_scalars(model)
        if self.contrastive_loss == "sigmoid":
            scalars["logit_bias"] = getattr(model, SIGMOID_BIAS).item()
        return scalars
