"""`superclip`: CLIP + SuperCLIP's token classification, and the same term as an add-on for any method.

The term (SuperCLIP, NeurIPS 2025): `LayerNorm -> Linear(width -> vocab)` on the mean of the ViT's patch tokens
(class token excluded, before the projection); the target is the caption's token ids as a multi-hot vector weighted
by an online IDF, L1-normalised; the loss is softmax cross-entropy against it. The IDF comes from running counts
(`superclip_docs` captions seen, `superclip_df` captions holding each id), buffers of the model: the checkpoint
carries them and a resumed run continues with exactly the same weights. Under DDP each rank's batch counts are
all-reduce summed, so every rank holds the same counts (and DDP's buffer broadcast changes nothing).

`SuperCLIPTerm` is the add-on (registry.register_addon): `--superclip-weight W > 0` gives any method the head and
the term `superclip` with weight W; `--method superclip` is CLIP with it on (weight 1, the paper's 1:1). The head
is a part of the method, outside `model.clip`, so it is not in the exported open_clip state dict.

What the paper leaves open is an option below: the IDF smoothing, the ignored ids, whether the counts take the
batch before or after its loss.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional

from pydantic import Field

from trainer.methods.base import BatchContext, Method
from trainer.methods.clip import CLIP, ContrastiveLossOptions
from trainer.methods.registry import register, register_addon

if TYPE_CHECKING:
    from torch import Tensor, nn

    from trainer.config import TrainConfig

HEAD, DOCS, DOC_FREQ = "superclip_head", "superclip_docs", "superclip_df"
# open_clip's SimpleTokenizer (every model config here): padding 0, <start_of_text> 49406, <end_of_text> 49407
OPEN_CLIP_SPECIAL_IDS = [0, 49406, 49407]


class SuperCLIPOptions(ContrastiveLossOptions):
    """SuperCLIP's fields (flattened into TrainConfig); usable with any method through --superclip-weight."""

    superclip_weight: Optional[float] = Field(
        None, ge=0, description="Weight of SuperCLIP's token-classification term; 0 = off. None = the method's "
        "default: 1 for superclip and slip-superclip (the paper's 1:1 with the contrastive loss), 0 for the rest.")
    superclip_ignore_ids: list[int] = Field(
        OPEN_CLIP_SPECIAL_IDS, description="Token ids that are never targets: open_clip's padding, start and end "
        "of text (the IDF would weigh them ~0 anyway, as they are in every caption; excluding them also keeps "
        "the first batches, where the IDF is still rough, off them). Set them for a model with another tokenizer.")
    superclip_idf_smoothing: Optional[float] = Field(
        None, gt=0, description="s in the IDF weight log((n + s) / (df + s)); None = 1 / the step's global "
        "batch size, SuperCLIP's choice (a token seen once in N captions then weighs about log N).")
    superclip_count_update: Literal["before", "after"] = Field(
        "before", description="Add each batch's captions to the running counts before computing its loss (every "
        "target id then has df >= 1 and finite weight; the first batch already has an IDF) or after (the batch "
        "is weighted by the counts of earlier batches only; the first batch's term is then 0).")


def superclip_weight(cfg: Any) -> float:
    """The run's SuperCLIP weight: --superclip-weight, or the method's default (1 for methods built on it)."""
    if cfg.superclip_weight is not None:
        return float(cfg.superclip_weight)
    from trainer.methods.registry import get_method
    return float(getattr(get_method(cfg.method), "superclip_default_weight", 0.0))


class SuperCLIPTerm(Method):
    """The add-on: the vocabulary head on the mean ViT patch token, the document-frequency buffers and the term."""

    needs_image_tokens = True

    @classmethod
    def enabled(cls, cfg: Any) -> bool:
        return superclip_weight(cfg) > 0

    def bind(self, clip: nn.Module) -> None:
        from trainer.config import TrainSetupError
        super().bind(clip)
        transformer = getattr(clip.visual, "transformer", None)
        if not hasattr(clip.visual, "output_tokens") or not hasattr(transformer, "width"):
            raise TrainSetupError(f"--superclip-weight needs a ViT image tower (patch tokens); "
                                  f"{type(clip.visual).__name__} has none")
        self.token_width = int(transformer.width)
        vocab = getattr(clip, "vocab_size", None)
        if not isinstance(vocab, int) or vocab < 1:
            raise TrainSetupError(f"--superclip-weight needs the text vocabulary size; {type(clip).__name__} "
                                  "does not say it (open_clip's CLIP and CustomTextCLIP do)")
        self.vocab_size = vocab
        bad = [i for i in self.cfg.superclip_ignore_ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TrainSetupError(f"--superclip-ignore-ids {bad}: outside this model's vocabulary; give ids in "
                                  f"0..{self.vocab_size - 1}")

    def build(self, embed_dim: int) -> dict[str, nn.Module | Tensor]:
        import torch
        from torch import nn
        parts = super().build(embed_dim)  # the method's own parts first: their init does not change
        parts[HEAD] = nn.Sequential(nn.LayerNorm(self.token_width), nn.Linear(self.token_width, self.vocab_size))
        parts[DOCS] = torch.zeros((), dtype=torch.long)
        parts[DOC_FREQ] = torch.zeros(self.vocab_size, dtype=torch.long)
        return parts

    def forward(self, model: Any, out: dict[str, Tensor], edge_index: Optional[Tensor],
                edge_weight: Optional[Tensor]) -> dict[str, Tensor]:
        extra = super().forward(model, out, edge_index, edge_weight)
        extra["superclip_logits"] = getattr(model, HEAD)(out["image_tokens"].mean(dim=1))
        return extra

    def loss_terms(self, model: Any, out: dict[str, Tensor], ctx: BatchContext) -> dict[str, Tensor]:
        from trainer.losses import idf_weights, multi_hot, token_classification_loss
        if ctx.tokens is None:
            raise ValueError("the superclip term needs the batch's caption tokens (BatchContext.tokens)")
        terms = super().loss_terms(model, out, ctx)
        hot = multi_hot(ctx.tokens, self.vocab_size, self.cfg.superclip_ignore_ids)
        before = self.cfg.superclip_count_update == "before"
        global_batch = self.count_(model, hot) if before else None
        smoothing = self.cfg.superclip_idf_smoothing
        if smoothing is None:
            smoothing = 1.0 / (global_batch if global_batch is not None else _global_rows(hot))
        weights = idf_weights(getattr(model, DOC_FREQ), getattr(model, DOCS), smoothing)
        terms["superclip"] = token_classification_loss(out["superclip_logits"], hot, weights)
        if not before:
            self.count_(model, hot)
        return terms

    @staticmethod
    def count_(model: Any, hot: Tensor) -> int:
        """Add a batch's captions to the running counts (summed over DDP ranks); returns the global batch size."""
        import torch
        import torch.distributed as dist
        with torch.no_grad():
            batch = torch.cat([hot.sum(0, dtype=torch.long), torch.tensor([hot.shape[0]], device=hot.device)])
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(batch)
            getattr(model, DOC_FREQ).add_(batch[:-1])
            getattr(model, DOCS).add_(batch[-1])
        return int(batch[-1].item())

    def term_weights(self, step: int = 0) -> dict[str, float]:
        return {**super().term_weights(step), "superclip": superclip_weight(self.cfg)}

    def log_scalars(self, model: Any) -> dict[str, float]:
        return {**super().log_scalars(model), "superclip_docs": float(getattr(model, DOCS).item())}


def _global_rows(hot: Tensor) -> int:
    """Rows of this step's batch over every rank (each rank has the same local batch size)."""
    import torch.distributed as dist
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return hot.shape[0] * world


register_addon(SuperCLIPTerm)


@register
class SuperCLIP(CLIP):
    name = "superclip"
    description = "CLIP + SuperCLIP's IDF-weighted token classification on the mean ViT patch token"
    Options = SuperCLIPOptions
    superclip_default_weight: ClassVar[float] = 1.0

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if cfg.superclip_weight == 0:
            raise ValueError("--method superclip with --superclip-weight 0 is CLIP: use --method clip")
