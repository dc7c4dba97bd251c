"""The method registry: name -> Method class. Config, CLI choices and the model all read it."""
from __future__ import annotations

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
