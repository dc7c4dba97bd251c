"""The release's dataset card (README.md with Hugging Face YAML front matter) and its plots.

The front matter is what the Hub indexes (license, task ids, size, which files are which table); the body is what a
person reads before downloading: how the data was made, how to load it, and the statistics as tables.
Plots are drawn with matplotlib's Agg canvas (`Figure`, no pyplot state), so they work headless and in threads.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from schemas import bank as bank_contract
from slipio import atomic
from slipio.hashing import file_sha256

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Valid Hugging Face task ids (https://huggingface.co/tasks); text-to-image and graph-ml: the graph is a first-class
# part of the release (neighbours for SLIP's structural loss).
TASK_CATEGORIES = ["image-to-text", "text-to-image", "zero-shot-image-classification", "graph-ml"]
TAGS = ["webdataset", "multimodal", "product-graph", "co-purchase", "amazon-reviews", "clip"]
SIZE_BOUNDS = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
               (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
PLOTS = {"degree": "plots/degree_distribution.png", "classes": "plots/class_histogram.png"}
LP_SPLIT = "lp_split.parquet"
#: the release's split names as Hugging Face names its splits (the card's `configs:` use these)
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def split_nodes_file(split: str) -> str:
    """Where the nodes of one split are written for `datasets.load_dataset(release, "nodes")`."""
    return f"splits/nodes-{HF_SPLITS[split]}.parquet"


def size_category(n: int) -> str:
    """The Hub's size bucket for n rows."""
    for bound, name in SIZE_BOUNDS:
        if n < bound:
            return name
    return "n>1B"


def front_matter(pretty_name: str, license: str, stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "pretty_name": pretty_name,
        "license": license,
        "task_categories": TASK_CATEGORIES,
        "tags": TAGS,
        "size_categories": [size_category(stats["nodes"])],
        "configs": hf_configs(stats),
    }


def hf_configs(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The card's `configs:` for `datasets.load_dataset(RELEASE, NAME)`: `nodes` split into train/validation/test
    (one file per split with rows: a pattern that matches no file is an error in `datasets`); `edges`, `reviews`
    and `lp_split` as single tables (`datasets` names that split "train"; lp_split's `split` column says val or
    test). The shards are not here: `datasets` picks one builder for all of a folder's configs (from the first
    config's files), so the webdataset config lives in shards/README.md (`shard_card`)."""
    nodes = [{"split": HF_SPLITS[s], "path": split_nodes_file(s)} for s in HF_SPLITS if stats["splits"].get(s)]
    configs = [{"config_name": "nodes", "data_files": nodes, "default": True},
               {"config_name": "edges", "data_files": "edges.parquet"},
               {"config_name": "reviews", "data_files": "reviews.parquet"},
               {"config_name": "lp_split", "data_files": LP_SPLIT}]
    return [c for c in configs if c["data_files"]]


SHARD_CARD = "shards/README.md"


def shard_card(pretty_name: str, license: str, stats: dict[str, Any]) -> str:
    """shards/README.md: the card that makes the shards folder a `webdataset` dataset with train/validation/test
    splits (`datasets.load_dataset("RELEASE/shards")`); only splits that have samples are listed."""
    files = [{"split": HF_SPLITS[s], "path": f"{s}-*.tar"} for s in HF_SPLITS
             if stats["shards"].get(s, {}).get("samples")]
    meta = {"pretty_name": f"{pretty_name} shards", "license": license, "tags": TAGS,
            "configs": [{"config_name": "default", "data_files": files}]}
    counts = ", ".join(f"{HF_SPLITS[s]} {stats['shards'].get(s, {}).get('samples', 0)}" for s in HF_SPLITS)
    return (f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n# {pretty_name}: shards\n\n"
            f"WebDataset shards of the release one folder up (see its README.md); samples per split: {counts}. "
            f"Each sample: `jpg` (image), `txt` (caption), `json` (node_id, asin, label, label_name, split, "
            f"cluster). `datasets.load_dataset(\"RELEASE/shards\")` reads them with the `webdataset` builder.\n")


def render_card(*, name: str, version: str, license: str, license_note: str, stats: dict[str, Any]) -> str:
    """README.md text: YAML front matter (yaml.safe_dump, so it always parses) + readable statistics."""
    meta = yaml.safe_dump(front_matter(f"{name} {version}", license, stats), sort_keys=False,
                          allow_unicode=True)
    splits = stats["splits"]
    lines = [
        f"---\n{meta}---",
        f"# {name} {version}",
        "",
        f"A multimodal product graph built from Amazon product metadata ({stats['source']}, category "
        f"`{stats['category']}`): one node per product (title, features, category path, image), co-purchase edges "
        f"between products, up to K reviews per product, a class label and a train/val/test split per node, and "
        f"WebDataset shards of (image, caption, metadata) samples written in graph-aware order (co-purchase "
        f"neighbours in nearby positions) for CLIP/SLIP training.",
        "",
        "## Files",
        "",
        _table(["file", "what"], [
            ["`nodes.parquet`", "kept products + `label`, `label_name`, `split`, `image_status`"],
            ["`edges.parquet`", "undirected edges `src < dst`, `weight`, `kind`"],
            ["`reviews.parquet`", "up to K cleaned reviews per product (`rank` 0 = first chosen)"],
            [f"`{LP_SPLIT}`", "fixed link-prediction split: held-out val/test edges `src`→`dst` with fixed "
                              "`negatives` per query (kept out of the trainer's graph)"],
            ["`splits/nodes-{train,validation,test}.parquet`", "`nodes.parquet` by split (Hugging Face splits)"],
            ["`labels.json`", "class ids and names, the label level and the rule that chose it"],
            ["`shards/{split}-NNNNNN.tar`", "WebDataset: `<key>.jpg`, `<key>.txt` (caption), `<key>.json`"],
            ["`shards/sizes.json`", "samples per shard (read by open_clip)"],
            [f"`{SHARD_CARD}`", "the shards' own card: a `webdataset` dataset with train/validation/test splits"],
            ["`stats.json`", "every figure below, machine-readable"],
            ["`manifest.json`", "bytes + sha256 of every file, schema versions, provenance, full config"],
        ]),
        "",
        "## Loading",
        "",
        "```python",
        "import polars as pl, webdataset as wds",
        'nodes = pl.read_parquet("nodes.parquet"); edges = pl.read_parquet("edges.parquet")',
        'train = wds.WebDataset("shards/train-{000000..%06d}.tar").decode("pil").to_tuple("jpg", "txt", "json")'
        % max(stats["shards"].get("train", {}).get("shards", 1) - 1, 0),
        "",
        "import datasets  # configs (front matter): nodes (train/validation/test), edges, reviews, lp_split",
        'nodes = datasets.load_dataset("RELEASE_FOLDER", "nodes")',
        'shards = datasets.load_dataset("RELEASE_FOLDER/shards")  # webdataset, train/validation/test (its own card)',
        "",
        "from trainer.release import Release  # SLIP-kit: a torch_geometric Data (edge_type, masks, y, node_id)",
        'data = Release("RELEASE_FOLDER").to_pyg()  # to_pyg(bank="NAME"): x = an attached embedding bank',
        "```",
        "",
        f"Link prediction: `{LP_SPLIT}` holds {lp_sentence(stats)}",
        "",
        "Check a downloaded copy with `slip-etl validate FOLDER` (hashes, schemas, shards, referential integrity).",
        "",
        "## Statistics",
        "",
        _table(["nodes", "edges", "mean degree", "median degree", "max degree", "isolated", "images ok"], [[
            stats["nodes"], stats["edges"]["total"], stats["degree"]["mean"], stats["degree"]["median"],
            stats["degree"]["max"], stats["degree"]["isolated"], f"{100 * stats['images']['success_rate']:.1f}%"]]),
        "",
        "### Splits and shards",
        "",
        _table(["split", "nodes", "shards", "samples"],
               [[s, splits.get(s, 0), stats["shards"].get(s, {}).get("shards", 0),
                 stats["shards"].get(s, {}).get("samples", 0)] for s in ("train", "val", "test")]),
        "",
        "### Pipeline accounting (input = kept + rejected + filtered)",
        "",
        _table(["stage", "input", "kept", "rejected", "filtered", "seconds"],
               [[stage, c.get("input"), c.get("kept"), format_reasons(c.get("rejected")),
                 format_reasons(c.get("filtered")),
                 rec.get("duration_s")] for stage, rec in stats["stages"].items() if (c := rec.get("counts"))]),
        "",
        "### Image status",
        "",
        _table(["status", "nodes"], [[k, v] for k, v in stats["images"]["status_counts"].items()]),
        "",
        f"### Classes (level {stats['classes']['level']}; {stats['classes']['unlabeled']} nodes unlabeled = -1)",
        "",
        _table(["id", "name", "nodes"], [[c["id"], c["name"], c["count"]] for c in stats["classes"]["histogram"]]),
        "",
        f"![degree distribution]({PLOTS['degree']})",
        f"![class histogram]({PLOTS['classes']})",
        "",
        "## License",
        "",
        f"`{license}`. {license_note}".strip(),
        "",
    ]
    return "\n".join(lines)


BANKS_BEGIN, BANKS_END = "<!-- embedding-banks -->", "<!-- /embedding-banks -->"


def bank_section(banks: list[tuple[str, dict[str, Any]]]) -> str:
    """The card's "Embedding banks" section for (name, bank.json) pairs, between markers so it can be redrawn;
    empty without banks."""
    if not banks:
        return ""
    rows = [[f"`embeddings/{name}/`", f"`{m['image_encoder']}`" + (f" ({m['image_pretrained']})"
                                                                  if m.get("image_pretrained") else ""),
             m["image_dim"], f"{m['n_images']} of {m['n_nodes']}",
             f"`{m['text_encoder']}`" + (f" ({m['text_pretrained']})" if m.get("text_pretrained") else ""),
             m["text_field"], m["text_dim"]] for name, m in banks]
    return "\n".join([
        BANKS_BEGIN, "## Embedding banks", "",
        "Frozen-encoder embeddings of every node (`slip-train encode`), float16, row i = node `node_id.npy[i]`; "
        "`image_mask.npy` is false (and the `image.npy` row zero) for nodes without an image. Each bank's "
        "`bank.json` records its encoders, dims and the sha256 of its files; `slip-etl validate` checks them.", "",
        _table(["bank", "image encoder", "image dim", "images", "text encoder", "text field", "text dim"], rows),
        BANKS_END])


def with_bank_section(card: str, section: str) -> str:
    """`card` with its bank section replaced by `section` (inserted before ## License when it had none)."""
    start, end = card.find(BANKS_BEGIN), card.find(BANKS_END)
    if not section and start < 0:
        return card
    if start >= 0 and end > start:
        before, after = card[:start].rstrip("\n"), card[end + len(BANKS_END):].lstrip("\n")
    else:
        at = card.find("\n## License")
        before, after = (card, "") if at < 0 else (card[:at].rstrip("\n"), card[at + 1:])
    parts = [before] + ([section] if section else []) + ([after] if after else [])
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"


def list_banks_in_card(root: Path) -> bool:
    """Redraw README.md's bank section to list the banks attached to the release and re-sign README.md in
    manifest.json; returns whether anything changed. A card that no longer matches its manifest entry (edited by
    hand) is left alone for `slip-etl validate` to report: only a signed card is re-signed."""
    import json

    root = Path(root)
    card_path, manifest_path = root / "README.md", root / "manifest.json"
    if not card_path.is_file() or not manifest_path.is_file():
        return False
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    entry = manifest.get("files", {}).get("README.md")
    if not isinstance(entry, dict) or file_sha256(card_path)[0] != entry.get("sha256"):
        return False
    banks = [(folder.name, m) for folder in bank_contract.attached_banks(root)
             if (m := bank_contract.read_manifest(folder)[0]) is not None]
    text = card_path.read_text(encoding="utf-8")
    new = with_bank_section(text, bank_section(banks))
    if new == text:
        return False
    atomic.write_text(card_path, new)
    digest, size = file_sha256(card_path)
    manifest["files"]["README.md"] = {**entry, "bytes": size, "sha256": digest}
    atomic.write_json(manifest_path, manifest)
    return True


def lp_sentence(stats: dict[str, Any]) -> str:
    """The card's one sentence on the fixed link-prediction split."""
    lp = stats.get("lp_split") or {}
    edges = lp.get("edges", {})
    hard = f", {lp.get('hard_fraction', 0):g} of them from the query's class" if lp.get("hard_fraction") else ""
    short = (f"; {lp['short_rows']} row(s) have fewer: the graph has too few non-neighbours of their query"
             if lp.get("short_rows") else "")
    return (f"{edges.get('val', 0)} val and {edges.get('test', 0)} test held-out edges (one per query node of the "
            f"split with another neighbour left), each with {lp.get('negatives')} fixed negatives (seed "
            f"{lp.get('seed')}{hard}; never the query or its neighbours{short}). Rank `dst` against `negatives` for "
            f"query `src` (MRR, Hits@k; `slip-eval` does). These pairs are not in the trainer's graph; they are in "
            f"`edges.parquet`: drop them before training anything else on the graph.")


def format_reasons(reasons: dict[str, int] | None) -> str:
    """A stage's `rejected` / `filtered` counts as one table cell: "0" or "5 (bad_id: 2, bad_json: 3)" (the card and
    `slip-etl stats` print the same)."""
    if not reasons:
        return "0"
    return f"{sum(reasons.values())} (" + ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) + ")"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def write_plots(folder: Path, stats: dict[str, Any]) -> dict[str, Path]:
    """plots/degree_distribution.png (log-log) and plots/class_histogram.png; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return {"degree": _degree_plot(folder / "degree_distribution.png", stats["degree"]),
            "classes": _class_plot(folder / "class_histogram.png", stats["classes"])}


def _degree_plot(path: Path, degree: dict[str, Any]) -> Path:
    from matplotlib.figure import Figure  # matplotlib only when plotting: `slip-etl stats` reads this module

    points = sorted((int(d), c) for d, c in degree["histogram"].items() if int(d) > 0)
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    if points:
        ax.loglog([d for d, _ in points], [c for _, c in points], "o", markersize=3)
    else:
        ax.text(0.5, 0.5, "no edges", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("degree (distinct neighbours)")
    ax.set_ylabel("nodes")
    ax.set_title(f"Degree distribution ({degree['isolated']} isolated nodes not shown)")
    return _save(fig, path)


def _class_plot(path: Path, classes: dict[str, Any]) -> Path:
    from matplotlib.figure import Figure

    hist = classes["histogram"]
    fig = Figure(figsize=(max(6.0, 0.25 * len(hist) + 2), 4.5), dpi=100)
    ax = fig.add_subplot()
    ax.bar(range(len(hist)), [c["count"] for c in hist])
    ax.set_xticks(range(len(hist)), [_short(str(c["name"])) for c in hist], rotation=75, fontsize=7)
    ax.set_ylabel("nodes")
    ax.set_title(f"Class histogram ({len(hist)} classes, {classes['unlabeled']} unlabeled)")
    return _save(fig, path)


def _short(name: str, width: int = 28) -> str:
    """A class name for an axis tick: the most specific part of a category path, cut from the left if long."""
    leaf = name.split(" > ")[-1]
    return leaf if len(leaf) <= width else "…" + leaf[-(width - 1):]


def _save(fig: Figure, path: Path) -> Path:
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path
