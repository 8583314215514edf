"""Ops on tensor subclasses (sharded ``DTensor`` parameters), run by the package that knows them.

:mod:`deftx.ops` imports no such package. The package registers its implementation of an op
for its tensor type when it is imported (:func:`register_subclass_handler`; ``deftx.distributed``
registers the sharded top-k for ``DTensor``). So that a call works without that import, the
package root names, for the module that defines a tensor type, the deftx module that registers
its handlers (``deftx._SUBCLASS_PLUGINS``): the first call that meets an instance of a type
defined there, with no handler yet, imports it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch

_HANDLERS: dict[str, dict[type, Callable[..., Any]]] = {}


def register_subclass_handler(op: str, tensor_type: type, handler: Callable[..., Any]) -> None:
    """Run ``op`` (a registry name) with ``handler`` when one of its inputs is a ``tensor_type``."""
    _HANDLERS.setdefault(op, {})[tensor_type] = handler


def _registered(op: str, tensors: list[torch.Tensor]) -> Callable[..., Any] | None:
    for tensor_type, handler in _HANDLERS.get(op, {}).items():
        if any(isinstance(t, tensor_type) for t in tensors):
            return handler
    return None


def _plugins_for(tensors: list[torch.Tensor]) -> list[str]:
    """The deftx modules registering handlers for the subclasses among ``tensors`` (none for plain
    tensors and parameters: checking imports nothing)."""
    plugins = getattr(sys.modules["deftx"], "_SUBCLASS_PLUGINS", {})
    found = []
    for t in tensors:
        if type(t) in (torch.Tensor, torch.nn.Parameter):
            continue
        defined_in = type(t).__module__
        found += [plugin for prefix, plugin in plugins.items() if defined_in.startswith(prefix)]
    return found


def subclass_handler(op: str, tensors: Iterable[torch.Tensor | None]) -> Callable[..., Any] | None:
    """The handler of ``op`` for a tensor subclass among ``tensors``, or None (plain tensors)."""
    present = [t for t in tensors if t is not None]
    handler = _registered(op, present)
    if handler is None:
        for plugin in _plugins_for(present):
            importlib.import_module(plugin)
        handler = _registered(op, present)
    return handler
