"""Model shape sets for the roofline prediction: parameter shapes, dtype and op settings.

Built in:

* ``xlmr-base``: XLM-R base (fp32): word embeddings 250002 x 768, positions 514 x 768,
  token types 1 x 768, embedding LayerNorm, 12 layers of query / key / value / attention
  output 768 x 768 (+ biases), FFN 3072 x 768 and 768 x 3072 (+ biases) and two LayerNorms.
* ``mbert``: multilingual BERT base (fp32): vocabulary 119547 x 768, positions 512 x 768,
  token types 2 x 768, the same encoder.
* ``llama-7b``: Llama 7B (bf16): embeddings 32000 x 4096 and LM head 4096 -> 32000, 32
  layers of q / k / v / o 4096 x 4096, gate / up 11008 x 4096, down 4096 x 11008 and two
  RMSNorms 4096, a final RMSNorm.
* ``tiny``: a 2-layer BERT of width 64 (vocabulary 1000, FFN 256, rank 8) for CPU traces.

LayerNorm / RMSNorm weights are frozen (never eligible, as in the LT-SFT reference code);
every other parameter is eligible, and every eligible 2-D parameter is denoised.

A JSON file gives a custom set::

    {"name": "tiny", "dtype": "fp32",
     "parameters": {"emb": [1000, 64], "layer.0.w": [64, 64], "norm.weight": [64]},
     "frozen": ["norm.weight"],
     "settings": {"k_fraction": 0.05, "rank": 16}}

``settings`` overrides :class:`OpSettings` fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Parameter:
    """One parameter: ``name``, ``shape`` and whether sparse fine-tuning may select it."""

    name: str
    shape: tuple[int, ...]
    eligible: bool = True

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class OpSettings:
    """How the ops are run on a shape set.

    Attributes:
        k_fraction: K as a fraction of the eligible entries (task SFT default 5.1%).
        rank: uniform rank r of the low-rank denoising (the prediction needs a fixed rank;
            the energy policy picks it per matrix at run time).
        oversample, n_iter: randomized SVD sketch: q = rank + oversample columns, n_iter
            power iterations.
        num_diffs: SFTs composed by one scatter (language + task = 2).
        l1: sparse steps with the L1 pull toward θ0 (language SFTs).
    """

    k_fraction: float = 0.051
    rank: int = 64
    oversample: int = 8
    n_iter: int = 2
    num_diffs: int = 2
    l1: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.k_fraction <= 1.0:
            raise ValueError(f"k_fraction must be in (0, 1], got {self.k_fraction!r}")
        for name in ("rank", "num_diffs"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("oversample", "n_iter"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")

    @property
    def sketch_columns(self) -> int:
        """q = rank + oversample."""
        return self.rank + self.oversample


@dataclass(frozen=True)
class ShapeSet:
    """A model's parameters in one dtype, with the op settings of the prediction."""

    name: str
    dtype: str
    parameters: tuple[Parameter, ...]
    settings: OpSettings = field(default_factory=OpSettings)
    description: str = ""

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def eligible(self) -> tuple[Parameter, ...]:
        return tuple(p for p in self.parameters if p.eligible)

    @property
    def matrices(self) -> tuple[Parameter, ...]:
        """The eligible 2-D parameters (the denoised matrices)."""
        return tuple(p for p in self.eligible if len(p.shape) == 2)

    @property
    def k(self) -> int:
        """K: ``round(k_fraction * eligible entries)``, at least 1."""
        return max(1, round(self.settings.k_fraction * sum(p.numel for p in self.eligible)))

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: counts and settings."""
        return {
            "name": self.name,
            "description": self.description,
            "dtype": self.dtype,
            "parameters": sum(p.numel for p in self.parameters),
            "eligible": sum(p.numel for p in self.eligible),
            "matrices": len(self.matrices),
            "k": self.k,
            "settings": {f.name: getattr(self.settings, f.name) for f in fields(OpSettings)},
        }


def _encoder(prefix: str, layers: int, hidden: int, ffn: int) -> list[Parameter]:
    params: list[Parameter] = []
    for i in range(layers):
        layer = f"{prefix}.layer.{i}"
        for part in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            params += [Parameter(f"{layer}.{part}.weight", (hidden, hidden)),
                       Parameter(f"{layer}.{part}.bias", (hidden,))]
        params += [Parameter(f"{layer}.attention.output.LayerNorm.{p}", (hidden,), False) for p in ("weight", "bias")]
        params += [Parameter(f"{layer}.intermediate.dense.weight", (ffn, hidden)),
                   Parameter(f"{layer}.intermediate.dense.bias", (ffn,)),
                   Parameter(f"{layer}.output.dense.weight", (hidden, ffn)),
                   Parameter(f"{layer}.output.dense.bias", (hidden,))]
        params += [Parameter(f"{layer}.output.LayerNorm.{p}", (hidden,), False) for p in ("weight", "bias")]
    return params


def _bert_like(
    vocab: int, positions: int, types: int, *, hidden: int = 768, layers: int = 12, ffn: int = 3072
) -> tuple[Parameter, ...]:
    embeddings = [
        Parameter("embeddings.word_embeddings.weight", (vocab, hidden)),
        Parameter("embeddings.position_embeddings.weight", (positions, hidden)),
        Parameter("embeddings.token_type_embeddings.weight", (types, hidden)),
        Parameter("embeddings.LayerNorm.weight", (hidden,), False),
        Parameter("embeddings.LayerNorm.bias", (hidden,), False),
    ]
    return tuple(embeddings + _encoder("encoder", layers, hidden, ffn))


def _llama_7b() -> tuple[Parameter, ...]:
    hidden, ffn, vocab = 4096, 11008, 32000
    params = [Parameter("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(32):
        layer = f"model.layers.{i}"
        params += [Parameter(f"{layer}.self_attn.{p}_proj.weight", (hidden, hidden)) for p in "qkvo"]
        params += [Parameter(f"{layer}.mlp.gate_proj.weight", (ffn, hidden)),
                   Parameter(f"{layer}.mlp.up_proj.weight", (ffn, hidden)),
                   Parameter(f"{layer}.mlp.down_proj.weight", (hidden, ffn)),
                   Parameter(f"{layer}.input_layernorm.weight", (hidden,), False),
                   Parameter(f"{layer}.post_attention_layernorm.weight", (hidden,), False)]
    params += [Parameter("model.norm.weight", (hidden,), False), Parameter("lm_head.weight", (vocab, hidden))]
    return tuple(params)


BUILTIN: dict[str, ShapeSet] = {
    "xlmr-base": ShapeSet("xlmr-base", "fp32", _bert_like(250002, 514, 1), description="XLM-R base, fp32"),
    "mbert": ShapeSet("mbert", "fp32", _bert_like(119547, 512, 2), description="multilingual BERT base, fp32"),
    "llama-7b": ShapeSet("llama-7b", "bf16", _llama_7b(), description="Llama 7B, bf16"),
    "tiny": ShapeSet(
        "tiny",
        "fp32",
        _bert_like(1000, 128, 2, hidden=64, layers=2, ffn=256),
        OpSettings(rank=8),
        description="a 2-layer BERT of width 64 (CPU traces and tests), fp32",
    ),
}


def load_shape_set(name_or_path: str | Path, **settings: Any) -> ShapeSet:
    """A built-in shape set by name, or one read from a JSON file (format in the module doc).

    ``settings`` override the set's :class:`OpSettings`.

    Raises:
        ValueError: an unknown name that is not a file, or a malformed file.
    """
    key = str(name_or_path)
    if key in BUILTIN:
        shape_set = BUILTIN[key]
    elif Path(key).is_file():
        shape_set = _from_json(Path(key))
    else:
        raise ValueError(f"unknown shape set {key!r}: not one of {', '.join(BUILTIN)} and not a file")
    if settings:
        shape_set = replace(shape_set, settings=replace(shape_set.settings, **settings))
    return shape_set


def _from_json(path: Path) -> ShapeSet:
    try:
        payload = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(payload, dict) or not isinstance(payload.get("parameters"), dict) or not payload["parameters"]:
        raise ValueError(f"{path}: expected an object with a non-empty 'parameters' mapping name -> shape")
    dtype = payload.get("dtype", "fp32")
    if dtype not in DTYPES:
        raise ValueError(f"{path}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    frozen = set(payload.get("frozen", ()))
    unknown = frozen - set(payload["parameters"])
    if unknown:
        raise ValueError(f"{path}: 'frozen' names unknown parameters {sorted(unknown)}")
    params = []
    for name, shape in payload["parameters"].items():
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ValueError(f"{path}: shape of {name!r} must be a non-empty list of positive integers, got {shape!r}")
        params.append(Parameter(name, tuple(shape), name not in frozen))
    known = {f.name for f in fields(OpSettings)}
    settings = payload.get("settings", {})
    if not isinstance(settings, dict) or set(settings) - known:
        raise ValueError(f"{path}: 'settings' may set {sorted(known)}, got {settings!r}")
    if not any(p.eligible for p in params):
        raise ValueError(f"{path}: every parameter is frozen")
    return ShapeSet(str(payload.get("name", path.stem)), dtype, tuple(params), OpSettings(**settings),
                    str(payload.get("description", f"from {path.name}")))
