"""Run identity: what a work directory's results depend on, recorded beside them.

Every step that writes results into a folder (phase 1 of a sparse fine-tuning, each of its
selection branches, the full fine-tuning baseline) first *claims* the folder with its
identity: a JSON-ready mapping of everything its results depend on — the base model's
weights (a digest of every parameter and buffer), its class and configuration (dropout,
activation...), the data (a digest of every example),
the seed and the other result-changing ``TrainingArguments``, the step's settings, the
eligible parameters, and the version of deftx's work-directory format. :func:`claim`
writes it to ``identity.json``, and on a later run:

* the same identity: the folder's results are resumed (or reused when finished);
* another identity, or results without a record (an older deftx, or files put there by
  hand): refused with :class:`IdentityMismatchError`, which names every field that
  changed — unless ``overwrite=True``, which removes the step's stale results first.

A step holds its folder for as long as it runs (:func:`owned`): a second process starting the
same folder meanwhile is refused, naming the first, instead of training over it.

The same identities key :class:`~deftx.train.store.LinkedStepStore` (finished steps shared
between runs by hard links): a work directory and a step store never disagree about what
"the same step" is. One digest function (:func:`digest`) serves both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import shutil
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from deftx.files import atomic_write_bytes, exclusive, lock_beside

RUN_FORMAT = 5
"""Version of the work-directory layout and of what its identity records (1: θ0 copied into every run,
no identity records; 2: identities without the collator's settings, the device or the SFTs' info;
3: without the model's class and configuration; 4: without the backends of a branch's ops). A Trainer's
``optimizer_cls_and_kwargs`` and ``compute_loss_func`` are recorded only where set, so identities of before
they were recorded stay valid (a run of before that set one is taken for a run that sets none)."""
IDENTITY_FILE = "identity.json"
DAMAGED = f"({IDENTITY_FILE})"
"""The one key of what :func:`read_identity` returns for a damaged record (unreadable, or not a JSON object):
what is wrong with it (:func:`damage`)."""
SHORT_DIGEST = 12
MAX_NAMED = 3
MAX_SETTINGS_DEPTH = 16
"""Values nested deeper than this (levels of objects, mappings, sequences) in settings are refused (a cycle?)."""
MODEL_CONFIG_LEFT_OUT = ("_name_or_path", "deftx_base_model", "transformers_version", "architectures", "id2label",
                         "label2id", "problem_type", "use_cache")
"""Entries of a model's configuration that do not change what it trains to: where it was loaded from and
the base it names (:func:`deftx.sft.apply.remember_base_model`: a path, where the cache folder moves), the
version that saved it, the class and label names it records, the key-value cache of generation, and
``problem_type``, which a classifier's forward sets itself from its labels when unset."""


class IdentityMismatchError(ValueError):
    """A work directory holds results of a run with another identity (or of an unknown one).

    Attributes:
        folder: the work directory.
        changes: one line per field that changed (``"k: 4224 -> 211"``).
    """

    def __init__(self, folder: Path, changes: Sequence[str]) -> None:
        self.folder = folder
        self.changes = list(changes)
        super().__init__(
            f"{folder} holds results of another run: " + "; ".join(self.changes)
            + ". Pass overwrite=True (on the command line: --overwrite) to discard them and run again, "
            "or use another folder"
        )


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys and no spaces (tuples become lists)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def digest(value: Any) -> str:
    """SHA-256 (hex) of a JSON-ready value in canonical form: equal values, equal digests."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _update_with_tensor(hasher: Any, tensor: torch.Tensor) -> None:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    hasher.update(f"{flat.dtype}|{tuple(tensor.shape)};".encode())
    if flat.numel():
        hasher.update(flat.view(torch.uint8).numpy())


def tensors_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over ``(name, tensor)`` pairs in the given order: names, dtypes, shapes and bytes."""
    hasher = hashlib.sha256()
    for name, tensor in named:
        hasher.update(f"{name}|".encode())
        _update_with_tensor(hasher, tensor)
    return hasher.hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """Digest of every parameter and buffer of ``model`` (its weights, bit for bit, and their names)."""
    named = [*model.named_parameters(), *((f"buffer:{n}", b) for n, b in model.named_buffers())]
    return tensors_digest(named)


def model_settings(model: torch.nn.Module) -> dict[str, Any]:
    """What ``model`` computes from its weights depends on, JSON-ready: its class, its configuration
    (``config.to_dict()``: dropout, activation, layer-norm epsilon, pooling...) less
    :data:`MODEL_CONFIG_LEFT_OUT`, and its attention implementation."""
    config = getattr(model, "config", None)
    plain = config.to_dict() if callable(getattr(config, "to_dict", None)) else {}
    kept = {key: value for key, value in plain.items() if key not in MODEL_CONFIG_LEFT_OUT}
    return {
        "class": callable_name(model),
        "config": json.loads(json.dumps(kept, sort_keys=True, default=str)),
        "attention": getattr(config, "_attn_implementation", None),
    }


def _update_with_value(hasher: Any, value: Any) -> None:
    """Feed a data-set example (nested mappings, sequences, tensors, arrays, scalars) to ``hasher``."""
    if isinstance(value, torch.Tensor):
        hasher.update(b"T")
        _update_with_tensor(hasher, value)
    elif hasattr(value, "__array__") and hasattr(value, "dtype"):
        hasher.update(b"T")
        _update_with_tensor(hasher, torch.as_tensor(value))
    elif isinstance(value, Mapping):
        hasher.update(b"{")
        for key in sorted(value, key=str):
            hasher.update(json.dumps(str(key)).encode() + b":")
            _update_with_value(hasher, value[key])
        hasher.update(b"}")
    elif isinstance(value, (list, tuple)):
        hasher.update(b"[")
        for item in value:
            _update_with_value(hasher, item)
            hasher.update(b",")
        hasher.update(b"]")
    elif value is None or isinstance(value, (str, int, float, bool)):
        hasher.update(json.dumps(value).encode())
    else:
        raise TypeError(f"cannot digest a data-set value of type {type(value).__name__}")


def callable_name(value: Any) -> str | None:
    """``module.QualifiedName`` of a function, or of an object's class; None for None."""
    if value is None:
        return None
    target = value if callable(value) and hasattr(value, "__qualname__") else type(value)
    return f"{target.__module__}.{target.__qualname__}"


_VOCABULARY_DIGESTS: weakref.WeakKeyDictionary[Any, tuple[Any, str]] = weakref.WeakKeyDictionary()


def _vocabulary_state(tokenizer: Any) -> Any:
    """What changes when ``tokenizer``'s vocabulary is changed in place through its API: its size (added
    tokens included) and its added tokens (``add_tokens`` / ``add_special_tokens``); None for an object
    without ``__len__`` or ``get_added_vocab``."""
    if not (hasattr(tokenizer, "__len__") and callable(getattr(tokenizer, "get_added_vocab", None))):
        return None
    return len(tokenizer), sorted(tokenizer.get_added_vocab().items())


def vocabulary_digest(tokenizer: Any) -> str:
    """:func:`digest` of ``tokenizer.get_vocab()``, worked out once per tokenizer object and vocabulary state.

    A 250k-word vocabulary takes ~1 s to read and digest, and a pipeline records its tokenizer in the
    identity of every step: the digest is kept beside the object (weakly) with the state it was
    taken at (:func:`_vocabulary_state`), and taken again once that state changes. An object without
    such a state, or that cannot be weakly referenced, is digested every time. A vocabulary changed
    behind the tokenizer's API (its backend's model replaced by another of the same size) is not seen:
    load a new tokenizer object for that.
    """
    state = _vocabulary_state(tokenizer)
    try:
        kept = _VOCABULARY_DIGESTS.get(tokenizer) if state is not None else None
    except TypeError:
        state = None
        kept = None
    if kept is not None and kept[0] == state:
        return kept[1]
    value = digest(tokenizer.get_vocab())
    if state is not None:
        _VOCABULARY_DIGESTS[tokenizer] = (state, value)
    return value


def _tokenizer_settings(tokenizer: Any) -> dict[str, Any]:
    return {
        "vocabulary": vocabulary_digest(tokenizer),
        "special_tokens": json.loads(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)),
        "padding_side": tokenizer.padding_side,
    }


def _object_settings(value: Any) -> Any:
    """The settings of an object that is not a JSON value: see :func:`settings_identity`."""
    if callable(getattr(value, "identity_settings", None)):
        return value.identity_settings()
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if callable(getattr(value, "get_vocab", None)) and hasattr(value, "special_tokens_map"):
        return _tokenizer_settings(value)
    if isinstance(value, functools.partial):
        return {"function": value.func, "args": list(value.args), "keywords": value.keywords}
    if hasattr(value, "__dict__"):
        return vars(value)
    raise TypeError(
        f"cannot tell what a {type(value).__name__} depends on: give its owner an identity_settings() method "
        "returning everything its results depend on (JSON values, tensors or such objects)"
    )


def settings_identity(value: Any, depth: int = 0) -> Any:
    """What ``value`` (e.g. a Trainer's data collator) does depends on, JSON-ready; equal settings, equal identities.

    Recorded, by the first rule that applies:

    * JSON values as they are; mappings and sequences item by item; tensors and arrays by a
      digest of their dtype, shape and bytes;
    * functions and classes by their qualified name (what a function closes over is not
      recorded: give such a collator an ``identity_settings()`` method);
    * every other object as ``{"class": its qualified name, "settings": ...}``, its settings
      (recorded by these same rules) being the first of: what its ``identity_settings()``
      method returns (the protocol for an object to say it itself, e.g.
      :class:`deftx.train.masking.MLMCollator`); a dataclass's fields; a tokenizer's vocabulary
      (digested), special tokens and padding side; a ``functools.partial``'s function and
      arguments; the object's attributes (``vars``), every one of them.

    Raises:
        TypeError: a value none of these rules records (e.g. a ``torch.Generator`` held by an
            object without ``identity_settings()``), or values nested more than
            :data:`MAX_SETTINGS_DEPTH` levels deep (a cycle?): naming the type, so nothing is
            silently left out.
    """
    if depth > MAX_SETTINGS_DEPTH:
        raise TypeError(f"settings nested more than {MAX_SETTINGS_DEPTH} levels deep (a cycle?) at a "
                        f"{type(value).__name__}: give its owner an identity_settings() method")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, torch.Tensor) or (hasattr(value, "__array__") and hasattr(value, "dtype")):
        return {"tensor": tensors_digest([("", torch.as_tensor(value))])}
    if isinstance(value, Mapping):
        return {str(key): settings_identity(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [settings_identity(item, depth + 1) for item in items]
    if inspect.isroutine(value) or inspect.isclass(value):
        return callable_name(value)
    return {"class": callable_name(value), "settings": settings_identity(_object_settings(value), depth + 1)}


def data_digest(dataset: Any) -> str:
    """Digest of every example of a map-style data set (a list, a ``datasets.Dataset``, a torch ``Dataset``).

    Examples are read with ``dataset[i]`` and hashed by content: mappings by key, tensors and
    arrays by dtype, shape and bytes, scalars and strings as JSON.

    Raises:
        TypeError: the data set has no length or no indexing (an iterable data set), or holds
            values that cannot be digested: pass the tuner a ``data_digest`` of your own then.
    """
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(
            f"cannot digest a {type(dataset).__name__} data set (no length or indexing, e.g. an iterable data "
            "set): pass data_digest=... (any string that changes when the data do)"
        )
    hasher = hashlib.sha256()
    for index in range(len(dataset)):
        _update_with_value(hasher, dataset[index])
        hasher.update(b"\n")
    return hasher.hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix or "(identity)": value}


def _describe_value(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:SHORT_DIGEST] + "…"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _some(items: list) -> str:
    shown = ", ".join(map(str, items[:MAX_NAMED]))
    return f"{len(items)} ({shown}{', …' if len(items) > MAX_NAMED else ''})"


def _describe_lists(key: str, old: list, new: list) -> str:
    added = [item for item in new if item not in old]
    removed = [item for item in old if item not in new]
    parts = ([f"+{_some(added)}"] if added else []) + ([f"-{_some(removed)}"] if removed else [])
    return f"{key}: {len(old)} -> {len(new)} entries" + (f", {' '.join(parts)}" if parts else ", reordered")


def describe_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """One line per field (dotted path) that differs between two identities: ``"k: 4224 -> 211"``."""
    old, new = _flatten(recorded), _flatten(current)
    lines = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            lines.append(f"{key}: added ({_describe_value(new[key])})")
        elif key not in new:
            lines.append(f"{key}: removed (was {_describe_value(old[key])})")
        elif old[key] != new[key]:
            if isinstance(old[key], list) and isinstance(new[key], list) and max(len(old[key]), len(new[key])) > 4:
                lines.append(_describe_lists(key, old[key], new[key]))
            else:
                lines.append(f"{key}: {_describe_value(old[key])} -> {_describe_value(new[key])}")
    return lines


def normalised(identity: Mapping[str, Any]) -> dict[str, Any]:
    """``identity`` as JSON reads it back (tuples become lists), so a recorded copy compares equal."""
    return json.loads(canonical_json(dict(identity)))


def read_identity(folder: Path) -> dict[str, Any] | None:
    """The identity recorded in ``folder``: None when there is none, ``{DAMAGED: what is wrong}`` when it is
    not a JSON object."""
    path = folder / IDENTITY_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {DAMAGED: "unreadable"}
    return record if isinstance(record, dict) else {DAMAGED: "not a JSON object"}


def damage(recorded: Mapping[str, Any] | None) -> str | None:
    """What is wrong with a record :func:`read_identity` read from a damaged file ("unreadable", "not a JSON
    object"); None for an intact record or none."""
    return recorded.get(DAMAGED) if recorded is not None and set(recorded) == {DAMAGED} else None


def write_identity(folder: Path, identity: Mapping[str, Any]) -> None:
    """Record ``identity`` in ``folder`` (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(normalised(identity), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(folder / IDENTITY_FILE, text.encode())


def remove_outputs(folder: Path, outputs: Iterable[str]) -> None:
    """Delete the named files and folders under ``folder`` (missing ones are fine: another rank may be first)."""
    for name in outputs:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def stale_results(folder: Path, identity: Mapping[str, Any], outputs: Sequence[str]) -> list[str]:
    """Why ``folder``'s results are not those of ``identity``: one line per changed field; [] when they
    are (the same identity is recorded) or when there are none (a record alone is no result).

    ``outputs``: the step's results, relative to ``folder`` (files or folders).
    """
    recorded = read_identity(folder)
    if recorded == normalised(identity):
        return []
    stale = [name for name in outputs if (folder / name).exists()]
    if not stale:
        return []
    if recorded is None:
        return [f"its results ({', '.join(stale[:MAX_NAMED])}) have no {IDENTITY_FILE}: written by an older deftx "
                "or by hand, so what they depend on is unknown"]
    if damage(recorded):
        return [f"its {IDENTITY_FILE} is {damage(recorded)} (damaged, or edited by hand), so what its results "
                f"({', '.join(stale[:MAX_NAMED])}) depend on is unknown"]
    return describe_changes(recorded, normalised(identity)) or ["identity.json differs"]


def claim(folder: Path, identity: Mapping[str, Any], outputs: Sequence[str], *, overwrite: bool = False) -> bool:
    """Make ``folder`` hold the results of the step with ``identity`` (see the module docstring).

    Args:
        folder: the step's work directory.
        identity: what the step's results depend on (JSON-ready).
        outputs: the step's results, relative to ``folder`` (files or folders): what a
            different identity invalidates and ``overwrite`` removes.
        overwrite: discard stale results instead of refusing them.

    Returns:
        True when stale results were discarded.

    Raises:
        IdentityMismatchError: the folder holds results of another identity (or results
            without a record) and ``overwrite`` is not set; nothing is changed then.
    """
    changes = stale_results(folder, identity, outputs)
    if changes and not overwrite:
        raise IdentityMismatchError(folder, changes)
    if changes:
        remove_outputs(folder, outputs)
    if read_identity(folder) != normalised(identity):
        write_identity(folder, identity)
    return bool(changes)


@contextlib.contextmanager
def owned(folder: Path, *, holder: bool = True) -> Iterator[None]:
    """Let one process at a time train in the work directory ``folder``: hold its lock
    (:func:`deftx.files.exclusive`, ``.lock-<folder name>`` beside it) for the block when ``holder`` (the
    main process of a multi-process job; the others train beside it and take no lock).

    Raises:
        BusyError: another process trains in ``folder`` (naming it); nothing is changed.
    """
    if not holder:
        yield
        return
    with exclusive(lock_beside(folder), f"work folder {folder}",
                   "two runs training in one folder resume from each other's checkpoints and mix their logs: wait "
                   "for that run (a later run reuses its finished steps), or give this one another folder"):
        yield
