"""A model's parameters by name, each once, under the name training, selection and SFT files use.

``nn.Module.named_parameters()`` yields a parameter registered under several names (tied weights:
a masked-LM decoder sharing the word embeddings) once, under the name of whichever module was
registered first. That is the body's name in ``BertForMaskedLM`` (``bert`` comes before ``cls``)
but the head's in transformers 5's ``XLMRobertaForMaskedLM`` (``lm_head`` before ``roberta``), so
the word embeddings would be called ``lm_head.decoder.weight``: grouped with the head, never
eligible for a language SFT, trained densely and shipped whole by a task SFT.
:func:`named_parameter_map` names such a parameter by its place in the transformer body, whatever
the registration order; every layer of deftx looks parameters up through it.
"""

from __future__ import annotations

from torch import nn


def body_prefix(model: nn.Module) -> str:
    """Dotted path of the transformer body inside ``model`` ("" when model is the body).

    The body is the module a ``transformers`` wrapper exposes as ``base_model`` (e.g.
    ``bert`` inside ``BertForSequenceClassification``). Modules that are not
    ``PreTrainedModel`` wrappers are searched for the first sub-module that is its own
    ``base_model``.

    Raises:
        ValueError: no transformer body was found.
    """
    prefix = getattr(model, "base_model_prefix", None)
    if prefix and isinstance(getattr(model, prefix, None), nn.Module):
        return prefix
    for name, module in model.named_modules():
        if getattr(module, "base_model", None) is module:
            return name
    raise ValueError(
        f"{type(model).__name__} holds no transformers base model (a module whose "
        "`base_model` is itself); pass the eligible parameter names explicitly"
    )


def _body_prefix_or_none(model: nn.Module) -> str | None:
    try:
        return body_prefix(model)
    except ValueError:
        return None


def _preferred_name(names: list[str], prefix: str | None) -> str:
    """Of a parameter's names (registration order), the first inside the body, else the first."""
    if prefix:
        inside = [name for name in names if name.startswith(prefix + ".")]
        if inside:
            return inside[0]
    return names[0]


def _names_by_parameter(model: nn.Module) -> list[tuple[nn.Parameter, list[str]]]:
    """Each parameter once (``named_parameters()`` order) with all its names, the one to use first."""
    prefix = _body_prefix_or_none(model)
    found: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        found.setdefault(id(param), (param, []))[1].append(name)
    named = []
    for param, names in found.values():
        chosen = _preferred_name(names, prefix)
        named.append((param, [chosen, *(name for name in names if name != chosen)]))
    return named


def named_parameter_map(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> parameter, each parameter once, in ``named_parameters()`` order; a tied parameter under
    its name inside the transformer body (the module docstring says why)."""
    return {names[0]: param for param, names in _names_by_parameter(model)}


def tied_names(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Every name of a parameter registered under several names (tied weights) -> all its names, the
    :func:`named_parameter_map` one first; parameters with one name are left out."""
    return {name: tuple(names) for _, names in _names_by_parameter(model) if len(names) > 1 for name in names}


def parameter_aliases(model: nn.Module) -> dict[str, str]:
    """Every other name of a tied parameter -> its :func:`named_parameter_map` name (empty when
    nothing is tied)."""
    return {alias: names[0] for _, names in _names_by_parameter(model) for alias in names[1:]}
