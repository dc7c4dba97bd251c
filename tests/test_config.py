"""pipelines.yaml: defaults load, bad keys and values are named with what is allowed, overrides apply."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from etl.config import RELEASE_NAME_FIELDS, ConfigError, load_config


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


@pytest.mark.parametrize("template", ["{nope}", "{}", "{0}", "{category", "category}", "{category.upper}",
                                      "{category:{width}}", "{category!z}"])
def test_release_name_template_is_checked_when_the_config_loads(tmp_path, template):
    path = _write(tmp_path, yaml.safe_dump({"release": {"name": template}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"{path}: release.name:" in msg and "{category}" in msg, msg
    ok = load_config(_write(tmp_path, 'release:\n  name: "{category}-{{x}}-{category:>3}"\n'))
    assert ok.release.name.format(**{f: "tv" for f in RELEASE_NAME_FIELDS}) == "tv-{x}- tv"


def test_source_file_templates_are_checked_when_the_config_loads(tmp_path):
    path = _write(tmp_path, "sources:\n  sample:\n    files:\n      metadata: 'meta_{category}.jsonl.gz'\n")
    with pytest.raises(ConfigError, match=r"sources\.sample\.files: unknown template field \{category\}.*\{Category\}"):
        load_config(path)


def test_set_of_a_string_key_keeps_the_text(tmp_path):
    cfg = load_config(overrides=["release.name={category}-v2", "release.version=2.0", "release.license=\"a: b\"",
                                 "http.user_agent=bot/1.0 (+mailto:x@example.org)"])
    assert (cfg.release.name, cfg.release.version, cfg.release.license) == ("{category}-v2", "2.0", "a: b")
    assert cfg.http.user_agent == "bot/1.0 (+mailto:x@example.org)"
    assert load_config(overrides=["images.concurrency=8"]).images.concurrency == 8  # other keys: YAML values


def test_each_error_names_the_file_or_the_set_item_it_came_from(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("images:\n  concurrency: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["edges.top_k=-1", "images.shorter_side=9999"])
    msg = str(err.value)
    assert f"{path}: images.concurrency:" in msg
    assert "--set 'edges.top_k=-1': edges.top_k:" in msg and "--set 'images.shorter_side=9999': images" in msg
    assert "pipelines.yaml" not in msg
    assert load_config(_write(tmp_path, "")) == load_config()  # an empty file: the defaults


def test_config_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("release:\n  license_note: 'Données'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: not UTF-8 text \(byte 0xe9 at offset 30\)"):
        load_config(path)
