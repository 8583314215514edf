"""The pipeline config file (YAML or JSON): what ``deftx pipeline`` trains and evaluates.

Every key is optional except ``targets`` (an empty list skips NusaX, e.g. for an
AmericasNLI-only run); unknown keys are errors (a typo must not be silently ignored), and so
is a key written twice in one mapping (YAML and JSON would keep the last silently), and an entry
written twice in a list of seeds, sources, targets, languages or parameter groups (a seed or a
language listed twice would run, and write its rows, twice).
Example (``configs/default.yaml`` is the README's small run)::

    name: default
    model: e5-small            # or a save_pretrained folder
    data_dir: null             # default: deftx.data.default_data_dir()
    output_dir: runs/default   # SFTs, checkpoints, logs (large)
    results_dir: null          # tables, CSVs, plot (default: output_dir)
    step_store: null           # a folder of finished steps to link instead of retraining, e.g. an
                               # ablation's <output_dir>/shared; this run adds its own steps to it
    seeds: [0]
    sources: [indonesian]
    targets: [madurese, minangkabau]
    methods: {lt-sft: null, deft-x: {energy: 0.9}}
                               # each method's selection rule: null is LT-SFT's magnitude |θ1 − θ0|
                               # (one such method at most), a mapping DeFT-X's denoised one (energy
                               # or rank); deft-x: null is deft-x: {} (its defaults); lt-sft with a
                               # mapping, or null under another deft-x… name, is refused
    baseline: true             # full fine-tuning on the source, no SFT
    task_on_source_sft: true   # task SFT trained with the source language SFT applied
    language_scale: 1.25       # scale (> 0) of the target language SFT at composition; a list
                               # ([0.5, 1.0]) scores every scale (no retraining)
    eval_split: test           # NusaX split scored: test, or valid (to choose a recipe)
    language_text_splits: [train, valid]   # NusaX MT text of language SFTs and the MLM head
    americasnlp_text_splits: [train, dev]  # AmericasNLP 2021 text of AmericasNLI language SFTs and
                               # the MLM head; [train] leaves dev out for the held-out check
    pooling: mean              # classifier pooling: mean (e5's own) or cls (AutoModelFor...)
    device: auto               # every phase on cpu, cuda, or auto (cuda when available); deftx pipeline --device
    eval_batch_size: 64        # sentences per scoring batch (padding to a batch's longest: in the recipe)
    training: {batch_size: 16, max_length: 128, save_steps: 100, logging_steps: 10,
               bf16: false, gradient_accumulation_steps: 1, report_to: []}
                               # save_steps 0: no Trainer checkpoints inside a phase;
                               # beside deftx's settings, any transformers.TrainingArguments field
                               # (read by HfArgumentParser); each phase's length, lr and folder are deftx's;
                               # no seed here: each run's seed is one of the top-level seeds
    mlm_head: {steps: 500, batch_size: 16, learning_rate: 1.0e-3, seq_len: 128, seed: 0,
               texts: [nusax],           # + americasnlp: AmericasNLP 2021 text too
               eval_every: 100, eval_sequences: 0}   # > 0: held-out accuracy curve
    language_sft:
      k: 0.028
      eligible: [embeddings, attention, ffn]
      max_length: null         # MLM token window (default: training.max_length)
      full: {steps: 100, learning_rate: 5.0e-5, l1: 0.1}
      sparse: {steps: 100, learning_rate: 5.0e-5, l1: 0.1}
    task_sft:
      k: 0.051
      full: {epochs: 3, learning_rate: 3.0e-5}
      sparse: {epochs: 3, learning_rate: 1.0e-4}   # the sparse phase needs a higher lr
    full_finetune: {epochs: 3, learning_rate: 1.0e-4}
    americasnli: null          # or {train_languages: [...], test_languages: [...], ...}

The defaults of omitted keys are the recipe chosen by the NusaX ablation on the valid
splits (issue #9, ``results/ablation-nusax-e5-small/NOTES.md``): the task SFT's sparse
phase at lr 1e-4 (at the full phase's 3e-5 it barely trains: −15 macro-F1), the language
SFT composed at scale 1.25, and full fine-tuning at lr 1e-4 so the baseline is tuned
alike. The MLM head keeps 500 NusaX steps: its held-out accuracy plateaus by then.

With ``eval_split: valid`` (recipe selection) the valid sentences' text must not be trained
on: ``language_text_splits`` may then not contain ``valid``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from deftx.data.americasnli import check_language as check_americasnli_language
from deftx.data.americasnlp import SPLITS as AMERICASNLP_SPLITS
from deftx.data.nusax import MT_SPLITS
from deftx.text import DuplicateKeyError, not_utf8, repeated, short_repr, strict_json_loads
from deftx.train.config import (
    DEFAULT_ELIGIBLE,
    DEFAULT_ENERGY,
    LANGUAGE_K_FRACTION,
    TASK_K_FRACTION,
    DenoiseConfig,
    PhaseConfig,
    SparseFineTuningConfig,
    check_k,
)
from deftx.train.language import HeadWarmUp
from deftx.train.params import check_eligible
from deftx.train.trainer_args import TrainingSettings, trainer_argument_names

EVAL_SPLITS = ("test", "valid")
NUSAX = "nusax"
"""The text corpus of NusaX language SFTs: NusaX MT text."""
AMERICASNLP = "americasnlp"
"""The text corpus of AmericasNLI language SFTs: AmericasNLP 2021 text."""
HEAD_CORPORA = (NUSAX, AMERICASNLP)
TEXT_SPLITS_KEYS = {NUSAX: "language_text_splits", AMERICASNLP: "americasnlp_text_splits"}
"""Text corpus -> the config key naming the splits of it that language SFTs and the MLM head train on."""
DEVICES = ("auto", "cpu", "cuda")
BASELINE = "full-ft"
"""The full fine-tuning baseline's method name in the tables (no method may take it)."""
NO_LANGUAGE_SFT = " (no lang SFT)"
"""Suffix of a method's rows scored without the target's language SFT."""
RECORDED_RULES = "rules"
"""The key under which a results folder's ``config.json`` records the versions of deftx's method rules its rows
were made under (:func:`deftx.pipeline.identity.method_rules`): a record, not a setting, so a config that holds
it (that ``config.json`` read back) parses without it."""
MIN_TOKEN_WINDOW = 3
"""The shortest token window of a config (``training.max_length``, ``language_sft.max_length``,
``mlm_head.seq_len``): [CLS], one token, [SEP]; at 2 every sentence is cut to [CLS] [SEP]."""
RUN_ONLY_SETTINGS = ("save_steps", "logging_steps", "progress")
"""``training`` settings that change where and how a run reports, never a result."""
MAGNITUDE_METHOD = "lt-sft"
"""The method name that must be null: LT-SFT's selection by magnitude ``|θ1 − θ0|``."""
DENOISED_METHOD = "deft-x"
"""The method name whose null entry is DeFT-X's default denoising (as ``{}``); other names starting with it
may not be null."""
RECORDED_TRAINING_KEYS = frozenset({"batch_size", "max_length", "seed", "save_steps", "logging_steps",
                                    "weight_decay", "warmup_ratio", "max_grad_norm", "group_by_length", "progress"})
"""The ``training`` keys every results folder's ``config.json`` records (``to_plain`` of the settings): a
``training`` mapping with all of them is such a record, whose ``seed`` is the unused placeholder 0."""

_Item = TypeVar("_Item", bound=Hashable)


class ConfigError(ValueError):
    """A pipeline config value is missing, unknown or out of range (the message names it)."""


@dataclass
class SFTSection:
    """K, eligible groups and the two phases of one kind of SFT.

    ``max_length`` (language SFTs only) is the MLM token window; None uses
    ``training.max_length``.
    """

    k: float
    full: PhaseConfig
    sparse: PhaseConfig
    eligible: tuple[str, ...] = DEFAULT_ELIGIBLE
    max_length: int | None = None


@dataclass
class AmericasNLISection:
    """Leave-languages-out AmericasNLI: train the task on some languages' dev sets.

    Attributes:
        train_languages: languages whose *dev* split trains the task SFT (pooled).
        test_languages: held-out languages, evaluated zero-shot on their *test* split,
            each with its own language SFT from AmericasNLP 2021 text.
        max_train_examples: cap on the pooled training pairs (None = all).
    """

    train_languages: tuple[str, ...]
    test_languages: tuple[str, ...]
    max_train_examples: int | None = None

    def __post_init__(self) -> None:
        count = self.max_train_examples
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ValueError(f"max_train_examples must be null or an integer >= 1, got {short_repr(count)}")
        overlap = sorted(set(self.train_languages) & set(self.test_languages))
        if overlap:
            raise ValueError(f"{overlap} are both training and test languages: a test language must be held out")


@dataclass
class PipelineConfig:
    """A parsed, validated pipeline config (see the module docstring for the file format)."""

    targets: tuple[str, ...]
    name: str = "pipeline"
    model: str = "e5-small"
    data_dir: str | None = None
    output_dir: str = "runs/pipeline"
    results_dir: str | None = None
    step_store: str | None = None
    seeds: tuple[int, ...] = (0,)
    sources: tuple[str, ...] = ("indonesian",)
    methods: dict[str, DenoiseConfig | None] = field(
        default_factory=lambda: {"lt-sft": None, "deft-x": DenoiseConfig()}
    )
    baseline: bool = True
    task_on_source_sft: bool = True
    language_scale: float | tuple[float, ...] = 1.25
    eval_split: str = "test"
    language_text_splits: tuple[str, ...] = MT_SPLITS
    americasnlp_text_splits: tuple[str, ...] = AMERICASNLP_SPLITS
    pooling: str = "mean"
    device: str = "auto"
    eval_batch_size: int = 64
    training: TrainingSettings = field(default_factory=TrainingSettings)
    mlm_head: HeadWarmUp = field(default_factory=HeadWarmUp)
    language_sft: SFTSection = field(default_factory=lambda: SFTSection(
        k=LANGUAGE_K_FRACTION, eligible=("embeddings", "attention", "ffn"),
        full=PhaseConfig(steps=100, learning_rate=5e-5, l1=0.1),
        sparse=PhaseConfig(steps=100, learning_rate=5e-5, l1=0.1),
    ))
    task_sft: SFTSection = field(default_factory=lambda: SFTSection(
        k=TASK_K_FRACTION, full=PhaseConfig(epochs=3, learning_rate=3e-5),
        sparse=PhaseConfig(epochs=3, learning_rate=1e-4),
    ))
    full_finetune: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=3, learning_rate=1e-4))
    americasnli: AmericasNLISection | None = None

    @property
    def runs_nusax(self) -> bool:
        """Whether the pipeline runs the NusaX protocol: only when it has targets."""
        return bool(self.targets)

    def language_scales(self) -> tuple[float, ...]:
        """The composition scales of the language SFT (one, or the swept list)."""
        scale = self.language_scale
        return tuple(float(s) for s in scale) if isinstance(scale, (list, tuple)) else (float(scale),)

    def text_splits(self, corpus: str) -> tuple[str, ...]:
        """The splits of text ``corpus`` (:data:`NUSAX` or :data:`AMERICASNLP`) that language SFTs and the MLM
        head train on: the value of its :data:`TEXT_SPLITS_KEYS` key."""
        if corpus not in TEXT_SPLITS_KEYS:
            raise ValueError(f"unknown text corpus {corpus!r}: expected one of {list(TEXT_SPLITS_KEYS)}")
        return getattr(self, TEXT_SPLITS_KEYS[corpus])

    def selection_rules(self) -> dict[str, str]:
        """Each method's selection rule in words (:func:`selection_rule`), in the config's order."""
        return {name: selection_rule(denoise) for name, denoise in self.methods.items()}

    def denoised_pairs(self) -> tuple[tuple[str, str], ...]:
        """(denoised, magnitude) method pairs: each method with a :class:`DenoiseConfig` (DeFT-X) against each
        without (LT-SFT), in the config's order; e.g. ``(("deft-x", "lt-sft"),)``."""
        return tuple((a, b) for a, denoise in self.methods.items() if denoise is not None
                     for b, plain in self.methods.items() if plain is None)

    def language_config(self) -> SparseFineTuningConfig:
        """The language-SFT settings for the tuner (every method a branch)."""
        section = self.language_sft
        return SparseFineTuningConfig(
            k=section.k, full=section.full, sparse=section.sparse, eligible=section.eligible,
            selections=dict(self.methods), train_head=False, ship_head=False,
        )

    def task_config(self, methods: dict[str, DenoiseConfig | None] | None = None) -> SparseFineTuningConfig:
        """The task-SFT settings for the tuner (the given methods as branches)."""
        section = self.task_sft
        return SparseFineTuningConfig(
            k=section.k, full=section.full, sparse=section.sparse, eligible=section.eligible,
            selections=dict(methods if methods is not None else self.methods),
            train_head=True, ship_head=True,
        )


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"config {where}: {message}")


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(where, f"expected a mapping, got {type(raw).__name__}")
    return raw


YAML_NUMBER_HINT = " (YAML reads a number written without a dot, such as 1e-4, as text: write 1.0e-4)"


def reads_as_number(value: Any) -> bool:
    """Whether ``value`` is text that a number parses from (``"1e-4"``, which YAML 1.1 leaves as text)."""
    if not isinstance(value, str) or not any(char.isdigit() for char in value):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def yaml_number_hint(values: Any) -> str:
    """:data:`YAML_NUMBER_HINT` where ``values`` (a value, or a mapping's values) holds text that reads as a
    number (:func:`reads_as_number`), else ``""``: what the refusal of such a value must say."""
    given = values.values() if isinstance(values, dict) else [values]
    return YAML_NUMBER_HINT if any(reads_as_number(value) for value in given) else ""


def _build(cls, raw: Any, where: str, converters: dict[str, Any] | None = None):
    """Instantiate dataclass ``cls`` from a mapping, naming unknown keys and bad values."""
    values = dict(_mapping(raw, where))
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise _fail(where, f"unknown keys {unknown}; known: {sorted(known)}")
    for key, convert in (converters or {}).items():
        if key in values:
            values[key] = convert(values[key], f"{where}.{key}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise _fail(where, str(err) + yaml_number_hint(values)) from err


def whole(value: Any) -> Any:
    """``value`` as an int where it is a float of a whole number (``3.0``), else as it is: ``epochs: 3.0`` is
    the recipe of ``epochs: 3``, and the recipe digest is of the JSON text, where ``3.0`` is not ``3``."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _phase(raw: Any, where: str, default: PhaseConfig) -> PhaseConfig:
    """A phase; keys left out keep ``default``'s values (length only if neither is given); a length of a whole
    number is an int (:func:`whole`)."""
    values = {key: whole(value) if key in ("steps", "epochs") else value
              for key, value in _mapping(raw, where).items()}
    merged: dict[str, Any] = {"learning_rate": default.learning_rate, "l1": default.l1}
    if "steps" not in values and "epochs" not in values:
        merged.update(steps=default.steps, epochs=default.epochs)
    merged.update(values)
    return _build(PhaseConfig, merged, where)


def _strings(raw: Any, where: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not all(isinstance(x, str) and x for x in raw):
        raise _fail(where, f"expected a list of names, got {short_repr(raw)}")
    return tuple(raw)


def check_distinct(values: Sequence[_Item], what: str) -> tuple[_Item, ...]:
    """``values`` as a tuple, each at most once (a seed or language listed twice would run twice, its rows
    written twice).

    Raises:
        ConfigError: naming ``what`` (e.g. ``config seeds``, ``--seeds``) and the repeated values.
    """
    twice = repeated(values)
    if twice:
        named = ", ".join(short_repr(value) for value in twice)
        raise ConfigError(f"{what}: {named} listed more than once, so the same work would run (and its rows be "
                          f"written) twice; list each once, got {short_repr(list(values))}")
    return tuple(values)


def _distinct_strings(raw: Any, where: str) -> tuple[str, ...]:
    """A list of names (:func:`_strings`), each at most once (:func:`check_distinct`)."""
    return check_distinct(_strings(raw, where), f"config {where}")


def _eligible(raw: Any, where: str) -> tuple[str, ...]:
    """An SFT's ``eligible`` groups: distinct names that :func:`deftx.train.params.check_eligible` accepts."""
    try:
        return check_eligible(_distinct_strings(raw, where))
    except ValueError as err:
        raise _fail(where, str(err)) from err


def _americasnli_languages(raw: Any, where: str) -> tuple[str, ...]:
    """AmericasNLI language codes (:data:`deftx.data.americasnli.LANGUAGES`), at least one, each at most once."""
    languages = _distinct_strings(raw, where)
    if not languages:
        raise _fail(where, f"expected at least one language, got {short_repr(list(languages))}")
    try:
        for language in languages:
            check_americasnli_language(language)
    except ValueError as err:
        raise _fail(where, str(err)) from err
    return languages


def selection_rule(denoise: DenoiseConfig | None) -> str:
    """How a method with ``denoise`` (None: LT-SFT) ranks the entries its SFT keeps, in words."""
    if denoise is None:
        return "magnitude |theta1 - theta0| (LT-SFT)"
    size = f"rank {denoise.rank}" if denoise.rank is not None else f"energy {denoise.energy:g}"
    residual = f", + {denoise.residual_keep:g} of the residual" if denoise.add_back_residual else ""
    return (f"denoised |low-rank Delta| (DeFT-X: {size}, {denoise.method} SVD of {'+'.join(denoise.groups)}"
            f"{residual})")


def _method(name: str, spec: Any, where: str) -> DenoiseConfig | None:
    """One ``methods`` entry: null is the magnitude rule (LT-SFT), a mapping a :class:`DenoiseConfig` (DeFT-X).

    A name that says the other rule is refused: :data:`MAGNITUDE_METHOD` with a mapping, and a null under a
    name starting with :data:`DENOISED_METHOD`; but :data:`DENOISED_METHOD` itself null is DeFT-X's
    defaults (as ``{}``). Names compare case-insensitively.
    """
    folded = name.casefold()
    if spec is None and folded == DENOISED_METHOD:
        return DenoiseConfig()
    if spec is None and folded.startswith(DENOISED_METHOD):
        raise _fail(where, f"{name} names a DeFT-X method, but an empty entry (null) is LT-SFT's magnitude "
                    f"|theta1 - theta0| selection: write {name}: {{energy: {DEFAULT_ENERGY}}} (or {{rank: R}}) for "
                    f"the denoised selection, or {MAGNITUDE_METHOD}: null for the magnitude one")
    if spec is not None and folded == MAGNITUDE_METHOD:
        raise _fail(where, f"{name} selects by magnitude |theta1 - theta0|: write {name}: null, or give the "
                    f"denoised settings {short_repr(spec)} another name (e.g. {DENOISED_METHOD})")
    return None if spec is None else _build(DenoiseConfig, spec, where, {"groups": _strings})


def method_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a method, or None: it is its branch's folder (one path component) and its rows'
    name, which may not end as a row scored without the language SFT does (:data:`NO_LANGUAGE_SFT`)."""
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        return "is no folder name (each method's SFTs are in a folder of its name): use letters, digits, - and _"
    if name.endswith(NO_LANGUAGE_SFT):
        return f"ends as the name of a method's rows without the language SFT ({NO_LANGUAGE_SFT.strip()!r})"
    return None


def _methods(raw: Any, where: str) -> dict[str, DenoiseConfig | None]:
    """``methods``: each entry by :func:`_method`, under a name :func:`method_name_problem` accepts; at most one
    magnitude (null) entry, since a second would train the very same SFT under another name."""
    methods = _mapping(raw, where)
    if not methods:
        raise _fail(where, "at least one method is needed")
    if BASELINE in methods:
        raise _fail(where, f"{BASELINE!r} is the baseline's name; pick another method name")
    for name in methods:
        problem = method_name_problem(str(name))
        if problem is not None:
            raise _fail(where, f"method name {str(name)!r} {problem}")
    parsed = {str(name): _method(str(name), spec, f"{where}.{name}") for name, spec in methods.items()}
    plain = [name for name, denoise in parsed.items() if denoise is None]
    if len(plain) > 1:
        raise _fail(f"{where}.{plain[1]}", f"an empty entry (null) is the magnitude |theta1 - theta0| selection, "
                    f"which {plain[0]} already is (the same SFT under two names): write {plain[1]}: {{energy: "
                    f"{DEFAULT_ENERGY}}} (or {{rank: R}}) for DeFT-X's denoised selection, or drop it")
    return parsed


def _sft_section(raw: Any, where: str, default: SFTSection, *, has_max_length: bool = False) -> SFTSection:
    values = _mapping(raw, where)
    if not has_max_length and "max_length" in values and values["max_length"] is None:
        values = {key: value for key, value in values.items() if key != "max_length"}  # as a config.json records it
    known = {"k", "eligible", "full", "sparse"} | ({"max_length"} if has_max_length else set())
    unknown = sorted(set(values) - known)
    if unknown:
        raise _fail(where, f"unknown keys {unknown}; known: {sorted(known)}")
    max_length = values.get("max_length", default.max_length)
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)):
        raise _fail(f"{where}.max_length", f"expected null or an integer >= {MIN_TOKEN_WINDOW}, got "
                    f"{short_repr(max_length)}")
    if max_length is not None:
        check_token_window(max_length, f"{where}.max_length")
    section = SFTSection(
        k=whole(values.get("k", default.k)),
        full=_phase(values.get("full"), f"{where}.full", default.full),
        sparse=_phase(values.get("sparse"), f"{where}.sparse", default.sparse),
        eligible=_eligible(values["eligible"], f"{where}.eligible") if "eligible" in values else default.eligible,
        max_length=max_length,
    )
    try:
        check_k(section.k)
    except (TypeError, ValueError) as err:
        raise _fail(f"{where}.k", str(err) + yaml_number_hint(section.k)) from err
    if section.k == 1:
        raise _fail(f"{where}.k", "1 is a count, one entry (k < 1 is a fraction of the eligible entries, k >= 1 "
                    "their count), not 100%: write a fraction below 1 or a count above 1")
    return section


def _language_scale(raw: Any, where: str) -> float | tuple[float, ...]:
    """One finite number > 0, or a non-empty list of distinct ones (a sweep); a list of one is that number (the
    same recipe)."""
    def number(value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)

    if not (number(raw) or (isinstance(raw, (list, tuple)) and raw and all(number(v) for v in raw))):
        raise _fail(where, f"expected a number or a non-empty list of numbers, got {short_repr(raw)}"
                           + yaml_number_hint(raw if not isinstance(raw, (list, tuple)) else dict(enumerate(raw))))
    scales = [raw] if number(raw) else list(raw)
    if any(scale <= 0 for scale in scales):
        raise _fail(where, f"the scales must be > 0, got {short_repr(raw)}: scale 0 composes no language SFT (each "
                           f"method's '{NO_LANGUAGE_SFT.strip()}' row is that already), a negative one subtracts it")
    if len(set(scales)) != len(scales):
        raise _fail(where, f"the scales must be distinct, got {short_repr(raw)}")
    return float(scales[0]) if len(scales) == 1 else tuple(float(v) for v in scales)


def _split_names(raw: Any, where: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    names = _strings(raw, where)
    unknown = sorted(set(names) - set(allowed))
    if not names or unknown or len(set(names)) != len(names):
        raise _fail(where, f"expected at least one of {list(allowed)}, each at most once, got {short_repr(names)}")
    return names


def _check_recorded_rules(raw: Any, where: str) -> None:
    """A recorded :data:`RECORDED_RULES` entry: rule name -> version (an integer)."""
    versions = _mapping(raw, where)
    if not all(isinstance(version, int) and not isinstance(version, bool) for version in versions.values()):
        raise _fail(where, f"expected rule name -> version (an integer), got {short_repr(versions)}")


def check_token_window(length: int, where: str) -> None:
    """ConfigError naming ``where`` for a token window shorter than :data:`MIN_TOKEN_WINDOW`."""
    if length < MIN_TOKEN_WINDOW:
        raise _fail(where, f"expected an integer >= {MIN_TOKEN_WINDOW} ([CLS], one token, [SEP]), got {length}")


def _head(raw: Any, where: str) -> HeadWarmUp:
    values = dict(_mapping(raw, where))
    if "texts" in values:
        values["texts"] = _split_names(values["texts"], f"{where}.texts", HEAD_CORPORA)
    head = _build(HeadWarmUp, values, where)
    check_token_window(head.seq_len, f"{where}.seq_len")
    return head


def _without_seed(values: dict[str, Any], where: str) -> dict[str, Any]:
    """``training`` without its ``seed``: refused in a config (every run's seed is one of the top-level
    ``seeds``, which would override it silently); dropped from a recorded ``config.json``'s section
    (:data:`RECORDED_TRAINING_KEYS`), where it is the unused placeholder ``TrainingSettings.seed``."""
    if "seed" not in values:
        return values
    seed = values["seed"]
    if RECORDED_TRAINING_KEYS.issubset(values) and type(seed) is int and seed == TrainingSettings.seed:
        return {key: value for key, value in values.items() if key != "seed"}
    example = seed if type(seed) is int and seed >= 0 else 1
    raise _fail(f"{where}.seed", f"refused ({short_repr(seed)}): the seeds are set by the top-level `seeds:` list "
                f"(one run per seed); drop training.seed and list the seeds there, e.g. seeds: [{example}]")


def _training(raw: Any, where: str) -> TrainingSettings:
    """``training``: deftx's settings but the seed (:func:`_without_seed`), and any other ``TrainingArguments``
    field beside them (collected into ``arguments``, checked against transformers' own dataclass)."""
    values = _without_seed(dict(_mapping(raw, where)), where)
    own = {f.name for f in fields(TrainingSettings)}
    passed = {key: values.pop(key) for key in list(values) if key not in own and key in trainer_argument_names()}
    if passed:
        nested = _mapping(values.get("arguments"), f"{where}.arguments")
        twice = sorted(set(nested) & set(passed))
        if twice:
            raise _fail(where, f"{twice} given both beside deftx's settings and under {where}.arguments: "
                        "give each once")
        values["arguments"] = {**nested, **passed}
    unknown = sorted(set(values) - own)
    if unknown:
        raise _fail(where, f"unknown keys {unknown}: neither deftx settings {sorted(own - {'arguments'})} nor "
                    "transformers.TrainingArguments fields")
    settings = _build(TrainingSettings, values, where)
    check_token_window(settings.max_length, f"{where}.max_length")
    return settings


def _seeds(raw: Any, where: str) -> tuple[int, ...]:
    if isinstance(raw, int):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not raw or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in raw
    ):
        raise _fail(where, f"expected a non-empty list of integers >= 0, got {short_repr(raw)}")
    return check_distinct(raw, f"config {where}")


def parse_config(raw: Any, source: str = "<config>") -> PipelineConfig:
    """Validate a loaded YAML/JSON mapping into a :class:`PipelineConfig`: a config file, or a results
    folder's ``config.json`` (its :data:`RECORDED_RULES` record is checked and left out).

    Raises:
        ConfigError: naming the offending key and value.
    """
    values = dict(_mapping(raw, source))
    _check_recorded_rules(values.pop(RECORDED_RULES, {}), RECORDED_RULES)
    defaults = PipelineConfig(targets=("placeholder",))
    known = {f.name for f in fields(PipelineConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise _fail(source, f"unknown keys {unknown}; known: {sorted(known)}")
    if "targets" not in values:
        raise _fail(source, "'targets' (the NusaX languages to transfer to; [] for none) is required")
    if not values["targets"] and values.get("americasnli") is None:
        raise _fail("targets", "empty, and no americasnli section: nothing to evaluate")
    parsed: dict[str, Any] = {
        "targets": _distinct_strings(values.pop("targets"), "targets"),
        "sources": _distinct_strings(values.pop("sources", list(defaults.sources)), "sources"),
        "seeds": _seeds(values.pop("seeds", [0]), "seeds"),
        "methods": _methods(values.pop("methods", {"lt-sft": None, "deft-x": {}}), "methods"),
        "training": _training(values.pop("training", {}), "training"),
        "mlm_head": _head(values.pop("mlm_head", {}), "mlm_head"),
        "language_sft": _sft_section(values.pop("language_sft", {}), "language_sft", defaults.language_sft,
                                     has_max_length=True),
        "task_sft": _sft_section(values.pop("task_sft", {}), "task_sft", defaults.task_sft),
    }
    if parsed["targets"] and not parsed["sources"]:
        raise _fail("sources", f"empty, so no task SFT is trained and none of the targets "
                    f"{short_repr(list(parsed['targets']))} is scored: list the language(s) the task is trained on")
    if "full_finetune" in values:
        parsed["full_finetune"] = _phase(values.pop("full_finetune"), "full_finetune", defaults.full_finetune)
        baseline_l1 = parsed["full_finetune"].l1
        if baseline_l1:
            raise _fail("full_finetune", f"l1 {baseline_l1}: the baseline takes no L1 pull (set it to 0)")
    anli = values.pop("americasnli", None)
    if anli is not None:
        parsed["americasnli"] = _build(AmericasNLISection, anli, "americasnli", {
            "train_languages": _americasnli_languages, "test_languages": _americasnli_languages,
        })
    for key in ("name", "model", "output_dir"):
        if key in values and not (isinstance(values[key], str) and values[key]):
            raise _fail(key, f"expected a non-empty string, got {short_repr(values[key])}")
    for key in ("data_dir", "results_dir", "step_store"):
        if key in values and values[key] is not None and not isinstance(values[key], str):
            raise _fail(key, f"expected a path or null, got {short_repr(values[key])}")
    for key in ("baseline", "task_on_source_sft"):
        if key in values and not isinstance(values[key], bool):
            raise _fail(key, f"expected true or false, got {short_repr(values[key])}")
    if "language_scale" in values:
        values["language_scale"] = _language_scale(values["language_scale"], "language_scale")
    if "eval_split" in values and values["eval_split"] not in EVAL_SPLITS:
        raise _fail("eval_split", f"expected one of {list(EVAL_SPLITS)}, got {short_repr(values['eval_split'])}")
    if "language_text_splits" in values:
        values["language_text_splits"] = _split_names(values["language_text_splits"], "language_text_splits",
                                                      MT_SPLITS)
    if "americasnlp_text_splits" in values:
        values["americasnlp_text_splits"] = _split_names(values["americasnlp_text_splits"],
                                                         "americasnlp_text_splits", AMERICASNLP_SPLITS)
    if values.get("eval_split") == "valid" and "valid" in values.get("language_text_splits", MT_SPLITS):
        raise _fail("language_text_splits", "eval_split is valid, so the valid sentences' text may not be "
                    "trained on: use language_text_splits: [train]")
    batch = values.get("eval_batch_size", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise _fail("eval_batch_size", f"expected an integer >= 1, got {short_repr(values['eval_batch_size'])}")
    if "pooling" in values and values["pooling"] not in ("mean", "cls"):
        raise _fail("pooling", f"expected 'mean' or 'cls', got {short_repr(values['pooling'])}")
    if "device" in values and values["device"] not in DEVICES:
        raise _fail("device", f"expected one of {list(DEVICES)}, got {short_repr(values['device'])}")
    parsed.update(values)
    return PipelineConfig(**parsed)


def read_config_file(path: str | Path) -> Any:
    """The raw mapping of a ``.yaml``/``.yml`` or ``.json`` file (not validated).

    Raises:
        FileNotFoundError: the file does not exist.
        IsADirectoryError: ``path`` is a folder.
        ConfigError: it is not UTF-8 text or does not parse (naming the file, and the line and column
            where YAML or JSON found the problem).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"config file {path} is a folder; expected a .yaml, .yml or .json file")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config {path}: {not_utf8(err)}; save it as UTF-8") from err
    try:
        raw = strict_json_loads(text) if path.suffix.lower() == ".json" else strict_yaml_load(text)
    except DuplicateKeyError as err:
        raise ConfigError(f"config {path}: {err}") from err
    except Exception as err:
        raise ConfigError(f"config {path}: cannot parse: {parse_error_message(err)}") from err
    check_nesting(raw, str(path))
    return raw


def parse_error_message(err: Exception) -> str:
    """Why YAML or JSON text does not parse, in one line that keeps where: the line and column (1-based) of
    the problem, what it is and, for YAML, what was being parsed from where; other errors shortened."""
    if isinstance(err, json.JSONDecodeError):
        return f"line {err.lineno}, column {err.colno}: {err.msg}"
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is None or not problem:
        return short_repr(str(err))
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    started = f" from line {context_mark.line + 1}, column {context_mark.column + 1}" if context_mark else ""
    return (f"line {mark.line + 1}, column {mark.column + 1}: {' '.join(problem.split())}"
            + (f" ({context}{started})" if context else ""))


def strict_yaml_load(text: str) -> Any:
    """``yaml.safe_load`` of ``text``, refusing a mapping that holds one key twice (:func:`check_unique_keys`).

    Raises:
        DuplicateKeyError: naming the key, where it is and both its lines.
        yaml.YAMLError: the text does not parse.
    """
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_unique_keys(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def check_unique_keys(root: Any) -> None:
    """DuplicateKeyError for a YAML mapping node (of ``root``'s composed graph) that holds a scalar key twice;
    keys a merge (``<<``) brings in may be overridden, as YAML specifies. Each node is visited once, so the
    check is linear in the distinct nodes (an alias bomb is cheap), and iterative (no recursion limit).

    Raises:
        DuplicateKeyError: naming the key, its dotted place in the file and the lines of both.
    """
    import yaml

    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        node, where = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack += [(item, f"{where}[{index}]") for index, item in enumerate(node.value)]
        if not isinstance(node, yaml.MappingNode):
            continue
        lines: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            stack.append((value, f"{where}.{name}" if where else name))
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if (key.tag, key.value) in lines:
                place = f"{where}.{name}" if where else name
                raise DuplicateKeyError(f"duplicate key {short_repr(place)} on line {line} (first on line "
                                        f"{lines[key.tag, key.value]}): YAML would keep only the last; write it once")
            lines[key.tag, key.value] = line


MAX_CONFIG_DEPTH = 32


def check_nesting(raw: Any, source: str) -> None:
    """ConfigError for a value that contains itself (a recursive YAML alias) or nests deeper than
    :data:`MAX_CONFIG_DEPTH`; linear in the distinct containers (an alias bomb is cheap)."""
    depth_below: dict[int, int] = {}
    on_path: set[int] = set()

    def visit(node: Any) -> int:
        if not isinstance(node, (dict, list, tuple)):
            return 0
        key = id(node)
        if key in on_path:
            raise ConfigError(f"config {source}: a value contains itself (a recursive alias)")
        if key in depth_below:
            return depth_below[key]
        if len(on_path) >= MAX_CONFIG_DEPTH:
            raise ConfigError(f"config {source}: values nest deeper than {MAX_CONFIG_DEPTH} levels")
        on_path.add(key)
        children = list(node.values()) if isinstance(node, dict) else list(node)
        depth = 1 + max((visit(child) for child in children), default=0)
        on_path.discard(key)
        depth_below[key] = depth
        return depth

    visit(raw)


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline config file (``.yaml``/``.yml`` or ``.json``).

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: it does not parse or holds a bad value (naming the file and the key).
    """
    raw = read_config_file(path)
    try:
        return parse_config(raw, str(path))
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if str(path) in message else f"{path}: {message}") from err
