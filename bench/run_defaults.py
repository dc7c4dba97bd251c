"""The trainer defaults a study run left to the code, recorded beside its flags so a later default change is caught.

A study reuses a finished run when its slip-train flags match (bench_flags.json), but a run's config is its flags
*plus the defaults of the code that trained it*. When a default changes (SLIP's `lambda_struct` did), a run trained
under the old one would be silently reused as if it measured the new one. So each run also records, in
RUN/bench_defaults.json, the default of every option it leaves unset that can change its weights: the common
training options and its method's own, plus those of any method whose option its flags set (an add-on such as
`--superclip-weight`), and its method class's constants (`slip-superclip`'s SuperCLIP weight is one, not an option),
as `METHOD.NAME`. Reuse then also needs all of them unchanged. The record is portable (no paths), so it is
committed with the study and checked in a fresh checkout too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

RECORD = "bench_defaults.json"

#: method class attributes that only describe it
DESCRIPTIVE = frozenset({"name", "description"})

#: options that never change the weights a run ends with (where it writes, how often it logs or checkpoints)
NOT_IN_WEIGHTS = frozenset({"out", "resume", "report_to", "wandb_project", "log_every", "ckpt_every", "keep_last",
                            "dist_timeout", "val_every", "val_split", "val_max_samples", "best_metric"})


def flag_fields(flags: Sequence[str], fields: set[str]) -> set[str]:
    """Config fields the flags set: `--lambda-struct 0.5`, `--lambda-struct=0.5`, `--no-augment` -> names."""
    named = set()
    for token in flags:
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0].replace("-", "_")
        if name not in fields and name.startswith("no_"):
            name = name[3:]
        if name in fields:
            named.add(name)
    return named


def defaults_left(method: str, flags: Sequence[str]) -> dict[str, Any]:
    """Current default (JSON form) of every weight-relevant option the run with these flags leaves unset."""
    from pydantic_core import to_jsonable_python

    from trainer.config import BaseTrainConfig, config_class
    from trainer.methods.registry import get_method, registered_methods

    every = config_class().model_fields
    given = flag_fields(flags, set(every))
    relevant = set(BaseTrainConfig.model_fields) | set(get_method(method).Options.model_fields)
    for other in registered_methods():  # an add-on's options come with the flag that turns it on
        if given & set(other.Options.model_fields):
            relevant |= set(other.Options.model_fields)
    left = {name: to_jsonable_python(every[name].get_default(call_default_factory=True))
            for name in sorted(relevant - given - NOT_IN_WEIGHTS - {"method"})}
    return {**left, **method_constants(method)}


def method_constants(method: str) -> dict[str, Any]:
    """`METHOD.NAME` -> value of each plain class constant of the method (its own and inherited): the defaults
    that live in code rather than in options, such as a combination's add-on weight."""
    from trainer.methods.registry import get_method

    constants: dict[str, Any] = {}
    for klass in reversed(get_method(method).__mro__):
        for name, value in vars(klass).items():
            if not name.startswith("_") and name not in DESCRIPTIVE and isinstance(value, (bool, int, float, str,
                                                                                             tuple)):
                constants[f"{method}.{name}"] = list(value) if isinstance(value, tuple) else value
    return dict(sorted(constants.items()))


def record_defaults(folder: Path, method: str, flags: Sequence[str]) -> None:
    """Write RUN/bench_defaults.json for a run about to train."""
    (folder / RECORD).write_text(json.dumps(defaults_left(method, flags), indent=1, sort_keys=True) + "\n")


def changed_defaults(folder: Path, method: str, flags: Sequence[str]) -> list[str]:
    """`name: recorded -> current` for every default that differs from the run's record (empty: reusable); a run
    with no record reports that, since what it was trained under is unknown."""
    path = folder / RECORD
    if not path.is_file():
        return [f"no {RECORD} (trained before defaults were recorded)"]
    recorded, current = json.loads(path.read_text()), defaults_left(method, flags)
    return [f"{name}: {recorded.get(name, '(absent)')!r} -> {current.get(name, '(absent)')!r}"
            for name in sorted(set(recorded) | set(current)) if recorded.get(name) != current.get(name)]


def refuse_stale(folder: Path, method: str, flags: Sequence[str]) -> None:
    """Stop the study (one line) when a finished run in `folder` was trained under other defaults than today's."""
    changes = changed_defaults(folder, method, flags)
    if changes:
        raise SystemExit(f"{folder} was trained under other trainer defaults ({'; '.join(changes)}); delete the "
                         "folder to retrain it, or use another --out")
