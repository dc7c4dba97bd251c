"""pipelines.yaml as validated data: a bad configuration stops the run at once with the key and the allowed values.

The defaults live in the packaged `etl/pipelines.yaml` (the repository's `pipelines.yaml` is the same file); a
user's `--config` file is merged over them, then `--set SECTION.KEY=VALUE` overrides, then validation. Every error
names where the bad value came from (the file, or the `--set` item) so that a user fixes the right thing, and
name templates are checked here, not at the end of a build.
"""
from __future__ import annotations

import copy
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Formatter
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from slipio.inputs import InputError, read_config_text, yaml_problem

# The fields each name template is formatted with (etl/stages/release.py: release.name; etl/stages/fetch.py and
# the stage registry: sources.*.files). A template with any other field is refused when the config loads.
RELEASE_NAME_FIELDS = ("category",)
SOURCE_FILE_FIELDS = ("Category",)


class ConfigError(ValueError):
    """A configuration problem the user must fix; the message names the key and what is allowed."""


def check_template(template: str, fields: tuple[str, ...]) -> str:
    """`template` if `template.format(**{each of fields})` works; ValueError naming the bad part otherwise."""
    allowed = ", ".join("{" + f + "}" for f in fields)
    try:
        used = [name for _, name, _, _ in Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"not a valid template {template!r} ({exc}); allowed fields: {allowed}, and a literal "
                         f"brace is written {{{{ or }}}}") from None
    for name in used:
        if name not in fields:
            raise ValueError(f"unknown template field {{{name}}} in {template!r}; allowed: {allowed}")
    try:
        template.format(**{f: "x" for f in fields})
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        raise ValueError(f"not a valid template {template!r} ({exc}); allowed fields: {allowed}") from None
    return template


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    format: Literal["amazon-2023", "amazon-2018"]
    files: dict[Literal["metadata", "reviews"], str]
    category_names: dict[str, str] = Field(default_factory=dict)
    sample_products: int = Field(3000, ge=50)
    sample_seed: int = 0
    # the sample's regime (etl.sample.knobs.SampleKnobs; checked when the sample is generated): {} = the default
    sample_knobs: dict[str, float] = Field(default_factory=dict)

    @field_validator("files")
    @classmethod
    def _file_templates(cls, v: dict[str, str]) -> dict[str, str]:
        for template in v.values():
            check_template(template, SOURCE_FILE_FIELDS)
        return v

    @model_validator(mode="after")
    def _files_match_format(self) -> SourceConfig:
        if "metadata" not in self.files:
            raise ValueError("files.metadata is required")
        if self.format == "amazon-2023" and "reviews" not in self.files:
            raise ValueError("files.reviews is required for format amazon-2023 (edges come from purchases)")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        """Leave unset sample knobs out, so a default build's recorded config (release manifest) is unchanged."""
        data = handler(self)
        if not self.sample_knobs:
            data.pop("sample_knobs", None)
        return data


class HttpConfig(_Strict):
    user_agent: str = Field(min_length=1)
    allow_hosts: list[str] = Field(default_factory=list)
    max_redirects: int = Field(5, ge=0, le=20)
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)


class FetchConfig(_Strict):
    retries: int = Field(6, ge=0)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    chunk_bytes: int = Field(1 << 20, ge=1024)


class NodesConfig(_Strict):
    max_title_chars: int = Field(512, ge=16)
    max_feature_chars: int = Field(512, ge=16)
    max_features: int = Field(16, ge=0)
    max_description_chars: int = Field(4000, ge=0)
    max_store_chars: int = Field(200, ge=1)
    max_category_chars: int = Field(200, ge=1)
    max_raw_chars: int = Field(2000, ge=0)


class EdgesConfig(_Strict):
    verified_only: bool = True
    min_user_products: int = Field(2, ge=2)
    max_user_products: int = Field(100, ge=2)
    min_weight: int = Field(2, ge=1)
    top_k: int = Field(0, ge=0)
    include_also_view: bool = False
    drop_isolated: bool = False
    k_core: int = Field(0, ge=0)
    largest_component: bool = False
    seed: int = 0

    @model_validator(mode="after")
    def _bounds(self) -> EdgesConfig:
        if self.max_user_products < self.min_user_products:
            raise ValueError("max_user_products must be >= min_user_products")
        return self


class ReviewsConfig(_Strict):
    per_product: int = Field(25, ge=0)
    min_text_chars: int = Field(20, ge=0)
    max_text_chars: int = Field(2000, ge=1)
    max_title_chars: int = Field(200, ge=1)


class LabelsConfig(_Strict):
    min_class_size: int = Field(20, ge=1)
    max_classes: int = Field(64, ge=2)
    min_classes: int = Field(4, ge=2)
    levels: list[int] = Field(default_factory=lambda: [1, 2, 3, 4], min_length=1)
    min_coverage: float = Field(0.6, ge=0, le=1)
    split: dict[Literal["train", "val", "test"], float] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1}
    )
    seed: int = 0

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != {"train", "val", "test"}:
            raise ValueError("split needs exactly train, val and test")
        if any(x < 0 for x in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be >= 0 and sum to 1 (got {sum(v.values()):.4f})")
        return v


class ImagesConfig(_Strict):
    concurrency: int = Field(64, ge=1, le=4096)
    per_host_concurrency: int = Field(16, ge=1)
    per_host_rps: float = Field(0.0, ge=0)
    retries: int = Field(4, ge=0)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    max_bytes: int = Field(20_000_000, ge=1024)
    max_pixels: int = Field(40_000_000, ge=1024)
    shorter_side: int = Field(256, ge=8, le=8192)
    # smallest_covering: the smallest listed rendition that covers shorter_side, a larger one if it turns out too
    # small (etl/imaging/renditions.py); largest: always hi_res > large > thumb (the image_url of the node table)
    rendition: Literal["smallest_covering", "largest"] = "smallest_covering"
    resize_mode: Literal["keep_ratio", "center_crop"] = "keep_ratio"
    jpeg_quality: int = Field(95, ge=1, le=100)
    workers: int = Field(0, ge=0)
    respect_robots: bool = True
    chunk_rows: int = Field(512, ge=1)
    url_rewrite: dict[str, str] = Field(default_factory=dict)


class ShardsConfig(_Strict):
    max_samples: int = Field(1000, ge=1)
    max_bytes: int = Field(0, ge=0)
    caption: Literal["title", "title_features", "title_category", "title_features_category"] = "title_features"
    caption_features: int = Field(3, ge=0)
    caption_max_chars: int = Field(300, ge=16)
    ordering: Literal["graph_clusters", "random"] = "graph_clusters"
    cluster_size: int = Field(32, ge=2)
    seed: int = 0


class ExecutorConfig(_Strict):
    """Where `images` and `shards` run (etl/core/executor.py); never part of a fingerprint: same outputs on both."""

    kind: Literal["local", "ray"] = "local"
    address: str = ""               # Ray cluster HOST:PORT, "auto", ray://...; "" = start Ray on this machine
    workers: int = Field(0, ge=0)   # tasks at once (0 = every CPU of the cluster / task_cpus)
    task_cpus: float = Field(1.0, gt=0)
    tasks_per_worker: int = Field(4, ge=1)
    max_partition_rows: int = Field(2048, ge=1)
    max_retries: int = Field(3, ge=0)
    object_store_mb: int = Field(0, ge=0)  # only when Ray is started here (0 = Ray's default)


class ReleaseConfig(_Strict):
    version: str = Field("1.0.0", pattern=r"^[0-9A-Za-z][0-9A-Za-z._-]*$")
    name: str = "slip-amazon-{category}"
    license: str = "other"
    license_note: str = ""
    # lp_split.parquet, the fixed link-prediction split (rule: etl/graph/lpsplit.py)
    lp_negatives: int = Field(100, ge=1, description="fixed negatives per held-out edge (OGB-style ranking)")
    lp_hard_fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of them drawn from the query's class")
    lp_seed: int = Field(0, description="seed of the held-out edges and their negatives")

    @field_validator("name")
    @classmethod
    def _name_template(cls, v: str) -> str:
        return check_template(v, RELEASE_NAME_FIELDS)


class PipelineConfig(_Strict):
    version: Literal[1] = 1
    base_url: str
    sources: dict[str, SourceConfig]
    categories: dict[str, str]
    http: HttpConfig
    fetch: FetchConfig = FetchConfig()
    nodes: NodesConfig = NodesConfig()
    edges: EdgesConfig = EdgesConfig()
    reviews: ReviewsConfig = ReviewsConfig()
    labels: LabelsConfig = LabelsConfig()
    images: ImagesConfig = ImagesConfig()
    shards: ShardsConfig = ShardsConfig()
    release: ReleaseConfig = ReleaseConfig()
    executor: ExecutorConfig = ExecutorConfig()

    def section(self, name: str) -> dict[str, Any]:
        """The JSON-able config slice a stage reads (part of its fingerprint)."""
        return getattr(self, name).model_dump(mode="json")

    def category_name(self, slug: str, source: str) -> str:
        """Resolve `--category` (a slug like `electronics` or a file name like `Electronics`) for a source."""
        names = self.categories
        if slug not in names:
            by_name = {v: k for k, v in names.items()}
            if slug not in by_name:
                raise ConfigError(
                    f"unknown category {slug!r}; allowed: {', '.join(sorted(names))} (or their file names)"
                )
            slug = by_name[slug]
        return self.source(source).category_names.get(slug, names[slug])

    def category_slug(self, category: str) -> str:
        """The slug for a slug or a file name (used in folder names)."""
        if category in self.categories:
            return category
        for slug, name in self.categories.items():
            if name == category:
                return slug
        raise ConfigError(f"unknown category {category!r}; allowed: {', '.join(sorted(self.categories))}")

    def source(self, name: str) -> SourceConfig:
        if name not in self.sources:
            raise ConfigError(f"unknown source {name!r}; allowed: {', '.join(sorted(self.sources))}")
        return self.sources[name]


def default_config_text() -> str:
    return resources.files("etl").joinpath("pipelines.yaml").read_text(encoding="utf-8")


@dataclass(frozen=True)
class _Override:
    """One `--set` item: where it points and the value it sets."""

    item: str
    keys: tuple[str, ...]
    value: Any


@dataclass
class _Origins:
    """Where each value came from, so that a validation error names the file or the `--set` item to fix."""

    file: Path | None = None
    user: dict[str, Any] = field(default_factory=dict)
    overrides: list[_Override] = field(default_factory=list)

    def of(self, loc: tuple[Any, ...]) -> str:
        keys = tuple(str(k) for k in loc)
        for o in reversed(self.overrides):  # the last --set of a key wins, as it does when applied
            n = min(len(o.keys), len(keys))
            if o.keys[:n] == keys[:n]:
                return f"--set {o.item!r}"
        if self.file is not None and (not keys or keys[0] in {str(k) for k in self.user}):
            return str(self.file)
        return "pipelines.yaml (defaults)"


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Defaults, then the user's file (deep-merged), then `SECTION.KEY=VALUE` overrides; validated."""
    data = yaml.safe_load(default_config_text())
    origins = _Origins()
    if path is not None:
        origins.file = Path(path)
        origins.user = read_config_file(origins.file)
        data = _deep_merge(data, origins.user)
    for item in overrides or []:
        override = parse_override(item)
        origins.overrides.append(override)
        _set_path(data, list(override.keys), override.value)
    return validate_config(data, origins)


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a user's pipelines.yaml (empty file: none); ConfigError naming the file when it is not one."""
    try:
        text = read_config_text(path)
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    try:
        user = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    if user is None:
        return {}
    if not isinstance(user, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return user


def parse_override(item: str) -> _Override:
    """One `--set SECTION.KEY=VALUE`: a known key and its value (YAML, or the text itself for a string key)."""
    key, sep, raw = item.partition("=")
    example = "e.g. --set images.concurrency=8"
    if not sep:
        raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE ({example})")
    keys = tuple(k.strip() for k in key.split("."))
    if not all(keys):
        raise ConfigError(f"--set {item!r}: {key.strip()!r} is not SECTION.KEY (names joined by dots; {example})")
    try:
        annotation = _annotation_at(keys)
    except ValueError as exc:
        raise ConfigError(f"--set {item!r}: {exc}") from None
    text = raw.strip()
    if not text:
        return _Override(item, keys, "")
    if annotation is str and text[0] not in "\"'":  # a name or template: the text as given (`{category}` stays)
        return _Override(item, keys, text)
    try:
        return _Override(item, keys, yaml.safe_load(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value {text!r} is not valid YAML ({yaml_problem(exc)}); "
                          f"quote a string value, e.g. --set '{key.strip()}=\"...\"'") from None


def _annotation_at(keys: tuple[str, ...]) -> Any:
    """The type of the value at `keys` in PipelineConfig; ValueError naming the unknown key and the allowed ones."""
    current: Any = PipelineConfig
    for depth, key in enumerate(keys):
        here = ".".join(keys[:depth])
        where = f"in {here}" if here else "at the top level"
        if isinstance(current, type) and issubclass(current, BaseModel):
            if key not in current.model_fields:
                raise ValueError(f"unknown key {'.'.join(keys[:depth + 1])!r}; allowed keys {where}: "
                                 f"{', '.join(sorted(current.model_fields))}")
            current = current.model_fields[key].annotation
        elif typing.get_origin(current) is dict:
            key_type, current = typing.get_args(current)
            names = typing.get_args(key_type) if typing.get_origin(key_type) is Literal else ()
            if names and key not in names:
                raise ValueError(f"unknown key {'.'.join(keys[:depth + 1])!r}; allowed keys {where}: "
                                 f"{', '.join(sorted(names))}")
        else:
            raise ValueError(f"{here} is a single value, not a section with keys")
    return current


def validate_config(data: dict[str, Any], origins: _Origins | str = "config") -> PipelineConfig:
    """`data` as a PipelineConfig; ConfigError listing every problem with its key and where it came from."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, origins)) from None


def _explain(exc: ValidationError, origins: _Origins | str) -> str:
    lines = ["invalid configuration"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = _model_at(PipelineConfig, err["loc"][:-1])
            allowed = sorted(parent.model_fields) if parent is not None else []
            msg = f"unknown key; allowed keys here: {', '.join(allowed)}"
        elif err["type"] == "literal_error":
            msg = f"{msg} (got {err.get('input')!r})"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        origin = origins.of(err["loc"]) if isinstance(origins, _Origins) else origins
        lines.append(f"  {origin}: {key}: {msg}")
    return "\n".join(lines)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Walk field annotations along `loc` to find the model that owns the last key (for 'allowed keys')."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        else:
            args = typing.get_args(current)
            current = args[-1] if args else None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("url_rewrite", "category_names"):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        nxt = node.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            node[k] = nxt
        node = nxt
    node[keys[-1]] = value
