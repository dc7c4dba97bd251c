"""`BankModel`: the model of a method that trains on an embedding bank (SAIL): no open_clip towers, only the
method's parts on top of the stored frozen-encoder embeddings.

It speaks ContrastiveModel's interface where the loop and the evaluation use it (`encode`, `head`, `forward`,
`encode_image` / `encode_text`, `graph_refine`, `clamp_scales_`, `log_scalars`, `method`), with stored feature
rows [B, dim] in place of images and token ids, so the loop's micro-step, --accum-freq and DDP paths run unchanged.
Its export is the parts' state dict (`alignment_state_dict.pt`): there is no CLIP to export for open_clip.
"""
from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor, nn

from trainer.config import TrainConfig
from trainer.methods import Method
from trainer.methods.base import attach_parts
from trainer.methods.registry import make_method


class BankModel(nn.Module):
    """The run's bank method and its parts (SAIL: `sail_image`, `sail_text`, `sail_log_scale`, `sail_logit_bias`)
    registered under the method's own names, as ContrastiveModel registers them."""

    def __init__(self, cfg: TrainConfig, image_dim: int, text_dim: int):
        super().__init__()
        self.method: Method = make_method(cfg, None)
        if not self.method.trains_on_bank:
            raise TypeError(f"method {cfg.method!r} trains open_clip towers; use trainer.model.build_model")
        self.method.bind_bank(image_dim, text_dim)
        self.embed_dim = int(self.method.embed_dim)
        self.image_dim, self.text_dim = image_dim, text_dim
        parts = self.method.build(self.embed_dim)
        self.method_parts: tuple[str, ...] = attach_parts(self, parts, cfg.method)

    @property
    def has_graph(self) -> bool:
        return bool(self.method.refines_embeddings)

    @property
    def no_decay_markers(self) -> tuple[str, ...]:
        return self.method.no_decay

    def encode_image(self, features: Tensor) -> Tensor:
        """Aligned, L2-normalised embeddings of stored image features [B, image_dim]."""
        return self.method.align(self, features, "image")

    def encode_text(self, features: Tensor) -> Tensor:
        """Aligned, L2-normalised embeddings of stored text features [B, text_dim]."""
        return self.method.align(self, features, "text")

    def encode(self, image_features: Tensor, text_features: Tensor) -> dict[str, Tensor]:
        """This rank's aligned embeddings (what ContrastiveModel.encode gives from images and tokens)."""
        return {"image_emb": self.encode_image(image_features), "text_emb": self.encode_text(text_features)}

    def head(self, local: dict[str, Tensor], edge_index: Optional[Tensor] = None,
             edge_weight: Optional[Tensor] = None,
             gather: Optional[Callable[[Tensor], Tensor]] = None) -> dict[str, Tensor]:
        """Gather the aligned embeddings to the global batch (DDP), then the method's forward."""
        image_emb, text_emb = local["image_emb"], local["text_emb"]
        if gather is not None:
            image_emb, text_emb = gather(image_emb), gather(text_emb)
        out = {"image_emb": image_emb, "text_emb": text_emb, "logit_scale": self.method.logit_scale(self)}
        out.update(self.method.forward(self, out, edge_index, edge_weight))
        return out

    def forward(self, image_features: Tensor, text_features: Tensor, edge_index: Optional[Tensor] = None,
                edge_weight: Optional[Tensor] = None,
                gather: Optional[Callable[[Tensor], Tensor]] = None) -> dict[str, Tensor]:
        return self.head(self.encode(image_features, text_features), edge_index, edge_weight, gather)

    def graph_refine(self, emb: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None,
                     modality: str = "image") -> Tensor:
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        if not self.has_graph:
            return emb
        return self.method.graph_refine(self, emb, edge_index, edge_weight, modality)

    def clamp_scales_(self) -> None:
        import torch
        with torch.no_grad():
            self.method.clamp_(self)

    def log_scalars(self) -> dict[str, float]:
        return self.method.log_scalars(self)
