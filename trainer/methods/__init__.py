"""Training methods as plug-ins: `register`, `get_method`, `method_names`, and the built-in methods.

Adding a method = one module in this folder (a `Method` subclass decorated with `@register`), its tests and its
docs: every public module here is imported below, so the loop, model, config and CLI pick it up from the registry.
Modules whose name starts with `_` hold shared parts (e.g. the GAT refiner) and are not imported here.
"""
import importlib
import pkgutil

from trainer.methods.base import BatchContext, Method, NoOptions
from trainer.methods.registry import get_method, method_names, register, registered_methods

_INFRASTRUCTURE = {"base", "registry"}
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["BatchContext", "Method", "NoOptions", "get_method", "method_names", "register", "registered_methods"]
