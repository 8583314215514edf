"""How deftx loads a pretrained body: the same modules on every transformers release.

transformers >= 5.2x (with its required ``kernels`` package) *kernelizes* every model that
``from_pretrained`` loads unless told otherwise: layers marked for Hub kernels (GELU, SiLU, ...)
may have their forward replaced by a kernel fetched from the Hub, where one exists for the
device. Earlier releases (e.g. 5.17, the GPU machine's) load the plain torch modules. deftx's
accelerated ops are its own, and a run must compute the same thing on either release and with
or without a Hub cache, so every load asks for the plain modules.

transformers initialises at random, and only logs, every weight a checkpoint lacks: right for the
new task head of a base model, silently wrong for a weight of the body (a folder saved in part, of
another model). :func:`load_pretrained` refuses the second.

transformers 5 loads a checkpoint in the dtype it was saved in (``dtype="auto"``; 4.x loaded
float32): a body saved in bf16 or fp16 would be trained in it, where an AdamW step of a small
learning rate rounds to no change in most entries, and mixed precision (``bf16: true``) expects
float32 weights. :func:`load_pretrained` loads float32 whatever the checkpoint holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deftx.models.parameters import body_prefix

PLAIN_MODULES: dict[str, Any] = {"use_kernels": False}
"""Keyword arguments of every ``from_pretrained`` of a model in deftx (accepted by transformers 5.17 on)."""


def _is_pooler(name: str) -> bool:
    return ".pooler." in f".{name}"


def missing_body_weights(model: nn.Module, missing_keys: Iterable[str]) -> list[str]:
    """Of the keys a checkpoint lacked (``from_pretrained``'s ``missing_keys``), the parameters of the
    transformer body but its pooler, sorted: weights that would silently start at random. A new task
    head (outside the body) and a new pooler (e5 has none) are what loading a base model adds."""
    prefix = body_prefix(model)
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return sorted(name for name in missing_keys if name in parameters and not _is_pooler(name)
                  and (not prefix or name.startswith(prefix + ".")))


def head_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module, of the modules of ``model`` outside its transformer body
    (:func:`~deftx.models.parameters.body_prefix`) that hold parameters of their own: its task head."""
    prefix = body_prefix(model)
    return {name: module for name, module in model.named_modules()
            if name and prefix and name != prefix and not name.startswith(prefix + ".")
            and any(True for _ in module.parameters(recurse=False))}


def renew_head(model: nn.Module, seed: int) -> None:
    """Initialise the task head of ``model`` (:func:`head_modules`) anew from ``seed``, as transformers initialises
    a head a checkpoint lacks, and drop the class names of the head it replaces (``config.id2label``)."""
    torch.manual_seed(seed)
    for module in head_modules(model).values():
        for parameter in module.parameters(recurse=False):
            if hasattr(parameter, "_is_hf_initialized"):
                del parameter._is_hf_initialized  # transformers 5 skips what it marked as loaded
        model._init_weights(module)
    labels = model.config.num_labels
    model.config.update({"id2label": {i: f"LABEL_{i}" for i in range(labels)},
                         "label2id": {f"LABEL_{i}": i for i in range(labels)}})


def loaded_head(model: nn.Module, missing_keys: Iterable[str]) -> list[str]:
    """The parameters of ``model``'s task head (:func:`head_modules`) that the checkpoint had values for (not in
    ``from_pretrained``'s ``missing_keys``), sorted."""
    missing = set(missing_keys)
    return sorted(f"{module_name}.{name}" for module_name, module in head_modules(model).items()
                  for name, _ in module.named_parameters(recurse=False) if f"{module_name}.{name}" not in missing)


def load_pretrained(model_class: Any, path: str | Path, *, new_head_seed: int | None = None,
                    **kwargs: Any) -> nn.Module:
    """``model_class.from_pretrained(path, **kwargs)`` with :data:`PLAIN_MODULES`, in float32 (the module
    docstring says why); the new head and pooler it creates are reported by transformers' load report.

    Args:
        new_head_seed: when given, the task head starts new, seeded by it, also where the checkpoint has one
            of its own (a sequence classifier's: :func:`renew_head`); a head the checkpoint lacks is the one
            transformers initialised.

    Raises:
        ValueError: the checkpoint lacks a weight of the body (:func:`missing_body_weights`), which
            transformers would initialise at random and only log.
    """
    model, info = model_class.from_pretrained(str(path), output_loading_info=True, dtype=torch.float32,
                                                **PLAIN_MODULES, **kwargs)
    missing = missing_body_weights(model, info["missing_keys"])
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{path}: the checkpoint has no values for {len(missing)} weights of the "
                         f"{type(model).__name__} body ({shown}): they would start at random; is it the "
                         "folder of this model, saved whole?")
    if new_head_seed is not None and loaded_head(model, info["missing_keys"]):
        renew_head(model, new_head_seed)
    return model
