"""`siglip`: CLIP trained with SigLIP's sigmoid pairwise loss (open_clip's `SigLipLoss`) instead of InfoNCE.

The same as `--method clip --loss sigmoid` (one code path: CLIP's contrastive term with the sigmoid loss), under
its own name so runs and comparison tables say what they are. t is the CLIP's logit_scale, initialised to 10 and
clamped to [1, 100] as open_clip clamps it; b (`siglip_logit_bias`) starts at -10. Both learn.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.methods.clip import CLIP
from trainer.methods.registry import register

if TYPE_CHECKING:
    from trainer.config import TrainConfig


@register
class SigLIP(CLIP):
    name = "siglip"
    description = "CLIP towers with SigLIP's sigmoid pairwise loss (learned scale t and bias b)"
    default_loss = "sigmoid"

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if cfg.loss == "softmax":
            raise ValueError("--method siglip is the sigmoid loss; for InfoNCE use --method clip")
