"""`clip`: CLIP's symmetric InfoNCE on the encoder embeddings, the baseline every other method is compared with."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer.methods.base import BatchContext, Method
from trainer.methods.registry import register

if TYPE_CHECKING:
    from torch import Tensor


@register
class CLIP(Method):
    name = "clip"
    description = "CLIP InfoNCE on the encoder embeddings (the baseline)"

    def loss_terms(self, model: Any, out: dict[str, Tensor], ctx: BatchContext) -> dict[str, Tensor]:
        from trainer.losses import clip_loss
        return {"clip": clip_loss(out["image_emb"], out["text_emb"], out["logit_scale"], ctx.node_ids)}
