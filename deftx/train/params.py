"""Parameter bookkeeping shared by the training steps: groups, eligibility, θ snapshots.

A transformer is split into named groups so that eligibility, denoising and the
per-group reports all speak the same language:

* ``word_embeddings`` — the token embedding matrix (96.0M of e5-small's 117.5M): the body's input
  embeddings (``get_input_embeddings()``) whatever their name (``wte``, ``tok_embeddings``, ``shared``).
* ``embeddings`` — the other embedding tables (positions, token types, relative positions): every
  other ``nn.Embedding`` of the body, and the body's parameters named ``embeddings``.
* ``attention`` — query / key / value / attention-output weights and biases (T5's ``SelfAttention`` too).
* ``ffn`` — intermediate and output dense weights and biases (T5's ``DenseReluDense``, ALBERT's
  ``ffn_output``, ``fc1`` / ``fc2``).
* ``layer_norm`` — every LayerNorm weight and bias.
* ``head`` — everything outside the transformer body (classifier, MLM head) and the
  pooler: trained densely and, for task SFTs, shipped as dense tensors.
* ``other`` — anything in the body that matches none of the above.

Parameter names are :func:`deftx.models.parameters.named_parameter_map`'s: the model's own
``named_parameters()`` names, a tied parameter under its name in the body. A parameter may be a
DTensor (FSDP2's ``Shard(0)``): snapshots stay DTensors placed like the parameter, and every
in-place write goes to the entries this rank holds (:func:`local_tensor`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from deftx.models.parameters import body_prefix, named_parameter_map

PARAMETER_GROUPS: tuple[str, ...] = (
    "word_embeddings",
    "embeddings",
    "attention",
    "ffn",
    "layer_norm",
    "head",
    "other",
)

_LAYER_NORM = re.compile(r"(layernorm|layer_norm|(^|\.)ln(_\w+)?\.|(^|\.)norm\d*\.|_norm\.)", re.I)
_ATTENTION = re.compile(r"(^|\.)\w*(attention|attn)\.", re.I)
_FFN = re.compile(r"(^|\.)(intermediate|output|mlp|ffn|ffn_output|feed_forward|densereludense|fc\d)\.", re.I)
_POOLER = re.compile(r"(^|\.)pooler\.")


def canonical_names(model: nn.Module) -> dict[str, str]:
    """Model name -> the name an SFT stores it under.

    Body parameters are stored as ``<body's base_model_prefix>.<name inside the body>``
    (``bert.encoder.layer.0...``), the names of the standard ``BertFor*`` wrappers,
    whatever module holds the body during training (e.g. deftx's frozen-decoder MLM
    model keeps it as ``body``). Head parameters keep their names. So a language SFT
    trained on an MLM model applies to a sequence classifier (and, through
    :func:`deftx.sft.apply_diffs`' prefix handling, to a bare body).
    """
    prefix = body_prefix(model)
    body = model.get_submodule(prefix) if prefix else model
    canonical = getattr(body, "base_model_prefix", "") or prefix
    names = {}
    for name in named_parameter_map(model):
        if prefix and name.startswith(prefix + "."):
            names[name] = f"{canonical}.{name[len(prefix) + 1:]}"
        elif not prefix and canonical:
            names[name] = f"{canonical}.{name}"
        else:
            names[name] = name
    return names


def parameter_group(name: str, prefix: str) -> str:
    """The group (one of :data:`PARAMETER_GROUPS`) of parameter ``name``.

    Args:
        name: a :func:`~deftx.models.parameters.named_parameter_map` name of the model.
        prefix: the body prefix from :func:`body_prefix` ("" if the model is the body).
    """
    if prefix and not name.startswith(prefix + "."):
        return "head"
    if _POOLER.search(name):
        return "head"
    if _LAYER_NORM.search(name):
        return "layer_norm"
    if "word_embeddings" in name or "embed_tokens" in name:
        return "word_embeddings"
    if "embeddings" in name or "embed_positions" in name:
        return "embeddings"
    if _ATTENTION.search(name):
        return "attention"
    if _FFN.search(name):
        return "ffn"
    return "other"


def embedding_tables(model: nn.Module, prefix: str) -> tuple[nn.Parameter | None, set[int]]:
    """The body's input (word) embedding weight (None when the body names none) and the ``id`` of
    every other ``nn.Embedding`` weight in the body (positions, token types, relative positions)."""
    body = model.get_submodule(prefix) if prefix else model
    try:
        inputs = body.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        inputs = None
    word = getattr(inputs, "weight", None)
    word = word if isinstance(word, nn.Parameter) else None
    tables = {id(module.weight) for module in body.modules() if isinstance(module, nn.Embedding)}
    return word, tables - {id(word)}


def parameter_groups(model: nn.Module) -> dict[str, str]:
    """Name -> group for every parameter of ``model``: :func:`parameter_group` of its name, but the
    body's embedding tables by module (:func:`embedding_tables`), whatever their names."""
    prefix = body_prefix(model)
    word, tables = embedding_tables(model, prefix)
    groups = {}
    for name, param in named_parameter_map(model).items():
        if param is word:
            groups[name] = "word_embeddings"
        elif id(param) in tables:
            groups[name] = "embeddings"
        else:
            groups[name] = parameter_group(name, prefix)
    return groups


DENSE_GROUP = "head"
"""The parameter group trained densely beside every SFT: never an eligible (sparse) group."""
ELIGIBLE_GROUPS: tuple[str, ...] = tuple(group for group in PARAMETER_GROUPS if group != DENSE_GROUP)
"""The groups an SFT may select entries from."""


def check_eligible(groups: Iterable[str]) -> tuple[str, ...]:
    """``groups`` as a tuple, checked to be eligible groups (:data:`ELIGIBLE_GROUPS`), at least one.

    Raises:
        ValueError: a bare string (not a list of names), no group, the densely trained head, or a name
            that is no parameter group.
    """
    if isinstance(groups, str):
        raise ValueError(f"expected a list of parameter group names, got the string {groups!r} (write ({groups!r},))")
    groups = tuple(groups)
    if not groups:
        raise ValueError(f"expected at least one of the parameter groups {list(ELIGIBLE_GROUPS)}, got []")
    if DENSE_GROUP in groups:
        raise ValueError(f"{DENSE_GROUP!r} is trained densely beside every SFT and cannot be an eligible (sparse) "
                         f"group; the eligible ones: {list(ELIGIBLE_GROUPS)}")
    unknown = [group for group in groups if group not in PARAMETER_GROUPS]
    if unknown:
        raise ValueError(f"unknown parameter groups {unknown}; known: {list(ELIGIBLE_GROUPS)}")
    return groups


def eligible_parameter_names(model: nn.Module, groups: Iterable[str]) -> list[str]:
    """Names of the parameters whose group is in ``groups`` (model order).

    Raises:
        ValueError: groups :func:`check_eligible` refuses, or no parameter of the model in them.
    """
    wanted = set(check_eligible(groups))
    names = [name for name, group in parameter_groups(model).items() if group in wanted]
    if not names:
        raise ValueError(f"no parameter of {type(model).__name__} is in the groups {sorted(wanted)}")
    return names


def decay_parameter_names(model: nn.Module) -> list[str]:
    """The parameter names a ``transformers.Trainer`` would apply weight decay to: all but biases and
    norms (``Trainer.get_decay_parameter_names``, which reads nothing of the trainer itself)."""
    from transformers import Trainer

    return Trainer.get_decay_parameter_names(None, model)  # type: ignore[arg-type]


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The entries this rank holds of ``tensor`` (its shard for a DTensor, else itself), detached, sharing storage.

    A plain tensor is only detached (no grad-mode switch: an optimizer step calls this for
    every parameter and gradient)."""
    if not isinstance(tensor, DTensor):
        return tensor.detach()
    with torch.no_grad():
        return tensor.to_local().detach()


def snapshot(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Detached contiguous copies of the named parameters (same dtype and device; a DTensor copies its shard)."""
    params = named_parameter_map(model)
    return {name: params[name].detach().clone().contiguous() for name in names}


@torch.no_grad()
def load_values_(model: nn.Module, values: Mapping[str, torch.Tensor]) -> None:
    """Copy ``values`` into the model's parameters in place (bit-exact for equal dtypes; a DTensor
    parameter takes the shard this rank holds of a value placed like it).

    Raises:
        KeyError: a name the model does not have.
        ValueError: a shape mismatch.
    """
    params = named_parameter_map(model)
    for name, value in values.items():
        if name not in params:
            raise KeyError(f"the model has no parameter {name!r}")
        if params[name].shape != value.shape:
            raise ValueError(
                f"{name}: stored shape {tuple(value.shape)} != model shape {tuple(params[name].shape)}"
            )
        local_tensor(params[name]).copy_(local_tensor(value))


def count_by_group(counts: Mapping[str, int], groups: Mapping[str, str]) -> dict[str, int]:
    """Sum per-parameter counts into per-group counts (groups with zero omitted)."""
    totals: dict[str, int] = {}
    for name, count in counts.items():
        group = groups[name]
        totals[group] = totals.get(group, 0) + int(count)
    return {group: totals[group] for group in PARAMETER_GROUPS if totals.get(group)}
