"""Parameter shape sets of real models, a JSON format for custom ones, and how to shrink them.

A :class:`ShapeSet` is an ordered list of named tensor shapes: the parameters whose
synthetic stand-ins the benchmarks run on, the profile's roofline prices
(:mod:`deftx.perf.workload`) and the distributed scaling table counts
(:mod:`deftx.distributed.scaling`). Every model shape is defined here, once. The built-in sets
reproduce the parameter shapes of public architectures (no weights are read); ``--scale F``
keeps a fraction ``F`` of the encoder/decoder layers and of the vocabulary rows so CPU runs
stay short. LayerNorm / RMSNorm weights are marked ``frozen``: sparse fine-tuning never
selects them (as in the LT-SFT reference code); the benchmarks run on every tensor.

Custom sets are JSON files::

    {
      "name": "my-model",
      "tensors": [{"name": "embed.weight", "shape": [32000, 512], "vocab": true},
                  {"name": "final_norm.weight", "shape": [512]}],
      "num_layers": 4,
      "layer_tensors": [{"name": "attn.q.weight", "shape": [512, 512]}]
    }

``tensors`` appear once; ``layer_tensors`` are repeated ``num_layers`` times (named
``layers.<i>.<name>``); ``"vocab": true`` marks tensors whose first dimension is the
vocabulary (scaled by ``--scale``), ``"frozen": true`` tensors never selected. At least one
of ``tensors`` / ``layer_tensors``.

The flat form of ``deftx profile``'s workload files (:mod:`deftx.perf.workload`) is read too,
the same shapes without layers or vocabulary marks::

    {"name": "my-model", "parameters": {"embed.weight": [32000, 512], "norm.weight": [512]},
     "frozen": ["norm.weight"], "description": "...", "dtype": "fp32", "settings": {"rank": 16}}

``description`` is the set's ``note``. A file holds one form or the other. Either form may
carry ``dtype`` and ``settings`` (:data:`PROFILE_ONLY_KEYS`): they describe ``deftx profile``'s
run, not shapes, and :func:`read_shape_spec` hands them to the caller as written.

Every shape is a non-empty list of integers >= 0 (a scalar parameter is ``[1]``), the same
rule for ``deftx bench`` and ``deftx profile``, which read files through this module alone; a key
given twice in one object is refused.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from deftx.text import repeated, short_repr, strict_json_file


@dataclass(frozen=True)
class TensorShape:
    """One parameter: its name, shape, whether dimension 0 is the vocabulary and whether it is
    frozen (never selected by sparse fine-tuning: norm weights)."""

    name: str
    shape: tuple[int, ...]
    vocab: bool = False
    frozen: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ShapeSet:
    """An ordered set of parameter shapes.

    Attributes:
        name: the set's name (``xlmr-base``, a file's ``name``, ...).
        tensors: tensors that appear once (embeddings, final norms, heads).
        num_layers: how many times ``layer_tensors`` repeat.
        layer_tensors: the shapes of one layer.
        note: how the set was derived (scaling, chunking), shown in reports.
    """

    name: str
    tensors: tuple[TensorShape, ...] = ()
    num_layers: int = 0
    layer_tensors: tuple[TensorShape, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        if self.num_layers < 0:
            raise ValueError(f"shape set {self.name!r}: num_layers must be >= 0, got {self.num_layers}")
        for t in (*self.tensors, *self.layer_tensors):
            if any(d < 0 for d in t.shape):
                raise ValueError(f"shape set {self.name!r}: tensor {t.name!r} has a negative dimension {t.shape}")
        twice = repeated(t.name for t in self.flat())
        if twice:
            raise ValueError(f"shape set {self.name!r}: tensor name {twice[0]!r} appears twice")

    @functools.cached_property
    def _flat(self) -> tuple[TensorShape, ...]:
        layers = tuple(
            replace(t, name=f"layers.{i}.{t.name}") for i in range(self.num_layers) for t in self.layer_tensors
        )
        return (*self.tensors, *layers)

    def flat(self) -> tuple[TensorShape, ...]:
        """Every tensor in order: the once-tensors, then layer 0, layer 1, ..."""
        return self._flat

    @property
    def numel(self) -> int:
        """Total parameter count."""
        return sum(t.numel for t in self.flat())

    def eligible(self) -> tuple[TensorShape, ...]:
        """The tensors sparse fine-tuning may select (every one not frozen), in order."""
        return tuple(t for t in self.flat() if not t.frozen)

    def matrices(self) -> tuple[TensorShape, ...]:
        """The eligible 2-D tensors (what DeFT-X denoises)."""
        return tuple(t for t in self.eligible() if len(t.shape) == 2)

    def scaled(self, fraction: float) -> ShapeSet:
        """Keep ``round(fraction * num_layers)`` layers (at least 1) and that share of vocab rows.

        ``fraction`` is in (0, 1]; 1 returns the set unchanged.
        """
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"scale must be in (0, 1], got {fraction}")
        if fraction == 1.0:
            return self
        layers = max(1, round(fraction * self.num_layers)) if self.num_layers else 0
        tensors = tuple(
            replace(t, shape=(max(1, round(fraction * t.shape[0])), *t.shape[1:])) if t.vocab and t.shape else t
            for t in self.tensors
        )
        scaled = replace(self, tensors=tensors, num_layers=layers)
        note = (
            f"scale {fraction:g} of {self.name}: {layers} of {self.num_layers} layers, vocab rows x{fraction:g} "
            f"({scaled.numel:,} of {self.numel:,} parameters)"
        )
        return replace(scaled, note=note)

    def chunks(self, max_numel: int) -> list[ShapeSet]:
        """Split into consecutive sets of at most ``max_numel`` parameters (streaming).

        A tensor larger than ``max_numel`` forms a chunk of its own. Names are kept,
        so synthetic data (seeded by name) is the same whether chunked or not.
        """
        if max_numel <= 0:
            raise ValueError(f"chunk size must be positive, got {max_numel}")
        groups: list[list[TensorShape]] = [[]]
        size = 0
        for t in self.flat():
            if groups[-1] and size + t.numel > max_numel:
                groups.append([])
                size = 0
            groups[-1].append(t)
            size += t.numel
        return [
            ShapeSet(name=self.name, tensors=tuple(g), note=f"chunk {i + 1}/{len(groups)} of {self.name}")
            for i, g in enumerate(groups)
            if g
        ]

    def to_json(self) -> dict:
        """The JSON form (the custom-file format); ``load_shape_set`` reads it back."""

        def entry(t: TensorShape) -> dict:
            flags = {flag: True for flag in ("vocab", "frozen") if getattr(t, flag)}
            return {"name": t.name, "shape": list(t.shape), **flags}

        return {
            "name": self.name,
            "tensors": [entry(t) for t in self.tensors],
            "num_layers": self.num_layers,
            "layer_tensors": [entry(t) for t in self.layer_tensors],
            **({"note": self.note} if self.note else {}),
        }


def _t(name: str, *shape: int, vocab: bool = False, frozen: bool = False) -> TensorShape:
    return TensorShape(name, tuple(shape), vocab, frozen)


def _norm(name: str, width: int) -> tuple[TensorShape, ...]:
    """A LayerNorm's weight and bias (frozen)."""
    return _t(f"{name}.weight", width, frozen=True), _t(f"{name}.bias", width, frozen=True)


def bert_like(
    name: str, *, vocab: int, positions: int, token_types: int, hidden: int, ffn: int, layers: int
) -> ShapeSet:
    """A BERT / XLM-R encoder: embeddings (+ LayerNorm) and post-LN layers, no pooler or head."""
    h = hidden
    once = (
        _t("embeddings.word_embeddings.weight", vocab, h, vocab=True),
        _t("embeddings.position_embeddings.weight", positions, h),
        _t("embeddings.token_type_embeddings.weight", token_types, h),
        *_norm("embeddings.LayerNorm", h),
    )
    layer = []
    for proj in ("query", "key", "value"):
        layer += [_t(f"attention.self.{proj}.weight", h, h), _t(f"attention.self.{proj}.bias", h)]
    layer += [
        _t("attention.output.dense.weight", h, h),
        _t("attention.output.dense.bias", h),
        *_norm("attention.output.LayerNorm", h),
        _t("intermediate.dense.weight", ffn, h),
        _t("intermediate.dense.bias", ffn),
        _t("output.dense.weight", h, ffn),
        _t("output.dense.bias", h),
        *_norm("output.LayerNorm", h),
    ]
    return ShapeSet(name, once, layers, tuple(layer))


def llama_like(name: str, *, vocab: int, hidden: int, ffn: int, layers: int, kv_dim: int | None = None) -> ShapeSet:
    """A LLaMA decoder: embedding, untied LM head, RMSNorms, no biases (``kv_dim`` for GQA)."""
    h, kv = hidden, kv_dim or hidden
    once = (
        _t("embed_tokens.weight", vocab, h, vocab=True),
        _t("norm.weight", h, frozen=True),
        _t("lm_head.weight", vocab, h, vocab=True),
    )
    layer = (
        _t("self_attn.q_proj.weight", h, h),
        _t("self_attn.k_proj.weight", kv, h),
        _t("self_attn.v_proj.weight", kv, h),
        _t("self_attn.o_proj.weight", h, h),
        _t("mlp.gate_proj.weight", ffn, h),
        _t("mlp.up_proj.weight", ffn, h),
        _t("mlp.down_proj.weight", h, ffn),
        _t("input_layernorm.weight", h, frozen=True),
        _t("post_attention_layernorm.weight", h, frozen=True),
    )
    return ShapeSet(name, once, layers, layer)


BUILTIN_SHAPE_SETS: dict[str, ShapeSet] = {
    s.name: s
    for s in (
        bert_like("e5-small", vocab=250037, positions=512, token_types=2, hidden=384, ffn=1536, layers=12),
        bert_like("mbert", vocab=119547, positions=512, token_types=2, hidden=768, ffn=3072, layers=12),
        bert_like("xlmr-base", vocab=250002, positions=514, token_types=1, hidden=768, ffn=3072, layers=12),
        bert_like("xlmr-large", vocab=250002, positions=514, token_types=1, hidden=1024, ffn=4096, layers=24),
        llama_like("tinyllama-1.1b", vocab=32000, hidden=2048, ffn=5632, layers=22, kv_dim=256),
        llama_like("open-llama-3b", vocab=32000, hidden=3200, ffn=8640, layers=26),
        llama_like("llama-7b", vocab=32000, hidden=4096, ffn=11008, layers=32),
    )
}
"""Parameter shapes of public architectures, smallest first (117.5M to 6.74B parameters).

``llama-7b`` is also Llama-2-7B's shape (the two differ in training, not in shapes)."""

LLAMA_2_70B = llama_like("llama-2-70b", vocab=32000, hidden=8192, ffn=28672, layers=80, kv_dim=1024)
"""Llama-2-70B (grouped-query attention, 8 key/value heads of 128): the distributed scaling table."""

TINY = bert_like("tiny", vocab=1000, positions=128, token_types=2, hidden=64, ffn=256, layers=2)
"""A 2-layer BERT of width 64: CPU traces and tests of ``deftx profile``."""


def _dims(shape: object, where: str) -> tuple[int, ...]:
    """A tensor's shape: a non-empty list of integers >= 0 (a scalar is ``[1]``; a 0 makes an empty tensor,
    the kernels' edge case)."""
    if not isinstance(shape, list) or not shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ValueError(f"{where}: shape must be a non-empty list of integers >= 0, got {short_repr(shape)}")
    return tuple(shape)


def _flag(item: dict, flag: str, where: str) -> bool:
    value = item.get(flag, False)
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {flag!r} must be true or false, got {short_repr(value)}")
    return value


def _tensor_entries(raw: object, where: str) -> tuple[TensorShape, ...]:
    """The tensors of the layered form: a list of ``{"name", "shape", "vocab"?, "frozen"?}``."""
    if not isinstance(raw, list):
        raise ValueError(f"{where} must be a list of {{'name', 'shape'}} objects")
    entries = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or "shape" not in item:
            raise ValueError(f"{where}[{i}] must be an object with a string 'name' and a 'shape'")
        at = f"{where}[{i}] ({item['name']!r})"
        unknown = set(item) - {"name", "shape", "vocab", "frozen"}
        if unknown:
            raise ValueError(f"{at}: unknown keys {sorted(unknown)}")
        shape = _dims(item["shape"], at)
        entries.append(TensorShape(item["name"], shape, _flag(item, "vocab", at), _flag(item, "frozen", at)))
    return tuple(entries)


PROFILE_ONLY_KEYS = ("dtype", "settings")
"""Keys of ``deftx profile``'s run (its dtype and op settings), not shapes; either form may hold them."""
LAYERED_KEYS = frozenset({"name", "tensors", "num_layers", "layer_tensors", "note", *PROFILE_ONLY_KEYS})
"""Top-level keys of the layered form (``tensors`` / ``layer_tensors``)."""
FLAT_KEYS = frozenset({"name", "parameters", "frozen", "description", *PROFILE_ONLY_KEYS})
"""Top-level keys of the flat form (``deftx profile``'s workload file)."""


def _parameter_entries(parameters: object, frozen: object, source: str) -> tuple[TensorShape, ...]:
    """The tensors of the flat form: ``parameters`` name -> dims, ``frozen`` a list of their names."""
    if not isinstance(parameters, dict) or not parameters:
        raise ValueError(f"{source}: 'parameters' must be a non-empty object name -> shape")
    if not isinstance(frozen, list) or not all(isinstance(name, str) for name in frozen):
        raise ValueError(f"{source}: 'frozen' must be a list of parameter names, got {short_repr(frozen)}")
    unknown = sorted(set(frozen) - set(parameters))
    if unknown:
        raise ValueError(f"{source}: 'frozen' names unknown parameters {unknown}")
    return tuple(
        TensorShape(name, _dims(shape, f"{source}: parameters[{name!r}]"), frozen=name in frozen)
        for name, shape in parameters.items()
    )


def _flat_shape_set(data: dict, source: str, name: str) -> ShapeSet:
    """The flat form (``deftx profile``'s workload file) as a shape set of once-tensors."""
    unknown = set(data) - FLAT_KEYS
    if unknown:
        raise ValueError(f"{source}: unknown keys {sorted(unknown)} (a file with 'parameters' may also have "
                         f"{sorted(FLAT_KEYS - {'parameters'})})")
    tensors = _parameter_entries(data["parameters"], data.get("frozen", []), source)
    return ShapeSet(name, tensors, note=_text(data, "description", source))


def _layered_shape_set(data: dict, source: str, name: str) -> ShapeSet:
    """The layered form: ``tensors`` once, ``layer_tensors`` ``num_layers`` times."""
    unknown = set(data) - LAYERED_KEYS
    if unknown:
        raise ValueError(f"{source}: unknown keys {sorted(unknown)}")
    tensors = _tensor_entries(data.get("tensors", []), f"{source}: tensors")
    layer_tensors = _tensor_entries(data.get("layer_tensors", []), f"{source}: layer_tensors")
    num_layers = data.get("num_layers", 1 if layer_tensors else 0)
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 0:
        raise ValueError(f"{source}: num_layers must be an integer >= 0, got {short_repr(num_layers)}")
    if not tensors and not (layer_tensors and num_layers):
        raise ValueError(f"{source}: the shape set has no tensors")
    return ShapeSet(name, tensors, num_layers, layer_tensors, _text(data, "note", source))


def _text(data: dict, key: str, source: str, default: str = "") -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{source}: {key!r} must be a string, got {short_repr(value)}")
    return value


def shape_set_from_json(data: object, source: str = "JSON") -> ShapeSet:
    """Build a :class:`ShapeSet` from either custom-file form (see the module docstring); a file's
    :data:`PROFILE_ONLY_KEYS` are left to :func:`read_shape_spec`.

    Raises:
        ValueError: naming ``source`` and what is wrong (a shape that is not a non-empty list of
            integers >= 0, an unknown key, a flag that is not a boolean, both forms mixed, ...).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a shape set must be a JSON object")
    name = _text(data, "name", source, Path(source).stem)
    if "parameters" not in data:
        return _layered_shape_set(data, source, name)
    mixed = sorted(set(data) & {"tensors", "layer_tensors", "num_layers"})
    if mixed:
        raise ValueError(f"{source}: give either 'parameters' or 'tensors' / 'layer_tensors', not both ({mixed})")
    return _flat_shape_set(data, source, name)


@dataclass(frozen=True)
class ShapeSpec:
    """A shape set as named on a command line: a built-in, or read once from a JSON file.

    Attributes:
        shapes: the set.
        source: the built-in name or the file's path.
        run_keys: the :data:`PROFILE_ONLY_KEYS` the file holds, as written (``deftx profile``'s
            dtype and op settings; none for a built-in).
    """

    shapes: ShapeSet
    source: str
    run_keys: Mapping[str, object]


def read_shape_spec(spec: str, builtins: Mapping[str, ShapeSet] = BUILTIN_SHAPE_SETS) -> ShapeSpec:
    """``builtins[spec]``, else the shape-set JSON file at path ``spec``, read and checked once.

    Raises:
        ValueError: ``spec`` is neither a built-in name nor a file; the file is not UTF-8, not JSON,
            holds a key twice or is not a shape set (:func:`shape_set_from_json`).
    """
    if spec in builtins:
        return ShapeSpec(builtins[spec], spec, {})
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"unknown shape set {spec!r}: not a built-in ({', '.join(builtins)}) and not a file")
    data = strict_json_file(path)
    shapes = shape_set_from_json(data, str(path))
    return ShapeSpec(shapes, str(path), {key: data[key] for key in PROFILE_ONLY_KEYS if key in data})


def load_shape_set(spec: str) -> ShapeSet:
    """A built-in set by name (``xlmr-base``, ``mbert``, ``llama-7b``, ...) or a JSON file path."""
    return read_shape_spec(spec).shapes
