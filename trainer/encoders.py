"""Frozen encoders for `slip-train encode`: one small adapter per library, each turning a batch into float32 rows.

An encoder is named by a spec `KIND:NAME_OR_PATH` (the kind may be left out where the name says it):

    open_clip:MODEL      an open_clip model (a registered name such as ViT-B-32 or slip-tiny, or a model-config
                         JSON path), weights from `--*-pretrained` (a tag or a local file; none = seeded random init)
    run:RUN_DIR          the towers of a slip-train run (its latest checkpoint): an image tower trained by us
    timm:MODEL           a timm image model (`num_classes=0`: pooled features), weights from `--image-pretrained`
                         (a local file, or a tag timm downloads); image only
    st:NAME_OR_PATH      a sentence-transformers model by hub name or local folder; text only

A bare spec: a folder with modules.json is sentence-transformers, one with open_clip_config.json a run, a .json
file an open_clip config; a name open_clip knows is open_clip, else timm (image) or sentence-transformers (text).
Every model is put in eval mode with gradients off; `dim` is measured by encoding one probe input, so no
library's config key has to be trusted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch
from PIL import Image
from torch import Tensor, nn

from trainer.config import TrainSetupError

Modality = Literal["image", "text"]
KINDS = ("open_clip", "run", "timm", "st")
_PROBE_SIZE = 32


@dataclass
class ImageEncoder:
    """PIL image -> preprocess -> Tensor[3, H, W]; batch Tensor[B, 3, H, W] -> encode -> float32 [B, dim]."""

    spec: str
    preprocess: Callable[[Image.Image], Tensor]
    forward: Callable[[Tensor], Tensor]
    device: torch.device
    dim: int = 0

    @torch.inference_mode()
    def encode(self, images: list[Image.Image]) -> Tensor:
        batch = torch.stack([self.preprocess(img) for img in images]).to(self.device)
        return self.forward(batch).float().cpu()


@dataclass
class TextEncoder:
    """list[str] -> encode -> float32 [B, dim]."""

    spec: str
    forward: Callable[[list[str]], Tensor]
    dim: int = 0

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> Tensor:
        return self.forward(texts).float().cpu()


def split_spec(spec: str, modality: Modality) -> tuple[str, str]:
    """(kind, name) of an encoder spec; see the module docstring for how a bare spec is read."""
    head, sep, rest = spec.partition(":")
    if sep and head in KINDS:
        if not rest:
            raise TrainSetupError(f"--{modality}-encoder {spec!r}: nothing after {head}:")
        return head, rest
    path = Path(spec)
    if path.is_dir():
        if (path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file():
            return "st", spec
        if (path / "open_clip_config.json").is_file():
            return "run", spec
        raise TrainSetupError(f"--{modality}-encoder {spec!r}: a folder that is neither a sentence-transformers "
                              f"model (modules.json) nor a slip-train run (open_clip_config.json)")
    if spec.endswith(".json") or _open_clip_knows(spec):
        return "open_clip", spec
    return ("timm" if modality == "image" else "st"), spec


def _open_clip_knows(name: str) -> bool:
    from open_clip.factory import get_model_config, parse_model_name

    from trainer.model import resolve_model_name

    try:
        resolve_model_name(name)  # registers our model_configs (slip-tiny) first
    except TrainSetupError:
        return parse_model_name(name)[0] is not None
    return parse_model_name(name)[0] is not None or get_model_config(name) is not None


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


class _Cache:
    """One model per (kind, name, pretrained): `--image-encoder X --text-encoder X` loads X once."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str, Optional[str]], Any] = {}

    def get(self, key: tuple[str, str, Optional[str]], build: Callable[[], Any]) -> Any:
        if key not in self.models:
            self.models[key] = build()
        return self.models[key]


def build_encoders(image_spec: str, image_pretrained: Optional[str], text_spec: str, text_pretrained: Optional[str],
                   device: str, seed: int) -> tuple[ImageEncoder, TextEncoder]:
    """The image and the text encoder, frozen, on `device`; each random init is seeded with `seed`."""
    dev = _device(device)
    cache = _Cache()
    image = _image_encoder(image_spec, image_pretrained, dev, seed, cache)
    text = _text_encoder(text_spec, text_pretrained, dev, seed, cache)
    image.dim = int(image.encode([Image.new("RGB", (_PROBE_SIZE, _PROBE_SIZE), (128, 128, 128))]).shape[1])
    text.dim = int(text.encode(["probe"]).shape[1])
    return image, text


def build_text_encoder(spec: str, pretrained: Optional[str], device: str, seed: int) -> TextEncoder:
    """The text encoder alone, as build_encoders makes it (same seeded init): slip-eval encodes a bank-trained
    run's zero-shot prompts with the bank's own text encoder."""
    text = _text_encoder(spec, pretrained, _device(device), seed, _Cache())
    text.dim = int(text.encode(["probe"]).shape[1])
    return text


def _device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise TrainSetupError(f"--device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainSetupError(f"--device {device}: CUDA is not available here (use --device cpu)")
    return dev


def _image_encoder(spec: str, pretrained: Optional[str], dev: torch.device, seed: int, cache: _Cache) -> ImageEncoder:
    kind, name = split_spec(spec, "image")
    if kind == "st":
        raise TrainSetupError(f"--image-encoder {spec!r}: sentence-transformers models encode text only")
    if kind == "timm":
        return _timm_encoder(spec, name, pretrained, dev, seed)
    clip, preprocess, _ = cache.get((kind, name, pretrained), lambda: _clip_parts(kind, name, pretrained, dev, seed))
    return ImageEncoder(spec=spec, preprocess=preprocess, forward=clip.encode_image, device=dev)


def _text_encoder(spec: str, pretrained: Optional[str], dev: torch.device, seed: int, cache: _Cache) -> TextEncoder:
    kind, name = split_spec(spec, "text")
    if kind == "timm":
        raise TrainSetupError(f"--text-encoder {spec!r}: timm models encode images only")
    if kind == "st":
        return _sentence_encoder(spec, name, pretrained, dev)
    clip, _, tokenizer = cache.get((kind, name, pretrained), lambda: _clip_parts(kind, name, pretrained, dev, seed))
    return TextEncoder(spec=spec, forward=lambda texts: clip.encode_text(tokenizer(texts).to(dev)))


def _clip_parts(kind: str, name: str, pretrained: Optional[str], dev: torch.device,
                seed: int) -> tuple[nn.Module, Callable, Callable]:
    """(open_clip model, val preprocess, tokenizer) of an open_clip model or a slip-train run."""
    if kind == "run":
        from trainer.run_io import load_run

        if pretrained is not None:
            raise TrainSetupError(f"run:{name}: a run brings its own weights; drop --*-pretrained")
        try:
            run = load_run(Path(name), device=str(dev))
        except FileNotFoundError as exc:
            raise TrainSetupError(f"run:{name}: {exc}") from None
        return _frozen(run.model.clip), run.preprocess, run.tokenizer
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from trainer.model import create_clip, resolve_model_name, tokenizer_for

    model_name = resolve_model_name(name)
    torch.manual_seed(seed)
    clip = create_clip(model_name, pretrained, dev)
    preprocess = image_transform_v2(PreprocessCfg(**clip.visual.preprocess_cfg), is_train=False)
    return _frozen(clip), preprocess, tokenizer_for(model_name)


def _timm_encoder(spec: str, name: str, pretrained: Optional[str], dev: torch.device, seed: int) -> ImageEncoder:
    try:
        import timm
        from timm.data import create_transform, resolve_data_config
    except ImportError:
        raise TrainSetupError(f"--image-encoder {spec!r} needs timm: pip install 'slip-kit[banks]'") from None
    if not timm.is_model(name):
        raise TrainSetupError(f"--image-encoder {spec!r}: timm has no model {name!r} (timm.list_models() lists them)")
    kwargs: dict[str, Any] = {"num_classes": 0}
    if pretrained is not None:
        if Path(pretrained).is_file():
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(pretrained)})
        else:
            name, kwargs["pretrained"] = f"{name}.{pretrained}", True
    torch.manual_seed(seed)
    try:
        model = timm.create_model(name, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a missing tag, an offline hub, a bad file: one clear refusal
        raise TrainSetupError(f"--image-encoder {spec!r} (pretrained {pretrained!r}): timm could not create it "
                              f"({type(exc).__name__}: {exc})") from None
    model = _frozen(model).to(dev)
    preprocess = create_transform(**resolve_data_config({}, model=model))
    return ImageEncoder(spec=spec, preprocess=preprocess, forward=model, device=dev)


def _sentence_encoder(spec: str, name: str, pretrained: Optional[str], dev: torch.device) -> TextEncoder:
    if pretrained is not None:
        raise TrainSetupError(f"--text-encoder {spec!r}: a sentence-transformers model brings its own weights; "
                              f"drop --text-pretrained")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise TrainSetupError(f"--text-encoder {spec!r} needs sentence-transformers: pip install "
                              f"'slip-kit[banks]'") from None
    try:
        model = SentenceTransformer(name, device=str(dev))
    except Exception as exc:  # noqa: BLE001 - not on the hub, offline, a broken folder: one clear refusal
        raise TrainSetupError(f"--text-encoder {spec!r}: sentence-transformers could not load it "
                              f"({type(exc).__name__}: {exc}); give a local model folder when offline") from None
    _frozen(model)

    def forward(texts: list[str]) -> Tensor:
        out = model.encode(texts, batch_size=max(1, len(texts)), convert_to_tensor=True, show_progress_bar=False,
                           normalize_embeddings=False)
        return out if out.ndim == 2 else out.reshape(len(texts), -1)

    return TextEncoder(spec=spec, forward=forward)


def l2_normalise(rows: Tensor) -> Tensor:
    """Rows scaled to unit length (a zero row stays zero), the form cosine-similarity methods read."""
    norms = rows.norm(dim=1, keepdim=True)
    return rows / torch.where(norms > 0, norms, torch.ones_like(norms))

