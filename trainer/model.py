"""`SLIPModel`: an open_clip CLIP plus per-modality GAT refiners over the in-batch product graph.

The encoders stay plain open_clip towers (so the exported state dict is a normal open_clip checkpoint); the GATs
only refine the L2-normalised embeddings: h = normalize(e + alpha * GAT(e)).
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
from torch_geometric.nn import GATConv, GATv2Conv

from trainer.config import TrainConfig, TrainSetupError

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


class GraphRefiner(nn.Module):
    """GAT stack with residual fusion: h = normalize(e + alpha * GAT(e)).

    Self loops are added inside the convolutions, so a sample without in-batch neighbours is still refined (from
    itself only) and refined embeddings are comparable across samples with and without neighbours.
    """

    def __init__(self, dim: int, cfg: TrainConfig):
        super().__init__()
        hidden = cfg.gat_hidden or dim
        if dim % cfg.gat_heads or hidden % cfg.gat_heads:
            raise TrainSetupError(f"embedding dim {dim} and gat_hidden {hidden} must be divisible by gat_heads "
                                  f"{cfg.gat_heads}")
        conv_cls = GATv2Conv if cfg.gat_type == "gatv2" else GATConv
        widths = [dim] + [hidden] * (cfg.gat_layers - 1) + [dim]
        self.use_edge_weight = cfg.gat_edge_weight
        self.convs = nn.ModuleList(
            conv_cls(w_in, w_out // cfg.gat_heads, heads=cfg.gat_heads, concat=True, dropout=cfg.gat_attn_dropout,
                     add_self_loops=True, edge_dim=1 if cfg.gat_edge_weight else None)
            for w_in, w_out in zip(widths[:-1], widths[1:]))
        self.dropout = nn.Dropout(cfg.gat_dropout)
        alpha = torch.tensor(float(cfg.fusion_alpha_init))
        if cfg.fusion_alpha_learnable:
            self.alpha = nn.Parameter(alpha)
        else:
            self.register_buffer("alpha", alpha)

    def forward(self, emb: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        edge_attr = None
        if self.use_edge_weight:
            if edge_weight is None:
                edge_weight = torch.ones(edge_index.shape[1], device=emb.device)
            edge_attr = edge_weight.to(emb.dtype).view(-1, 1)
        h = emb
        for i, conv in enumerate(self.convs):
            if i > 0:
                h = self.dropout(F.elu(h))
            h = conv(h, edge_index, edge_attr=edge_attr)
        return F.normalize(emb + self.alpha * h, dim=-1)


class SLIPModel(nn.Module):
    """open_clip CLIP (`.clip`) + `gat_image` / `gat_text` refiners (None for --method clip)."""

    def __init__(self, clip: nn.Module, embed_dim: int, cfg: TrainConfig):
        super().__init__()
        self.clip = clip
        self.method = cfg.method
        self.embed_dim = embed_dim
        self.struct_temperature_min = cfg.struct_temperature_min
        if cfg.method == "slip":
            self.gat_image: Optional[GraphRefiner] = GraphRefiner(embed_dim, cfg)
            self.gat_text: Optional[GraphRefiner] = GraphRefiner(embed_dim, cfg)
            log_inv_t = torch.tensor(math.log(1.0 / cfg.struct_temperature_init))
            if cfg.struct_temperature_learnable:
                self.struct_log_inv_temperature = nn.Parameter(log_inv_t)
            else:
                self.register_buffer("struct_log_inv_temperature", log_inv_t)
        else:
            self.gat_image = None
            self.gat_text = None

    @property
    def has_graph(self) -> bool:
        return self.gat_image is not None

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's logit scale parameter (log space, as in open_clip)."""
        return self.clip.logit_scale

    def struct_temperature(self) -> Optional[Tensor]:
        if not self.has_graph:
            return None
        return torch.exp(-self.struct_log_inv_temperature)

    def encode_image(self, images: Tensor) -> Tensor:
        """L2-normalised image-encoder embeddings (no graph)."""
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """L2-normalised text-encoder embeddings (no graph)."""
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def graph_refine(self, emb: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None,
                     modality: str = "image") -> Tensor:
        """Refine normalised embeddings [N, D] over `edge_index` (PyG convention); identity for method clip.

        Runs in fp32 outside autocast: the GAT is small and its scatter-softmax is the part that suffers in bf16.
        """
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        if not self.has_graph:
            return emb
        refiner = self.gat_image if modality == "image" else self.gat_text
        with torch.autocast(emb.device.type, enabled=False):
            weight = edge_weight.float() if edge_weight is not None else None
            return refiner(emb.float(), edge_index, weight)

    def forward(self, images: Tensor, tokens: Tensor, edge_index: Optional[Tensor] = None,
                edge_weight: Optional[Tensor] = None,
                gather: Optional[Callable[[Tensor], Tensor]] = None) -> dict[str, Optional[Tensor]]:
        """Everything the losses need. `gather` (DDP) maps local embeddings to the global batch before the GATs,
        so `edge_index` must index the global batch."""
        image_emb = self.encode_image(images)
        text_emb = self.encode_text(tokens)
        if gather is not None:
            image_emb, text_emb = gather(image_emb), gather(text_emb)
        out: dict[str, Optional[Tensor]] = {
            "image_emb": image_emb, "text_emb": text_emb, "logit_scale": self.clip.logit_scale.exp(),
            "image_refined": None, "text_refined": None, "struct_temperature": self.struct_temperature()}
        if self.has_graph:
            if edge_index is None:
                raise ValueError("method slip needs the batch edge_index")
            out["image_refined"] = self.graph_refine(image_emb, edge_index, edge_weight, "image")
            out["text_refined"] = self.graph_refine(text_emb, edge_index, edge_weight, "text")
        return out

    @torch.no_grad()
    def clamp_scales_(self) -> None:
        """Keep CLIP's logit scale <= 100 (as open_clip) and the structural temperature >= its floor."""
        self.clip.logit_scale.clamp_(0, math.log(100))
        if self.has_graph:
            self.struct_log_inv_temperature.clamp_(max=math.log(1.0 / self.struct_temperature_min))


def create_clip(model_name: str, pretrained: Optional[str], device: torch.device | str) -> nn.Module:
    """open_clip model for a resolved name; `pretrained` is a tag (downloaded by open_clip) or a local file."""
    try:
        return open_clip.create_model(model_name, pretrained=pretrained, device=device)
    except RuntimeError as exc:
        if pretrained is not None:
            raise TrainSetupError(f"could not load pretrained {pretrained!r} for {model_name}: {exc}") from None
        raise


def build_model(cfg: TrainConfig, device: torch.device | str = "cpu", load_pretrained: bool = True,
                model_name: Optional[str] = None) -> SLIPModel:
    """SLIPModel for `cfg` (the CLIP part created first, so its init is identical for slip and clip runs).

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
    return SLIPModel(clip, embed_dim, cfg).to(device)


def image_transforms(model: SLIPModel) -> tuple[Callable, Callable]:
    """(train, val) open_clip image transforms matching the model's preprocess config."""
    pp_cfg = PreprocessCfg(**model.clip.visual.preprocess_cfg)
    return image_transform_v2(pp_cfg, is_train=True), image_transform_v2(pp_cfg, is_train=False)


def tokenizer_for(model_name: str) -> Callable[[list[str]], Tensor]:
    """open_clip tokenizer honouring the config's context length."""
    return open_clip.get_tokenizer(resolve_model_name(model_name))
