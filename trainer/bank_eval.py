"""slip-eval's reading side for a bank-trained run (SAIL): the embeddings of the evaluated products come from the
run's bank through its trained alignment layers, not from shards through towers; every metric after that is
evaluate.py's own.

- Evaluated set: the split's products with an image embedding in the bank, in node-id order (the first
  --max-samples); a split product without one is counted as `skipped_no_image_embedding`.
- "Same caption" (retrieval's interchangeable products) = an identical stored text embedding: the bank's texts
  are what was encoded, and identical texts give identical rows, whatever `--text-field` the bank used.
- Zero-shot prompts need the bank's text encoder: it is rebuilt from the manifest (spec, weights, seed) when that
  loads here (offline: a local sentence-transformers folder, local or random-init open_clip weights); otherwise
  zero-shot and few-shot are skipped and the result says why (`zeroshot_skipped`).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from trainer import metrics

CHUNK = 4096  # bank rows aligned at once


@torch.inference_mode()
def _aligned(run: Any, rows: np.ndarray, modality: str, device: str) -> Tensor:
    stored = run.bank.image if modality == "image" else run.bank.text
    encode = run.model.encode_image if modality == "image" else run.model.encode_text
    chunks = [encode(torch.from_numpy(np.asarray(stored[rows[i:i + CHUNK]], np.float32)).to(device)).float().cpu()
              for i in range(0, len(rows), CHUNK)]
    return torch.cat(chunks) if chunks else torch.empty(0, run.model.embed_dim)


def bank_nodes(run: Any, nodes: dict[str, np.ndarray], n_classes: int, device: str, skipped: Counter,
               split: Optional[str] = None, wanted: Optional[set[int]] = None,
               skip_ids: frozenset[int] = frozenset(), limit: Optional[int] = None
               ) -> tuple[np.ndarray, np.ndarray, list[str], Tensor, Tensor]:
    """(node_ids, labels, caption keys, image_emb, text_emb) of the products of `split` (or of `wanted`, any split)
    with an image embedding, ids in `skip_ids` passed over; the bank-run counterpart of encode_shards."""
    bank = run.bank
    ids = nodes["node_id"]
    pick = np.ones(len(ids), bool) if split is None else nodes["split"] == split
    if wanted is not None:
        pick &= np.isin(ids, np.fromiter(wanted, np.int64, len(wanted)))
    if skip_ids:
        pick &= ~np.isin(ids, np.fromiter(skip_ids, np.int64, len(skip_ids)))
    order = np.argsort(ids[pick], kind="stable")
    chosen, labels = ids[pick][order].astype(np.int64), nodes["label"][pick][order].astype(np.int64)
    rows = bank.rows(chosen)
    has = bank.image_mask[rows]
    if split is not None:
        skipped["no_image_embedding"] += int((~has).sum())
    ok = (labels == metrics.IGNORE_LABEL) | ((labels >= 0) & (labels < n_classes))
    skipped["bad_label"] += int((has & ~ok).sum())
    keep = has & ok
    chosen, labels, rows = chosen[keep], labels[keep], rows[keep]
    if limit is not None:
        chosen, labels, rows = chosen[:limit], labels[:limit], rows[:limit]
    captions = [hashlib.blake2b(np.asarray(bank.text[r]).tobytes(), digest_size=16).hexdigest() for r in rows]
    return chosen, labels, captions, _aligned(run, rows, "image", device), _aligned(run, rows, "text", device)


@torch.inference_mode()
def bank_zeroshot_weights(run: Any, prompts: list[list[str]], device: str
                          ) -> tuple[Optional[Tensor], Optional[str]]:
    """([D, C] zero-shot classifier, None), or (None, why it was skipped): each class's `prompts` (the same number
    per class) through the bank's own text encoder, stored as the bank stores text (normalised if it is, fp16),
    then through the run's text layer."""
    from trainer.config import TrainSetupError
    from trainer.encoders import build_text_encoder, l2_normalise

    manifest = run.bank.manifest
    seed = int(manifest.get("created_with", {}).get("settings", {}).get("seed", 0))
    try:
        encoder = build_text_encoder(manifest["text_encoder"], manifest.get("text_pretrained"), device, seed)
    except (TrainSetupError, OSError, ImportError) as exc:
        return None, f"the bank's text encoder {manifest['text_encoder']!r} does not load here ({exc})"
    if encoder.dim != run.bank.text_dim:
        return None, (f"the bank's text encoder {manifest['text_encoder']!r} gives {encoder.dim}-d rows here, the "
                      f"bank holds {run.bank.text_dim}-d ones")
    flat = encoder.encode([p for per_class in prompts for p in per_class])
    if manifest.get("normalized", True):
        flat = l2_normalise(flat)
    emb = run.model.encode_text(flat.half().float().to(device)).float().cpu()
    return metrics.zeroshot_class_weights(emb.view(len(prompts), len(prompts[0]), -1)), None
