"""`clip-ping`: CLIP + CLIP-PING's neighbour guidance from a frozen embedding bank; `clip-ping-graph` adds the
product graph's neighbours as further positives (a combination no paper has).

CLIP-PING (2024) precomputes features of every image and caption with frozen unimodal encoders (here: a bank from
`slip-train encode`, `--bank`), and gives each training pair extra contrastive targets: its nearest neighbour in its
own modality (NN) and across modalities (XNN). What the paper does not disclose is an option below; the choices:

- Neighbours: exact top-1 cosine over the bank (`trainer.neighbours`), never the sample itself, ties to the lower
  bank row. Candidates are the nodes of `clip_ping_candidates` splits (train only by default: val/test products
  never leak into training as targets); queries are the nodes of the training split. Computed once per run, in
  memory (not cached on disk: 50k nodes take well under a minute, bench/README.md), at the first loss, so building
  the model for evaluation does not pay for it; deterministic, so a resumed run looks up the same targets.
- XNN (`clip_ping_xnn`): 'paired' (default) = the other modality of the own-modality neighbour (image i -> its
  nearest image j -> text j; text i -> nearest text j with an image -> image j), which any two unrelated frozen
  encoders allow, as the paper's unimodal ones are; 'direct' = the nearest item of the other modality's bank
  (image i -> nearest text), meaningful only when the bank's two encoders share a space (one open_clip model).
- Targets (`clip_ping_targets`): by default the neighbour's *frozen* bank features; the student's L2-normalised
  embedding is mapped into the bank's space by a head per (modality, target space) (`clip_ping_projection`,
  outside `model.clip`: not in the open_clip export). 'student' instead takes the neighbour's own student
  embedding, which is rarely in the batch: the latest one seen, from a memory of every node's image and text
  embeddings (model buffers, so checkpoints carry it and a resume is exact; written after each batch's loss).
- Each term is InfoNCE of the projected student rows against the batch's targets: row i's positive is its own
  neighbour's feature, the other rows' neighbour features are the negatives (a column holding the same neighbour
  node as row i's is left out of its softmax, as clip_loss masks same-product copies), one learned temperature.
  `nn` and `xnn` are each the mean of the image and text rows' terms.
- Structure (`clip_ping_graph_weight`, the term `graph`): the NN heads' projections against the batch's own frozen
  features of the same modality, positives = the row's in-batch graph neighbours (ctx.edge_index), the row itself
  left out of the softmax, rows without a neighbour left out (a batch without edges gives 0).

Under DDP the lookup is per node id of ctx.node_ids (the global batch), so every rank builds the same targets for
the gathered embeddings and the terms are global like CLIP's (and the student memory, written from the gathered
embeddings, is the same on every rank); with --local-loss only this rank's rows are scored (the mean over ranks is
the full term when every rank keeps as many rows, close to it otherwise). The student memory is a model buffer,
which DDP broadcasts from rank 0 before each forward: 2 x nodes x embed-dim floats a step, so for a large bank under
DDP prefer the frozen targets.
Evaluating a run builds the model again, which reads the bank's shape (the heads' widths): keep the bank.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional

from pydantic import Field

from trainer.methods.base import BatchContext
from trainer.methods.clip import CLIP, ContrastiveLossOptions
from trainer.methods.registry import register

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor, nn

    from trainer.config import TrainConfig

SPLITS = ("train", "val", "test")  # trainer.release's (not imported here: it pulls pyarrow into --help)
HEADS, LOG_INV_T = "clip_ping_heads", "clip_ping_log_inv_temperature"
MEMORY, SEEN = "clip_ping_memory", "clip_ping_seen"  # --clip-ping-targets student: [2, N, D] and [N]
# head name -> (student modality, bank space it maps into)
HEAD_SPACES = {"image_nn": ("image", "image"), "text_nn": ("text", "text"),
               "image_xnn": ("image", "text"), "text_xnn": ("text", "image")}


class ClipPingOptions(ContrastiveLossOptions):
    """CLIP-PING's fields (flattened into TrainConfig); the bank itself is the shared --bank."""

    clip_ping_nn_weight: float = Field(
        0.5, ge=0, description="Weight of the NN term (own-modality neighbours); the paper's weights are not "
        "public. 0.5 + 0.5 makes the two neighbour terms together weigh as much as the CLIP term, so the pair "
        "objective is not swamped by guidance from encoders that may be weaker than the student becomes.")
    clip_ping_xnn_weight: float = Field(
        0.5, ge=0, description="Weight of the XNN term (cross-modal neighbours); 0.5 for the reason above.")
    clip_ping_graph_weight: Optional[float] = Field(
        None, ge=0, description="Weight of the structure term (in-batch co-purchase neighbours as positives in "
        "the bank space); needs the release's edges. None = the method's default: 0 for clip-ping, 1 for "
        "clip-ping-graph.")
    clip_ping_xnn: Literal["paired", "direct"] = Field(
        "paired", description="XNN: 'paired' = the other modality of the own-modality nearest neighbour (works "
        "with two unrelated frozen encoders, as in CLIP-PING); 'direct' = nearest item of the other modality's "
        "bank (needs a bank whose two encoders share one space, e.g. both towers of one open_clip model).")
    clip_ping_candidates: list[str] = Field(
        ["train"], min_length=1, description="Splits whose nodes may be neighbours. Train only: val/test products "
        "never become training targets (their features would leak the evaluation set into training).")
    clip_ping_targets: Literal["frozen", "student"] = Field(
        "frozen", description="What a neighbour contributes as target: its frozen bank features (the student "
        "embedding mapped into the bank's space by a head; CLIP-PING's guidance from the frozen encoders) or its "
        "student embedding as last seen in a batch (a memory of every node's latest image and text embedding, "
        "kept in checkpoints; no head; a neighbour not seen yet gives no target, so it starts at 0).")
    clip_ping_projection: Literal["linear", "mlp"] = Field(
        "linear", description="Head mapping the student embedding into each bank space: 'linear' (the lightest; "
        "the guidance then has to shape the encoder itself) or 'mlp' (Linear-GELU-Linear, hidden = embed dim).")
    clip_ping_temperature_init: float = Field(
        0.07, gt=0, description="Initial temperature of the neighbour terms; 0.07 is CLIP's own initial one.")
    clip_ping_temperature_learnable: bool = Field(True, description="Learn that temperature (as log 1/T).")
    clip_ping_temperature_min: float = Field(
        0.01, gt=0, description="Lower clamp of the temperature (= CLIP's logit-scale cap of 100).")


def graph_weight(cfg: Any) -> float:
    """The run's structure-term weight: --clip-ping-graph-weight, or the method's default."""
    if cfg.clip_ping_graph_weight is not None:
        return float(cfg.clip_ping_graph_weight)
    from trainer.methods.registry import get_method
    return float(getattr(get_method(cfg.method), "graph_default_weight", 0.0))


@register
class ClipPing(CLIP):
    name = "clip-ping"
    description = "CLIP + nearest-neighbour (NN, XNN) targets from a frozen embedding bank (CLIP-PING)"
    Options = ClipPingOptions
    graph_default_weight: ClassVar[float] = 0.0
    no_decay = (*CLIP.no_decay, LOG_INV_T)

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if getattr(cfg, "bank", None) is None:
            raise ValueError(f"--method {cfg.method} needs --bank BANK (an embedding bank of the release, written "
                             "by `slip-train encode`)")
        if cfg.release is None:
            raise ValueError(f"--method {cfg.method} needs --release (the bank is checked against its nodes)")
        unknown = sorted(set(cfg.clip_ping_candidates) - set(SPLITS))
        if unknown:
            raise ValueError(f"--clip-ping-candidates {unknown}: not a split; give some of {', '.join(SPLITS)}")
        if cfg.clip_ping_nn_weight + cfg.clip_ping_xnn_weight + graph_weight(cfg) == 0:
            raise ValueError(f"--method {cfg.method} with every neighbour weight 0 is CLIP: use --method clip")

    # ---- model parts ---------------------------------------------------------------------------------------------
    def bind(self, clip: nn.Module) -> None:
        from trainer.bank import load_bank
        from trainer.config import TrainSetupError
        super().bind(clip)
        cfg = self.cfg
        self.bank = load_bank(cfg.bank_path(), cfg.release)  # BankError (exit 2) when it does not fit the release
        self.dims = {"image": self.bank.image_dim, "text": self.bank.text_dim}
        if cfg.clip_ping_xnn == "direct" and cfg.clip_ping_xnn_weight > 0 and len(set(self.dims.values())) > 1:
            raise TrainSetupError(f"--clip-ping-xnn direct compares images with texts, but bank {self.bank.path} "
                                  f"has {self.dims['image']}-d image and {self.dims['text']}-d text features (two "
                                  "encoders, two spaces): use --clip-ping-xnn paired")
        graph = cfg.graph_path()
        if graph_weight(cfg) > 0 and not self.needs_graph and (graph is None or not graph.is_file()):
            raise TrainSetupError(f"--clip-ping-graph-weight needs the product graph: {graph} is missing (give "
                                  "--graph FILE, or use --method clip-ping-graph)")
        self.tables: Optional[dict[str, np.ndarray]] = None

    def active_terms(self) -> dict[str, float]:
        """The neighbour terms this run computes, with their weights (a 0-weight term is not computed at all:
        its heads would get no gradient, which DDP refuses)."""
        weights = {"nn": self.cfg.clip_ping_nn_weight, "xnn": self.cfg.clip_ping_xnn_weight,
                   "graph": graph_weight(self.cfg)}
        return {name: w for name, w in weights.items() if w > 0}

    def head_names(self) -> list[str]:
        terms, frozen = self.active_terms(), self.cfg.clip_ping_targets == "frozen"
        kinds = {"nn"} if ("nn" in terms and frozen) or "graph" in terms else set()
        kinds |= {"xnn"} if "xnn" in terms and frozen else set()
        return [name for name in HEAD_SPACES if name.split("_")[1] in kinds]

    def build(self, embed_dim: int) -> dict[str, nn.Module | Tensor]:
        import torch
        from torch import nn
        parts = super().build(embed_dim)

        def head(out_dim: int) -> nn.Module:
            if self.cfg.clip_ping_projection == "linear":
                return nn.Linear(embed_dim, out_dim)
            return nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, out_dim))

        parts[HEADS] = nn.ModuleDict({name: head(self.dims[HEAD_SPACES[name][1]]) for name in self.head_names()})
        log_inv_t = torch.tensor(math.log(1.0 / self.cfg.clip_ping_temperature_init))
        parts[LOG_INV_T] = nn.Parameter(log_inv_t) if self.cfg.clip_ping_temperature_learnable else log_inv_t
        if self.cfg.clip_ping_targets == "student":
            parts[MEMORY] = torch.zeros(2, len(self.bank.node_id), embed_dim)  # [image, text]
            parts[SEEN] = torch.zeros(len(self.bank.node_id), dtype=torch.bool)
        return parts

    def forward(self, model: Any, out: dict[str, Tensor], edge_index: Optional[Tensor],
                edge_weight: Optional[Tensor]) -> dict[str, Tensor]:
        extra = super().forward(model, out, edge_index, edge_weight)
        for name, head in getattr(model, HEADS).items():
            extra[f"clip_ping_{name}"] = head(out[f"{HEAD_SPACES[name][0]}_emb"])
        return extra

    # ---- neighbour tables ----------------------------------------------------------------------------------------
    def neighbour_tables(self) -> dict[str, np.ndarray]:
        """Bank row of each bank row's target, per head (-1: none); computed on first use, then kept."""
        if self.tables is None:
            self.tables = compute_tables(self.bank, self.cfg)
        return self.tables

    def loss_terms(self, model: Any, out: dict[str, Tensor], ctx: BatchContext) -> dict[str, Tensor]:
        import numpy as np
        import torch
        terms = super().loss_terms(model, out, ctx)
        active = self.active_terms()
        tables = self.neighbour_tables()
        rows = self.bank.rows(ctx.node_ids.detach().cpu().numpy())
        temperature = self.temperature(model)
        device = out["image_emb"].device
        student = self.cfg.clip_ping_targets == "student"

        def features(space: str, bank_rows: np.ndarray) -> Tensor:
            array = self.bank.image if space == "image" else self.bank.text
            return torch.from_numpy(np.asarray(array[np.maximum(bank_rows, 0)], dtype=np.float32)).to(device)

        for kind in ("nn", "xnn"):
            if kind not in active:
                continue
            parts = []
            for modality in ("image", "text"):
                name = f"{modality}_{kind}"
                space = HEAD_SPACES[name][1]
                target_rows = tables[name][rows]
                ids = torch.as_tensor(target_rows, device=device)
                if student:  # the neighbour's latest student embedding; none before it was first seen
                    ids = torch.where(getattr(model, SEEN)[ids.clamp(min=0)], ids, torch.full_like(ids, -1))
                    targets = getattr(model, MEMORY)[0 if space == "image" else 1][ids.clamp(min=0)]
                    pred = out[f"{modality}_emb"]
                else:
                    targets, pred = features(space, target_rows), out[f"clip_ping_{name}"]
                parts.append(neighbour_loss(pred, targets, ids, temperature, ctx.rows))
            terms[kind] = 0.5 * (parts[0] + parts[1])
        if student:
            self.remember_(model, out, rows)
        if "graph" in active:
            if ctx.edge_index is None:
                raise ValueError(f"method {self.name}'s graph term needs the batch edge_index")
            has_image = torch.as_tensor(np.asarray(self.bank.image_mask[rows]), device=device)
            parts = [graph_neighbour_loss(out[f"clip_ping_{m}_nn"], features(m, rows), ctx.edge_index, temperature,
                                          valid=has_image if m == "image" else None, rows=ctx.rows)
                     for m in ("image", "text")]
            terms["graph"] = 0.5 * (parts[0] + parts[1])
        return terms

    @staticmethod
    def remember_(model: Any, out: dict[str, Tensor], rows: np.ndarray) -> None:
        """Write the batch's embeddings into the student memory, after its loss (a batch never targets itself).
        A product twice in the batch keeps its first row (a deterministic write, so a resume replays it)."""
        import numpy as np
        import torch
        unique, first = np.unique(rows, return_index=True)
        with torch.no_grad():
            at = torch.as_tensor(unique, device=out["image_emb"].device)
            pick = torch.as_tensor(first, device=at.device)
            memory = getattr(model, MEMORY)
            memory[0, at] = out["image_emb"].detach()[pick].float()
            memory[1, at] = out["text_emb"].detach()[pick].float()
            getattr(model, SEEN)[at] = True

    def term_weights(self, step: int = 0) -> dict[str, float]:
        return {**super().term_weights(step), **self.active_terms()}

    @staticmethod
    def temperature(model: Any) -> Tensor:
        return (-getattr(model, LOG_INV_T)).exp()

    def clamp_(self, model: Any) -> None:
        super().clamp_(model)
        getattr(model, LOG_INV_T).clamp_(max=math.log(1.0 / self.cfg.clip_ping_temperature_min))

    def log_scalars(self, model: Any) -> dict[str, float]:
        return {**super().log_scalars(model), "clip_ping_temperature": self.temperature(model).item()}


@register
class ClipPingGraph(ClipPing):
    name = "clip-ping-graph"
    description = "CLIP-PING + in-batch co-purchase neighbours as extra positives beside the NN/XNN targets"
    needs_graph = True
    graph_default_weight: ClassVar[float] = 1.0

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        super().check(cfg)
        if cfg.clip_ping_graph_weight == 0:
            raise ValueError("--method clip-ping-graph with --clip-ping-graph-weight 0 is clip-ping: use "
                             "--method clip-ping")


# ---- neighbours and losses ---------------------------------------------------------------------------------------
def compute_tables(bank: Any, cfg: Any) -> dict[str, np.ndarray]:
    """Per head, the bank row of each bank row's neighbour target (-1 where none): queries are the nodes of the
    training split, candidates the nodes of `clip_ping_candidates` (images only where the node has one)."""
    import numpy as np

    from trainer.neighbours import NO_NEIGHBOUR, top1_neighbours
    from trainer.release import Release
    nodes = Release(cfg.release).nodes()
    split = np.empty(len(bank.node_id), dtype=object)
    split[bank.rows(nodes["node_id"])] = nodes["split"]
    query = split == cfg.split
    candidate = np.isin(split, list(cfg.clip_ping_candidates))
    has_image = np.asarray(bank.image_mask, dtype=bool)
    feats = {"image": np.asarray(bank.image), "text": np.asarray(bank.text)}

    def table(query_space: str, query_mask: np.ndarray, cand_space: str, cand_mask: np.ndarray) -> np.ndarray:
        out = np.full(len(bank.node_id), NO_NEIGHBOUR, dtype=np.int64)
        q, c = np.flatnonzero(query_mask), np.flatnonzero(cand_mask)
        found = top1_neighbours(feats[query_space][q], feats[cand_space][c], bank.node_id[q], bank.node_id[c])
        out[q] = np.where(found >= 0, c[np.maximum(found, 0)], NO_NEIGHBOUR)
        return out

    tables = {"image_nn": table("image", query & has_image, "image", candidate & has_image),
              "text_nn": table("text", query, "text", candidate)}
    if cfg.clip_ping_xnn == "paired":
        tables["image_xnn"] = tables["image_nn"]  # the text of the nearest image
        # the image of the nearest text that has an image (the same table when every candidate has one)
        everyone = has_image[candidate].all()
        tables["text_xnn"] = tables["text_nn"] if everyone else table("text", query, "text", candidate & has_image)
    else:
        tables["image_xnn"] = table("image", query & has_image, "text", candidate)
        tables["text_xnn"] = table("text", query, "image", candidate & has_image)
    return tables


def _multi_positive_nll(logits: Tensor, positives: Tensor, selected: Tensor) -> Tensor:
    """Mean over the selected rows of -sum_p w_p log softmax(logits)_p / sum_p w_p."""
    import torch
    log_prob = torch.log_softmax(logits[selected], dim=1)
    pos = positives[selected]
    log_prob = torch.where(pos > 0, log_prob, torch.zeros_like(log_prob))  # no 0 * -inf from masked columns
    return (-(pos * log_prob).sum(1) / pos.sum(1)).mean()


def _mine(n: int, rows: Optional[slice], device: Any) -> Tensor:
    import torch
    mine = torch.zeros(n, dtype=torch.bool, device=device)
    mine[rows if rows is not None else slice(None)] = True
    return mine


def neighbour_loss(pred: Tensor, targets: Tensor, target_ids: Tensor, temperature: Tensor,
                   rows: Optional[slice] = None) -> Tensor:
    """InfoNCE of projected student rows `pred` [B, d] against the batch's neighbour features `targets` [B, d]:
    row i's positive is column i; a column j != i with the same target id as row i is left out of row i's softmax;
    rows and columns whose target id is -1 (no neighbour) are left out. Cosine / temperature; exactly 0 (still
    differentiable) when no row is left. `rows` (--local-loss): only those rows are scored."""
    import torch
    import torch.nn.functional as F
    pred, targets = F.normalize(pred.float(), dim=-1), F.normalize(targets.float(), dim=-1)
    valid = target_ids >= 0
    eye = torch.eye(len(pred), dtype=torch.bool, device=pred.device)
    same = (target_ids.view(-1, 1) == target_ids.view(1, -1)) & ~eye
    logits = (pred @ targets.T / temperature.float()).masked_fill(same | ~valid.view(1, -1), float("-inf"))
    selected = valid & _mine(len(pred), rows, pred.device)
    if not selected.any():
        return pred.sum() * 0.0 / temperature
    return _multi_positive_nll(logits, eye.float(), selected)


def graph_neighbour_loss(pred: Tensor, own: Tensor, edge_index: Tensor, temperature: Tensor,
                         valid: Optional[Tensor] = None, rows: Optional[slice] = None) -> Tensor:
    """Multi-positive InfoNCE of `pred` [B, d] against the batch's own frozen features `own` [B, d]: row i's
    positives are the columns of its in-batch graph neighbours (edge_index, PyG convention, weight 1), its own
    column is left out of its softmax, columns with `valid` False (no feature) are left out, rows without a
    positive are left out; exactly 0 (still differentiable) when no row is left."""
    import torch
    import torch.nn.functional as F
    pred, own = F.normalize(pred.float(), dim=-1), F.normalize(own.float(), dim=-1)
    n = len(pred)
    valid = torch.ones(n, dtype=torch.bool, device=pred.device) if valid is None else valid.bool()
    eye = torch.eye(n, dtype=torch.bool, device=pred.device)
    positives = torch.zeros(n, n, device=pred.device)
    if edge_index.numel():
        positives[edge_index[1], edge_index[0]] = 1.0
    positives = positives.masked_fill(eye | ~valid.view(1, -1), 0.0)
    logits = (pred @ own.T / temperature.float()).masked_fill(eye | ~valid.view(1, -1), float("-inf"))
    selected = (positives > 0).any(1) & _mine(n, rows, pred.device)
    if not selected.any():
        return pred.sum() * 0.0 / temperature
    return _multi_positive_nll(logits, positives, selected)
