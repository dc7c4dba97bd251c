"""`ContrastiveModel`: an open_clip CLIP plus the parts the run's training method adds (trainer/methods).

The encoders stay plain open_clip towers (so the exported state dict is a normal open_clip checkpoint); a method's
parts (SLIP: GAT refiners over the in-batch product graph) act on the L2-normalised embeddings.
"""
from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Callable, Optional

import open_clip
import torch
import torch.nn.functional as F
from open_clip.factory import get_model_config, parse_model_name
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import Tensor, nn

from trainer.config import TrainConfig, TrainSetupError
from trainer.methods import Method
from trainer.methods.base import attach_parts
from trainer.methods.registry import make_method

PACKAGE_MODEL_CONFIGS = Path(__file__).parent / "model_configs"
_REQUIRED_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


def resolve_model_name(model: str) -> str:
    """open_clip name for `model`: a registered name, `local-dir:DIR`, or a model-config JSON path (registered).

    Our own configs (e.g. slip-tiny) are registered on first use so open_clip's factory and tokenizer see them.
    """
    if str(PACKAGE_MODEL_CONFIGS) not in {str(p) for p in open_clip.factory._MODEL_CONFIG_PATHS}:
        open_clip.add_model_config(PACKAGE_MODEL_CONFIGS)
    schema, _ = parse_model_name(model)
    if schema is not None:
        return model
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise TrainSetupError(f"model config file not found: {path}")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TrainSetupError(f"model config {path} is not valid JSON: {exc}") from None
        missing = [k for k in _REQUIRED_CONFIG_KEYS if k not in cfg]
        if missing:
            raise TrainSetupError(f"model config {path} lacks {missing} (open_clip needs {_REQUIRED_CONFIG_KEYS})")
        open_clip.add_model_config(path)
        return path.stem
    if get_model_config(model) is None:
        close = difflib.get_close_matches(model, open_clip.list_models(), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise TrainSetupError(f"unknown model {model!r}: not an open_clip model name or a config JSON path{hint}")
    return model


def model_config_of(model_name: str) -> dict:
    """The open_clip architecture config behind a resolved model name."""
    schema, identifier = parse_model_name(model_name)
    if schema == "local-dir":
        spec = json.loads((Path(identifier) / "open_clip_config.json").read_text())
        return spec["model_cfg"]
    cfg = get_model_config(model_name)
    if cfg is None:
        raise TrainSetupError(f"no open_clip config for {model_name!r}")
    return cfg


class ContrastiveModel(nn.Module):
    """open_clip CLIP (`.clip`) + the parts the run's method adds, registered under the method's own names (SLIP:
    `gat_image`, `gat_text`, `struct_log_inv_temperature`), so their state-dict keys are the method's to keep."""

    def __init__(self, clip: nn.Module, embed_dim: int, cfg: TrainConfig):
        super().__init__()
        self.clip = clip
        self.embed_dim = embed_dim
        self.method: Method = make_method(cfg, clip)  # the run's method with its enabled add-ons
        parts = self.method.build(embed_dim)
        self.method_parts: tuple[str, ...] = attach_parts(self, parts, cfg.method)

    @property
    def has_graph(self) -> bool:
        """Whether the method refines embeddings over the graph (evaluation then scores both)."""
        return self.method.refines_embeddings

    @property
    def no_decay_markers(self) -> tuple[str, ...]:
        """Parameter-name markers of the method's parts that AdamW must not decay."""
        return self.method.no_decay

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's logit scale parameter (log space, as in open_clip)."""
        return self.clip.logit_scale

    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised image-encoder embeddings (no graph)."""
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """L2-normalised text-encoder embeddings (no graph)."""
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def graph_refine(self, emb: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None,
                     modality: str = "image") -> Tensor:
        """Refine normalised embeddings [N, D] over `edge_index` (PyG convention); identity for a method without
        graph refinement."""
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        if not self.has_graph:
            return emb
        return self.method.graph_refine(self, emb, edge_index, edge_weight, modality)

    def forward(self, images: Tensor, tokens: Tensor, edge_index: Optional[Tensor] = None,
                edge_weight: Optional[Tensor] = None,
                gather: Optional[Callable[[Tensor], Tensor]] = None) -> dict[str, Tensor]:
        """Encoder outputs (image_emb, text_emb, logit_scale) plus what the method's forward adds. `gather` (DDP)
        maps local embeddings to the global batch before the method's parts, so `edge_index` must index the
        global batch."""
        return self.head(self.encode(images, tokens), edge_index, edge_weight, gather)

    def head(self, local: dict[str, Tensor], edge_index: Optional[Tensor] = None,
             edge_weight: Optional[Tensor] = None,
             gather: Optional[Callable[[Tensor], Tensor]] = None) -> dict[str, Tensor]:
        """The part of the forward after the encoders: gather the embeddings to the global batch (DDP), then the
        method's forward. Split out so --accum-freq can run it on cached encoder outputs. Per-sample outputs other
        than the two embeddings (image_tokens) stay local."""
        local = dict(local)
        image_emb, text_emb = local.pop("image_emb"), local.pop("text_emb")
        if gather is not None:
            image_emb, text_emb = gather(image_emb), gather(text_emb)
        out = {"image_emb": image_emb, "text_emb": text_emb, "logit_scale": self.clip.logit_scale.exp(), **local}
        out.update(self.method.forward(self, out, edge_index, edge_weight))
        return out

    def encode(self, images: Tensor, tokens: Tensor) -> dict[str, Tensor]:
        """This rank's encoder outputs: normalised image_emb and text_emb, plus `image_tokens` [b, n, width] (the
        ViT's patch tokens before the projection) for a method with `needs_image_tokens`.

        open_clip's ViT returns the patch tokens after ln_post and without the class token for its 'tok' and 'avg'
        pooling; with pool_type 'none' they include it (dropped here). An attention-pooled tower returns pooler
        queries, not patch tokens: refused."""
        if not self.method.needs_image_tokens:
            return {"image_emb": self.encode_image(images), "text_emb": self.encode_text(tokens)}
        visual = self.clip.visual
        if not hasattr(visual, "output_tokens") or getattr(visual, "attn_pool", None) is not None:
            raise TypeError(f"method {self.method.name} needs a ViT image tower without attention pooling "
                            "(patch tokens)")
        visual.output_tokens = True
        try:
            pooled, tokens_out = visual(images)
        finally:
            visual.output_tokens = False
        patches = math.prod(visual.grid_size)
        if tokens_out.shape[1] == patches + 1:  # pool_type 'none': the class token is still in front
            tokens_out = tokens_out[:, 1:]
        if tokens_out.shape[1] != patches:
            raise TypeError(f"method {self.method.name}: the ViT gave {tokens_out.shape[1]} tokens for a "
                            f"{visual.grid_size} patch grid (registers or a pooler are not supported)")
        return {"image_emb": F.normalize(pooled, dim=-1), "text_emb": self.encode_text(tokens),
                "image_tokens": tokens_out}

    @torch.no_grad()
    def clamp_scales_(self) -> None:
        """After each optimizer step: CLIP's logit scale <= 100 (as open_clip), then the method's own clamps."""
        self.clip.logit_scale.clamp_(0, math.log(100))
        self.method.clamp_(self)

    def log_scalars(self) -> dict[str, float]:
        """Scalars logged each logged step: CLIP's logit scale and the method's own."""
        return {"logit_scale": self.clip.logit_scale.exp().item(), **self.method.log_scalars(self)}


def create_clip(model_name: str, pretrained: Optional[str], device: torch.device | str) -> nn.Module:
    """open_clip model for a resolved name; `pretrained` is a tag (downloaded by open_clip) or a local file."""
    try:
        return open_clip.create_model(model_name, pretrained=pretrained, device=device)
    except RuntimeError as exc:
        if pretrained is not None:
            raise TrainSetupError(f"could not load pretrained {pretrained!r} for {model_name}: {exc}") from None
        raise


def build_model(cfg: TrainConfig, device: torch.device | str = "cpu", load_pretrained: bool = True,
                model_name: Optional[str] = None) -> ContrastiveModel:
    """ContrastiveModel for `cfg` (the CLIP part created first, so its init is identical for every method).

    `model_name` overrides cfg.model (load_run passes the run's own `local-dir:` config).
    """
    model_name = resolve_model_name(model_name or cfg.model)
    clip = create_clip(model_name, cfg.pretrained if load_pretrained else None, device)
    if cfg.lock_image:
        clip.lock_image_tower(unlocked_groups=cfg.lock_image_unlocked_groups,
                              freeze_bn_stats=cfg.lock_image_freeze_bn_stats)
    if cfg.lock_text:
        clip.lock_text_tower(unlocked_layers=cfg.lock_text_unlocked_layers,
                             freeze_layer_norm=cfg.lock_text_freeze_layer_norm)
    if cfg.grad_checkpointing:
        clip.set_grad_checkpointing(True)
    embed_dim = int(model_config_of(model_name)["embed_dim"])
    return ContrastiveModel(clip, embed_dim, cfg).to(device)


def image_transforms(model: ContrastiveModel) -> tuple[Callable, Callable]:
    """(train, val) open_clip image transforms matching the model's preprocess config."""
    pp_cfg = PreprocessCfg(**model.clip.visual.preprocess_cfg)
    return image_transform_v2(pp_cfg, is_train=True), image_transform_v2(pp_cfg, is_train=False)


def tokenizer_for(model_name: str) -> Callable[[list[str]], Tensor]:
    """open_clip tokenizer honouring the config's context length."""
    return open_clip.get_tokenizer(resolve_model_name(model_name))
