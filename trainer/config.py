"""`TrainConfig`: every training choice in one validated place.

Each choice is a field with a default and the reason for that default, so a run's `config.json` states exactly
what was trained. The fields every method shares live in `BaseTrainConfig`; each registered method's own fields
(its `Options`, e.g. SLIP's gat_* / fusion_* / lambda_struct / struct_*) are flattened into TrainConfig by
`config_class()`, so flags, config files and old `RUN/config.json` keep one flat namespace.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from trainer.methods import get_method, method_names, registered_methods

DEFAULT_METHOD = "slip"


class TrainSetupError(ValueError):
    """A problem with the user's input (config, paths, model name) reported without a traceback."""


_VAL = {"panel": "Validation"}
REPORT_BACKENDS = ("tensorboard", "wandb", "none")
# what --val-every scores (trainer/validation.py) and whether higher is better; best_metric is one of these
VAL_METRICS: dict[str, bool] = {
    "mean_R@1": True,
    **{f"{way}_{name}": not name.endswith("_rank") for way in ("i2t", "t2i")
       for name in ("R@1", "R@5", "R@10", "mrr", "mean_rank", "median_rank")},
    **{f"zeroshot_{name}": True for name in ("acc1", "acc5", "mean_per_class_recall", "macro_f1")},
}


class BaseTrainConfig(BaseModel):
    """The fields every method shares; `TrainConfig` adds the registered methods' own."""

    # allow_inf_nan=False: every float field, the methods' options included (they are flattened into this model
    # and inherit its config), refuses inf and nan: `--lr inf` would otherwise train to NaN and exit 0
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

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
        "it (how much: bench/README.md). Shard order is shuffled each epoch anyway (0 = no sample shuffle).")
    shard_shuffle: bool = Field(True, description="Shuffle the shard order each epoch (seeded).")
    augment: bool = Field(
        True, description="Use open_clip's train transform (RandomResizedCrop scale 0.9-1) instead of the val one.")
    workers: int = Field(1, ge=0, description="DataLoader worker processes (0 = load in the main process).")
    bank: Optional[str] = Field(
        None, description="Embedding bank (`slip-train encode`) for the methods that read frozen-encoder features "
        "(sail, clip-ping): a bank folder, or NAME of one attached to --release (REL/embeddings/NAME). "
        "None = no bank.")

    # ---- model --------------------------------------------------------------------------------------------------
    method: str = Field(DEFAULT_METHOD, description="Training method (one of trainer/methods' registry).")
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

    # ---- optimisation -------------------------------------------------------------------------------------------
    batch_size: int = Field(128, ge=1, description="Samples per micro-batch per rank.")
    accum: int = Field(1, ge=1, description="Micro-batches per optimizer step (negatives stay per micro-batch).")
    accum_freq: int = Field(
        1, ge=1, description="Micro-batches per optimizer step whose encoder features are cached (open_clip's "
        "--accum-freq): the loss, its negatives and the batch graph cover all of them, each micro-batch is then "
        "re-encoded with gradients; the gradient equals one batch of accum_freq x batch-size. Not with --accum.")
    local_loss: bool = Field(
        False, description="Under DDP, each rank's loss covers its own rows against the gathered global columns "
        "(open_clip's local_loss): same gradient, logits of size local x global instead of global x global.")
    dist_timeout: float = Field(
        600.0, gt=0, description="Seconds a torchrun rank waits in a collective for the others before failing "
        "(a hung rank then ends the run instead of blocking it).")
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
    report_to: list[str] = Field(
        ["tensorboard"], description="Where the logged scalars go besides log.jsonl (always written): tensorboard "
        "(RUN/tb), wandb (the `wandb` extra; WANDB_MODE=offline works without an account), or none; several as "
        "--report-to tensorboard,wandb.")
    wandb_project: str = Field("slip-kit", description="W&B project of --report-to wandb (the run is RUN's name).")

    # ---- validation during training -----------------------------------------------------------------------------
    val_every: Optional[int] = Field(
        None, ge=1, description="Score --val-split every N steps (and at the last step): retrieval both ways, mean "
        "rank, zero-shot acc1, as val_* keys in log.jsonl and val/* in TensorBoard; keeps checkpoints/best.pt by "
        "--best-metric. None = no validation (it costs a val pass each time).", json_schema_extra=_VAL)
    val_split: str = Field("val", description="Release split scored by --val-every (never trained on).",
                           json_schema_extra=_VAL)
    val_max_samples: int = Field(
        512, ge=1, description="Samples of --val-split scored each time (the first N in shard order, the same each "
        "time, so values compare across steps): bounds the cost of a val pass to encoding N samples.",
        json_schema_extra=_VAL)
    best_metric: str = Field(
        "mean_R@1", description="Validation metric that picks checkpoints/best.pt: mean_R@1 (mean of image->text "
        "and text->image R@1: neither direction alone), or one of trainer.config.VAL_METRICS (ranks: lower is "
        "better).", json_schema_extra=_VAL)

    @field_validator("report_to", mode="before")
    @classmethod
    def _split_report_to(cls, value: Any) -> Any:
        """`tensorboard,wandb` (one flag value) and repeated flags alike; each name checked, `none` alone."""
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            return value
        names = [n.strip() for item in value for n in str(item).split(",") if n.strip()]
        bad = [n for n in names if n not in REPORT_BACKENDS]
        if bad:
            raise ValueError(f"unknown backend {bad[0]!r}; choose from {', '.join(REPORT_BACKENDS)}")
        if "none" in names and len(names) > 1:
            raise ValueError("'none' cannot be combined with other backends")
        return [] if names == ["none"] else list(dict.fromkeys(names))

    @field_validator("best_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in VAL_METRICS:
            raise ValueError(f"{value!r} is not a validation metric; choose one of {', '.join(VAL_METRICS)}")
        return value

    @model_validator(mode="after")
    def _check_data_source_and_method(self) -> "BaseTrainConfig":
        if self.release is None and self.shards is None:
            raise ValueError("give --release REL or --shards PATTERN")
        if self.release is not None and self.shards is not None:
            raise ValueError("give either --release or --shards, not both")
        if self.accum > 1 and self.accum_freq > 1:
            raise ValueError("give --accum (negatives per micro-batch) or --accum-freq (cached features, negatives "
                             "over all micro-batches), not both")
        method = get_method(self.method)
        if method.needs_graph and self.shards is not None and self.graph is None:
            raise ValueError(f"--method {self.method} with --shards needs --graph edges.parquet")
        if self.val_every is not None and self.release is None:
            raise ValueError("--val-every needs --release (it scores the release's --val-split shards)")
        if self.val_every is not None and method.trains_on_bank:
            raise ValueError(f"--val-every is not supported for --method {self.method} (it trains on a bank, not "
                             "on shards): drop --val-every and score the run with slip-eval RUN --split val")
        method.check(self)
        return self

    def bank_path(self) -> Optional[Path]:
        """The bank folder --bank names: the path itself when it is a folder, else REL/embeddings/NAME (None without
        --bank). Whether it holds a bank that fits the release is trainer.bank.load_bank's check."""
        if self.bank is None:
            return None
        path = Path(self.bank)
        if not path.is_dir() and self.release is not None and (Path(self.release) / "embeddings" / path).is_dir():
            return Path(self.release) / "embeddings" / path
        return path

    def graph_path(self) -> Optional[Path]:
        """The edges file this run uses (None when there is none)."""
        if self.graph is not None:
            return Path(self.graph)
        if self.release is not None:
            return Path(self.release) / "edges.parquet"
        return None


_COMPOSED: dict[tuple[type, ...], type[BaseTrainConfig]] = {}


def config_class() -> type[BaseTrainConfig]:
    """BaseTrainConfig + the options of every registered method, flat; `method` limited to the registered names.

    A field name two methods declare must be declared identically (e.g. a combined method reusing SLIP's options
    class). Cached per registry content; `TrainConfig` is the class for the built-in methods.
    """
    methods = tuple(registered_methods())
    if methods not in _COMPOSED:
        _COMPOSED[methods] = _compose(methods)
    return _COMPOSED[methods]


def _compose(methods: tuple[type, ...]) -> type[BaseTrainConfig]:
    fields: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for method in methods:
        for name, info in method.Options.model_fields.items():
            if name in BaseTrainConfig.model_fields:
                raise TypeError(f"method {method.name!r} option {name!r} clashes with a common TrainConfig field")
            if name in fields and repr(fields[name][1]) != repr(info):
                raise TypeError(f"option {name!r} is declared differently by methods {owner[name]!r} and "
                                f"{method.name!r}")
            fields.setdefault(name, (info.annotation, info))
            owner.setdefault(name, method.name)
    names = tuple(method_names())
    choices = "; ".join(f"{m.name} = {m.description}" for m in methods)
    method_field = (Literal[names], Field(DEFAULT_METHOD, description=f"Training method: {choices}."))
    return create_model("TrainConfig", __base__=BaseTrainConfig, __module__=__name__,
                        __doc__="Resolved training configuration; saved as `RUN/config.json`.",
                        method=method_field, **fields)


TrainConfig = config_class()


def build_config(**values: Any) -> BaseTrainConfig:
    """The validated config for `values` (a config file's mapping with the flags given on top); errors name the bad
    key. Reading the file is the CLI's job (`slipio.inputs.read_mapping`)."""
    try:
        return config_class()(**values)
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise TrainSetupError(f"invalid training config: {problems}") from None


def _describe(err: Any) -> str:
    """`key: message` of one validation error; a non-finite float also says what it got and what to give."""
    where = ".".join(str(p) for p in err["loc"]) or "config"
    if err["type"] == "finite_number":
        return f"{where}: must be a finite number, got {err['input']!r} (give a finite value)"
    return f"{where}: {err['msg']}"
