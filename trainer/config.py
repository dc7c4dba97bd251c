"""`TrainConfig`: every training choice in one validated place.

The SLIP paper leaves many details undisclosed (GAT variant and size, how the GAT output is fused with the
encoder output, the structural loss weight and temperature, ...). Each of them is a field here with a default and
the reason for that default, so a run's `config.json` states exactly what was trained.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class TrainSetupError(ValueError):
    """A problem with the user's input (config, paths, model name) reported without a traceback."""


class TrainConfig(BaseModel):
    """Resolved training configuration; saved as `RUN/config.json`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # ---- data ---------------------------------------------------------------------------------------------------
    release: Optional[str] = Field(None, description="Release folder; reads shards/{split}-*.tar and edges.parquet.")
    shards: Optional[str] = Field(
        None, description="Shard glob or brace pattern ('train-{000000..000031}.tar') used instead of --release.")
    graph: Optional[str] = Field(
        None, description="edges.parquet used with --shards (with --release: REL/edges.parquet).")
    split: str = Field("train", description="Split whose shards are trained on with --release.")
    edge_kinds: Optional[list[str]] = Field(
        None, description="Edge kinds to use (e.g. copurchase also_buy); default None = every kind in the file.")
    max_neighbors: int = Field(
        32, ge=1, description="Max in-batch neighbours each sample picks (highest weight first) before the batch "
        "graph is symmetrised. 32 bounds GAT cost on hubs while leaving typical co-purchase degrees untouched.")
    shuffle_buffer: int = Field(
        256, ge=0, description="Samples held in each worker's shuffle buffer. Shards are written in graph-aware "
        "order (clusters of neighbours, clusters interleaved across categories), and a large sample buffer undoes "
        "it: on a 200k-node graph, batch 256 keeps 95% of samples with an in-batch neighbour with no buffer, 51% "
        "with 256 and 21% with 1000 (bench/bench_ordering.py). Shard order is shuffled each epoch anyway "
        "(0 = no sample shuffle).")
    shard_shuffle: bool = Field(True, description="Shuffle the shard order each epoch (seeded).")
    augment: bool = Field(
        True, description="Use open_clip's train transform (RandomResizedCrop scale 0.9-1) instead of the val one.")
    workers: int = Field(1, ge=0, description="DataLoader worker processes (0 = load in the main process).")

    # ---- model --------------------------------------------------------------------------------------------------
    method: Literal["slip", "clip"] = Field(
        "slip", description="slip = CLIP + GATs + structural loss; clip = same loop without GATs/structural loss.")
    model: str = Field("slip-tiny", description="open_clip model name or path of an open_clip model-config JSON.")
    pretrained: Optional[str] = Field(
        None, description="open_clip pretrained tag or local weights file; default None = random init.")
    lock_image: bool = Field(False, description="Freeze the image tower (open_clip lock_image_tower).")
    lock_image_unlocked_groups: int = Field(0, ge=0, description="Last image-tower layer groups left trainable.")
    lock_image_freeze_bn_stats: bool = Field(False, description="Freeze BatchNorm stats in a locked image tower.")
    lock_text: bool = Field(False, description="Freeze the text tower (open_clip lock_text_tower).")
    lock_text_unlocked_layers: int = Field(0, ge=0, description="Last text-tower layers left trainable.")
    lock_text_freeze_layer_norm: bool = Field(
        True, description="Freeze LayerNorms in a locked text tower (open_clip's built-in text tower requires True).")

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

    # ---- losses -------------------------------------------------------------------------------------------------
    lambda_struct: float = Field(
        1.0, ge=0, description="Total = CLIP + lambda * structural; 1.0 weighs both objectives equally.")
    struct_temperature_init: float = Field(
        0.07, gt=0, description="Initial structural temperature; 0.07 is CLIP's own initial temperature.")
    struct_temperature_learnable: bool = Field(True, description="Learn the structural temperature (as log 1/T).")
    struct_temperature_min: float = Field(
        0.01, gt=0, description="Lower clamp of the structural temperature (= CLIP's logit-scale cap of 100).")
    struct_intra_modal: bool = Field(
        False, description="Add intra-modal terms (image-image, text-text) to the always-on cross-modal terms.")
    struct_edge_weight: bool = Field(
        False, description="Weigh neighbour positives by edge weight (self pair weight 1); off for the same "
        "reason as gat_edge_weight.")
    struct_no_neighbor: Literal["self", "exclude"] = Field(
        "self", description="Rows with no in-batch neighbour: 'self' keeps them with the self pair as the only "
        "positive (every sample contributes, the term degrades to InfoNCE); 'exclude' drops them (a batch with "
        "no edges then gives structural loss 0).")

    # ---- optimisation -------------------------------------------------------------------------------------------
    batch_size: int = Field(128, ge=1, description="Samples per micro-batch per rank.")
    accum: int = Field(1, ge=1, description="Micro-batches per optimizer step (negatives stay per micro-batch).")
    steps: int = Field(1000, ge=1, description="Optimizer steps to train.")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate (open_clip's default for from-scratch runs).")
    wd: float = Field(0.2, ge=0, description="AdamW weight decay (CLIP paper: 0.2), not applied to biases, "
                      "norms, gains, embeddings, logit scales, fusion alphas.")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.98, ge=0, lt=1, description="AdamW beta2 (CLIP: 0.98 for stability at large batch).")
    eps: float = Field(1e-6, gt=0, description="AdamW eps (CLIP: 1e-6).")
    warmup: int = Field(100, ge=0, description="Linear warmup steps.")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="LR schedule after warmup.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine floor as a fraction of lr.")
    grad_clip: Optional[float] = Field(1.0, gt=0, description="Clip the global grad norm to this (None = off).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, fp32 on CPU (CPU bf16 is slower on most CPUs).")
    grad_checkpointing: bool = Field(False, description="open_clip set_grad_checkpointing (memory for compute).")
    compile: bool = Field(False, description="torch.compile the model's forward.")
    device: str = Field("auto", description="auto = cuda if available else cpu; or cpu, cuda, cuda:1, ...")
    seed: int = Field(0, description="Seeds init, data order and augmentation; identical for slip and clip.")

    # ---- logging / checkpoints ----------------------------------------------------------------------------------
    out: str = Field("runs/slip", description="Run folder.")
    log_every: int = Field(1, ge=1, description="Write a log.jsonl / TensorBoard line every N steps.")
    ckpt_every: int = Field(1000, ge=1, description="Write a step checkpoint every N steps (and at the end).")
    keep_last: int = Field(3, ge=1, description="Keep the last K step checkpoints.")
    resume: Optional[str] = Field(None, description="'latest' (in --out) or a checkpoint path to continue from.")

    @model_validator(mode="after")
    def _check_data_source(self) -> "TrainConfig":
        if self.release is None and self.shards is None:
            raise ValueError("give --release REL or --shards PATTERN")
        if self.release is not None and self.shards is not None:
            raise ValueError("give either --release or --shards, not both")
        if self.method == "slip" and self.shards is not None and self.graph is None:
            raise ValueError("--method slip with --shards needs --graph edges.parquet")
        if self.gat_hidden is not None and self.gat_hidden % self.gat_heads:
            raise ValueError(f"gat_hidden {self.gat_hidden} is not divisible by gat_heads {self.gat_heads}")
        return self

    def graph_path(self) -> Optional[Path]:
        """The edges file this run uses (None when there is none)."""
        if self.graph is not None:
            return Path(self.graph)
        if self.release is not None:
            return Path(self.release) / "edges.parquet"
        return None


def build_config(file: Optional[Path] = None, **overrides: Any) -> TrainConfig:
    """Config from an optional YAML/JSON file with `overrides` (the flags actually given) on top; errors name the
    bad key."""
    values: dict[str, Any] = {}
    if file is not None:
        if not Path(file).is_file():
            raise TrainSetupError(f"config file not found: {file}")
        text = Path(file).read_text()
        loaded = json.loads(text) if str(file).endswith(".json") else yaml.safe_load(text)
        if not isinstance(loaded, dict):
            raise TrainSetupError(f"config file {file} must hold a mapping of field: value")
        values.update(loaded)
    values.update(overrides)
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors())
        raise TrainSetupError(f"invalid training config: {problems}") from None
