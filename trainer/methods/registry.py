"""The method registry: name -> Method class (config, CLI choices and the model read it), and the add-ons
(mixins any method can take, e.g. SuperCLIP's term) that `make_method` applies to the run's method."""
from __future__ import annotations

from typing import Any

from trainer.methods.base import Method

_METHODS: dict[str, type[Method]] = {}


def register(method: type[Method]) -> type[Method]:
    """Add a method (usable as a class decorator); a name can be registered once."""
    name = getattr(method, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{method.__qualname__} needs a class attribute `name`")
    if name in _METHODS and _METHODS[name] is not method:
        raise ValueError(f"method {name!r} is already registered ({_METHODS[name].__qualname__})")
    _METHODS[name] = method
    return method


def get_method(name: str) -> type[Method]:
    """The registered method called `name`; an unknown name is a ValueError listing the registered ones."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(method_names())}") from None


def method_names() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def registered_methods() -> list[type[Method]]:
    """Registered method classes, sorted by name."""
    return [_METHODS[name] for name in method_names()]


# ---- add-ons ----------------------------------------------------------------------------------------------------
_ADDONS: list[type[Method]] = []
_COMPOSED: dict[tuple[type[Method], ...], type[Method]] = {}


def register_addon(addon: type[Method]) -> type[Method]:
    """Add an add-on: a `Method` mixin whose hooks call `super()` and add its own parts and terms, with a classmethod
    `enabled(cfg)` saying whether a run uses it (SuperCLIP's term: `--superclip-weight W > 0`)."""
    if not callable(getattr(addon, "enabled", None)):
        raise TypeError(f"add-on {addon.__qualname__} needs a classmethod `enabled(cfg)`")
    if addon not in _ADDONS:
        _ADDONS.append(addon)
    return addon


def with_addons(method: type[Method], addons: tuple[type[Method], ...]) -> type[Method]:
    """`method` with `addons` mixed in front (cached): their hooks run first and call down to the method's own.

    The composed class keeps the method's name, description and Options (the add-ons' fields are declared by a
    registered method, so they are in TrainConfig already) and merges the no-decay markers."""
    addons = tuple(a for a in addons if not issubclass(method, a))
    if not addons:
        return method
    key = (method, *addons)
    if key not in _COMPOSED:
        markers = tuple(dict.fromkeys(m for cls in key for m in cls.no_decay))
        _COMPOSED[key] = type(f"{method.__name__}+{'+'.join(a.__name__ for a in addons)}", (*addons, method),
                              {"Options": method.Options, "no_decay": markers, "__module__": method.__module__})
    return _COMPOSED[key]


def make_method(cfg: Any, clip: Any) -> Method:
    """The run's method instance: `cfg.method` with every add-on `cfg` enables, bound to the open_clip `clip` (so
    `build` can size its parts from the towers)."""
    method_cls = get_method(cfg.method)
    method = with_addons(method_cls, tuple(a for a in _ADDONS if a.enabled(cfg)))(cfg)
    method.bind(clip)
    return method
