"""pipelines.yaml: defaults load, bad keys and values are named with what is allowed, overrides apply."""
from __future__ import annotations

from pathlib import Path

import pytest

from etl.config import ConfigError, load_config


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pipelines.yaml"
    p.write_text(text)
    return p


def test_defaults_and_repo_file_are_the_same():
    repo_file = Path(__file__).resolve().parents[1] / "pipelines.yaml"
    assert load_config(repo_file) == load_config()


def test_url_templates_resolve():
    cfg = load_config()
    assert cfg.category_name("electronics", "amazon-2023") == "Electronics"
    assert cfg.category_name("Electronics", "amazon-2018") == "Electronics"
    assert cfg.sources["amazon-2023"].files["metadata"].format(Category="Electronics") == \
        "amazon_2023/raw/meta_categories/meta_Electronics.jsonl.gz"
    assert cfg.sources["amazon-2018"].files["metadata"].format(Category="Electronics") == \
        "amazon_v2/metaFiles2/meta_Electronics.json.gz"


def test_unknown_key_named_with_allowed_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, "images:\n  concurency: 3\n"))
    msg = str(err.value)
    assert "images.concurency" in msg and "concurrency" in msg.split("allowed keys here:")[1]


def test_bad_enum_value_lists_allowed(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, "images:\n  resize_mode: stretch\n"))
    assert "images.resize_mode" in str(err.value) and "keep_ratio" in str(err.value)


def test_bad_number_and_split(tmp_path):
    with pytest.raises(ConfigError, match="edges.top_k"):
        load_config(_write(tmp_path, "edges:\n  top_k: -1\n"))
    with pytest.raises(ConfigError, match="labels.split"):
        load_config(overrides=["labels.split={train: 0.5, val: 0.1, test: 0.1}"])


def test_not_yaml_and_not_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "images: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_unknown_category_and_source():
    cfg = load_config()
    with pytest.raises(ConfigError, match="electronics"):
        cfg.category_name("electronix", "amazon-2023")
    with pytest.raises(ConfigError, match="amazon-2023"):
        cfg.source("amazon-2099")


def test_overrides_and_merge(tmp_path):
    cfg = load_config(_write(tmp_path, "edges:\n  min_weight: 3\n"), ["images.shorter_side=128", "edges.top_k=5"])
    assert (cfg.edges.min_weight, cfg.edges.top_k, cfg.images.shorter_side) == (3, 5, 128)
    assert cfg.edges.verified_only is True  # untouched defaults survive the merge
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        load_config(overrides=["novalue"])
