"""The contract every training method fulfils; the loop, the model and the config speak only to it.

A method declares its own config fields (`Options`, flattened into TrainConfig), the parts it adds to the model
(`build`), what it needs from the data (`needs_graph`), what its forward adds to the encoder outputs (`forward`),
its named loss terms and their weights, and the hooks the loop calls after each optimizer step (`clamp_`) and at
each logged step (`log_scalars`).

Global and local under DDP (torchrun) and --accum-freq K: `out`'s image_emb / text_emb, what `forward` derives
from them, and BatchContext's node_ids / edge_index cover the global batch (all ranks' K micro-batches, rank-major,
micro-batches in order); every rank computes the same global terms. Per-sample outputs that are not embeddings
(`image_tokens`) and `ctx.tokens` stay local: this rank's K micro-batches only, never gathered, so a term over them
is this rank's mean and the loop's gradient average over ranks makes it the global mean. With --local-loss,
`ctx.rows` names this rank's rows of the global batch: a global term may score only those rows against every
column (clip_loss and structural_loss take `rows`; the per-rank terms are averaged) to save the global x global
logits; a term that ignores `rows` stays correct (computed in full on every rank, as without --local-loss).

Add-ons: a term any method can take (SuperCLIP's token classification, `--superclip-weight W`) is a `Method`
mixin registered with `registry.register_addon`: its hooks (`bind`, `build`, `forward`, `loss_terms`,
`term_weights`, `clamp_`, `log_scalars`) call `super()` and add their own part, and its classmethod `enabled(cfg)`
says whether a run uses it. `registry.make_method(cfg, clip)` (what the model calls) puts the enabled add-ons in
front of the run's method class, so every method gets the head and the term without being edited; the composed
class keeps the method's name and options. Add-on hooks must therefore always call `super()`.

Method modules import torch and the loss functions inside their functions, not at the top: trainer.config imports
every method for its `Options`, and `slip-train --help` should not pay for torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from pydantic import BaseModel

if TYPE_CHECKING:
    from torch import Tensor, nn

    from trainer.config import TrainConfig


class NoOptions(BaseModel):
    """Options of a method that adds no config field."""


@dataclass
class BatchContext:
    """What the loss terms may read besides the forward outputs; indices refer to the (gathered) global batch."""

    node_ids: Tensor  # [B] product ids
    edge_index: Optional[Tensor] = None  # [2, E] in-batch edges (PyG convention); None without a graph
    edge_weight: Optional[Tensor] = None  # [E]
    tokens: Optional[Tensor] = None  # [b, L] this rank's caption token ids (local micro-batch, not gathered)
    rows: Optional[slice] = None  # --local-loss under DDP: this rank's rows of the global batch; None = every row


class Method:
    """A training method: subclass, set `name`, `description` (and `Options`, `needs_graph`, ...), override what
    differs, and decorate with `trainer.methods.register`. One instance per model, holding the run's config."""

    name: ClassVar[str]
    description: ClassVar[str]  # one line, shown in `--method`'s help
    Options: ClassVar[type[BaseModel]] = NoOptions
    needs_graph: ClassVar[bool] = False  # the loop must give forward/loss_terms the in-batch edges every step
    refines_embeddings: ClassVar[bool] = False  # has a `graph_refine` (evaluation then also scores refined vectors)
    needs_image_tokens: ClassVar[bool] = False  # forward outputs also carry `image_tokens` (ViT patch tokens, local)
    no_decay: ClassVar[tuple[str, ...]] = ()  # parameter-name markers AdamW must not decay (scales, gains)
    trains_on_bank: ClassVar[bool] = False  # no towers: trains on a --bank's stored features (trainer/bank_model.py)

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        """Raise ValueError for a config this method cannot train (runs inside TrainConfig's validation)."""

    def bind(self, clip: nn.Module) -> None:
        """Read what `build` needs from the run's open_clip model (SuperCLIP: the ViT width and the vocabulary);
        called once by `make_method`, before `build`. Overrides call `super().bind(clip)`."""

    def build(self, embed_dim: int) -> dict[str, nn.Module | Tensor]:
        """Parts added to the model under these names: modules, parameters, buffers (plain tensors).

        The names become the model's attributes and state-dict prefixes, so they stay fixed once runs exist."""
        return {}

    def forward(self, model: Any, out: dict[str, Tensor], edge_index: Optional[Tensor],
                edge_weight: Optional[Tensor]) -> dict[str, Tensor]:
        """Extra forward outputs from the encoder outputs in `out` (image_emb, text_emb, logit_scale); runs inside
        the model's forward, so under autocast, DDP and torch.compile."""
        return {}

    def graph_refine(self, model: Any, emb: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor],
                     modality: str) -> Tensor:
        """Graph-refined embeddings (only for methods with `refines_embeddings`)."""
        raise NotImplementedError(f"method {self.name} does not refine embeddings")

    def loss_terms(self, model: Any, out: dict[str, Tensor], ctx: BatchContext) -> dict[str, Tensor]:
        """Named scalar loss terms, unweighted; the loop sums them with `term_weights` and logs `loss_<name>`."""
        raise NotImplementedError

    def term_weights(self, step: int = 0) -> dict[str, float]:
        """Weight of each term in the total at optimizer step `step` (0-based; schedules such as SLIP's lambda
        warm-up read it); a term not named here has weight 1."""
        return {}

    def clamp_(self, model: Any) -> None:
        """Keep the method's learned scales in range; called under no_grad after every optimizer step."""

    def log_scalars(self, model: Any) -> dict[str, float]:
        """Extra values for log.jsonl / TensorBoard at each logged step (temperatures, fusion weights)."""
        return {}


def attach_parts(model: nn.Module, parts: dict[str, nn.Module | Tensor], method: str) -> tuple[str, ...]:
    """Register a method's parts on `model` under their names (parameters, modules, buffers); returns the names.

    Both model kinds (open_clip towers + parts, bank-trained parts only) attach them alike, so the state-dict keys
    are the method's own in either."""
    from torch import nn
    for name, part in parts.items():
        if hasattr(model, name):
            raise TypeError(f"method {method!r} part {name!r} clashes with a model attribute")
        if isinstance(part, nn.Parameter):
            model.register_parameter(name, part)
        elif isinstance(part, nn.Module):
            model.add_module(name, part)
        else:
            model.register_buffer(name, part)
    return tuple(parts)
