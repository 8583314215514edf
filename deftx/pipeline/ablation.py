"""``deftx ablate``: variants of one pipeline config × seeds, scored on NusaX *valid* splits.

An ablation config (YAML or JSON)::

    name: language-SFT recipe
    base: configs/nusax-e5-small-1seed.yaml   # a pipeline config: a path or an inline mapping
    base_overrides: {task_sft.sparse.learning_rate: 1.0e-4}   # optional: a stage's winner
    seeds: [0, 1, 2]
    output_dir: runs/ablation                  # runs and the shared steps (large)
    results_dir: results/ablation              # ablation.csv, summary.csv, results.md, results.png
    variants:
      reference: {}
      l1-0: {language_sft.full.l1: 0, language_sft.sparse.l1: 0}    # dotted keys ...
      lr-2e-5: {language_sft: {full: {learning_rate: 2.0e-5}}}      # ... or nested ones

Each variant is the base (with ``base_overrides``, merged by the same rules: how a second
ablation stage starts from the first stage's winner over one shared base file) with its
overrides merged in (mappings merge key by key; setting
``steps`` in a phase drops the base's ``epochs`` and the reverse; ``methods`` is replaced
whole) and is validated like any pipeline config, so a misspelt key is an error naming the
variant; a variant whose settings equal an earlier variant's (an override at the base's own value)
is named so in the plan and in ``results.md``: its steps are that variant's, linked, not trained
again. Every variant is evaluated on the NusaX **valid** splits (``eval_split: valid`` is
forced; a variant asking for ``test`` is refused: the test splits are for the final run of
the chosen recipe) and its language SFTs (and the MLM head) are trained on MT ``train`` text
only unless ``language_text_splits`` says otherwise (``valid`` is refused).

Runs share finished steps through a :class:`~deftx.train.store.LinkedStepStore` under
``output_dir/shared``: phase 1 (θ1) of every language and task SFT, their branches (selection
report, SFT) and the full fine-tuning baseline are keyed by their run identity — the digest
of exactly what they depend on, the same identity every step folder records
(:mod:`deftx.train.identity`) — and hard-linked into every run that needs an equal one, so
the variants that change only K, the selection, the sparse phase, the composition scale or
the task recipe pay for no phase 1 of a language SFT.

Every (variant, seed, source, target, method, scale) row is appended to ``ablation.csv`` as
soon as it is evaluated; a row already there is never recomputed, so running the same
command again resumes (every training step checkpoints too). A variant's runs live in
``output_dir/variants/<name>-<hash>``, whose ``identity.json`` records the variant's
settings (``variants.json`` beside the rows records them too, for a machine without the
runs): changing a variant's settings gives it a new folder, and its old rows are refused,
naming what changed, rather than mixed in (rename the variant, or ``overwrite`` /
``--overwrite`` drops them and runs it again). A run limited to some variants (``--variants``) checks
and drops only their rows: another variant's stale rows are named, kept, and left out of the tables.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deftx.eval.language import HELDOUT_FIELDS, heldout_table
from deftx.eval.report import (
    AVERAGE,
    append_invocation,
    append_records,
    column_labels,
    environment_changes,
    fewer_targets,
    grouped_bar_plot,
    mean_sd,
    read_csv,
    read_ledger,
    summarize,
    versions_line,
    write_csv,
)
from deftx.files import atomic_write, atomic_write_bytes, lock_beside, locked
from deftx.info import environment_record
from deftx.pipeline.config import RUN_ONLY_SETTINGS, ConfigError, PipelineConfig, parse_config, read_config_file
from deftx.pipeline.head import ensure_head, head_call, head_curve_table, head_report_line
from deftx.pipeline.heldout import HELDOUT_CSV, HeldoutScorer, has_heldout_text, nusax_languages, trained_languages
from deftx.pipeline.identity import recipe_hash, run_identity, with_rule_note
from deftx.pipeline.run import heldout_seed, run_nusax_seed
from deftx.pipeline.workspace import (
    Workspace,
    check_local_token_windows,
    fitting_model,
    language_training_settings,
    requested_device,
    resolve_device,
)
from deftx.text import short_repr
from deftx.train.config import to_plain
from deftx.train.identity import damage, describe_changes, digest, normalised, read_identity, write_identity
from deftx.train.store import LinkedStepStore

ABLATION_KEYS = ("name", "base", "base_overrides", "variants", "seeds", "output_dir", "results_dir")
SET_BY_THE_ABLATION = ("seeds", "output_dir", "results_dir", "step_store")
REPLACED_WHOLE = ("methods",)
EXCLUSIVE_KEYS = (("steps", "epochs"), ("epochs", "steps"))
ROW_FIELDS = ("variant", "variant_hash", "seed", "benchmark", "protocol", "split", "source", "target", "method",
              "language_scale", "language_sft", "macro_f1", "accuracy", "examples")
SUMMARY_GROUP = ("variant", "source", "method", "language_scale")
HELDOUT_ROW_FIELDS = ("variant", "variant_hash", *HELDOUT_FIELDS)
DEFAULT_SEEDS = (0, 1, 2)


@dataclass
class AblationConfig:
    """A parsed, validated ablation config (see the module docstring).

    Attributes:
        variants: name -> the variant's full pipeline config (valid split, its own output_dir).
        overrides: name -> the variant's overrides as nested mappings (for the report).
        hashes: name -> content hash of the variant's settings (output paths and seeds excluded).
    """

    name: str
    variants: dict[str, PipelineConfig]
    overrides: dict[str, dict[str, Any]]
    hashes: dict[str, str]
    seeds: tuple[int, ...]
    output_dir: Path
    results_dir: Path


def nest_overrides(overrides: Any, where: str) -> dict[str, Any]:
    """Dotted keys (``a.b.c: v``) expanded into nested mappings, recursively.

    Raises:
        ConfigError: not a mapping, an empty key part, or one path set twice (also when one
            override sets a mapping and another a key inside it as a leaf value).
    """
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where}: expected a mapping of overrides, got {type(overrides).__name__}")
    nested: dict[str, Any] = {}
    for raw_key, value in overrides.items():
        parts = str(raw_key).split(".")
        if not all(parts):
            raise ConfigError(f"{where}: bad key {short_repr(raw_key)}")
        node = nested
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{where}: {'.'.join(parts[: depth + 1])} is set twice")
            node = child
        leaf = nest_overrides(value, f"{where}.{raw_key}") if isinstance(value, Mapping) and value else value
        if parts[-1] in node:
            if not (isinstance(node[parts[-1]], dict) and isinstance(leaf, dict)):
                raise ConfigError(f"{where}: {raw_key} is set twice")
            leaf = _merge(node[parts[-1]], leaf, f"{where}.{raw_key}", strict=True)
        node[parts[-1]] = leaf
    return nested


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any], where: str, *, strict: bool = False,
           top: bool = False) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in (see the module docstring for the rules)."""
    merged = dict(base)
    for key, value in overrides.items():
        current = merged.get(key)
        if strict and key in merged and not (isinstance(current, dict) and isinstance(value, dict)):
            raise ConfigError(f"{where}: {key} is set twice")
        for given, dropped in EXCLUSIVE_KEYS:
            if key == given:
                merged.pop(dropped, None)
        if isinstance(current, Mapping) and isinstance(value, Mapping) and not (top and key in REPLACED_WHOLE):
            merged[key] = _merge(current, value, f"{where}.{key}", strict=strict)
        else:
            merged[key] = value
    return merged


def merge_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A pipeline config mapping with a variant's (dotted or nested) overrides merged in."""
    return _merge(base, nest_overrides(overrides, "overrides"), "overrides", top=True)


def _base_mapping(raw: Any, where: str, relative_to: Path | None) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, str) or not raw:
        raise ConfigError(
            f"{where}: 'base' must be a pipeline config path or an inline mapping, got {short_repr(raw)}"
        )
    path = Path(raw).expanduser()
    if not path.is_file() and relative_to is not None and (relative_to / raw).is_file():
        path = relative_to / raw
    loaded = read_config_file(path)
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{where}: base config {path} is not a mapping")
    return dict(loaded)


def _resolve_variant(name: str, base: Mapping[str, Any], overrides: Any, output_dir: Path,
                     seeds: tuple[int, ...], where: str,
                     forced: Mapping[str, Any]) -> tuple[PipelineConfig, dict[str, Any], str]:
    label = f"{where}: variant {name!r}"
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{label}: a variant name must be a plain folder name")
    nested = nest_overrides(overrides, label)
    taken = sorted(set(nested) & set(SET_BY_THE_ABLATION))
    if taken:
        raise ConfigError(f"{label}: {taken} are set by the ablation (its seeds, output_dir, results_dir, step store), "
                          "not per variant")
    merged = {**_merge(base, nested, label, top=True), **forced}
    if merged.get("americasnli") is not None:
        raise ConfigError(f"{label}: the ablation scores NusaX valid splits only; drop the americasnli section")
    split = merged.get("eval_split", "valid")
    if split != "valid":
        raise ConfigError(f"{label}: eval_split {short_repr(split)} refused: an ablation chooses the recipe on "
                          "the valid splits; the test splits are scored once, by the final run of the chosen recipe")
    merged.update(name=name, eval_split="valid", seeds=list(seeds), output_dir=str(output_dir), results_dir=None)
    merged.setdefault("language_text_splits", ["train"])
    try:
        config = parse_config(merged, label)
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if label in message else f"{label}: {message}") from err
    hash_ = recipe_hash(config)
    config = parse_config({**merged, "output_dir": str(variant_folder(output_dir, name, hash_))}, label)
    return config, nested, hash_


def parse_ablation(raw: Any, source: str = "<ablation>", relative_to: Path | None = None,
                   forced: Mapping[str, Any] | None = None) -> AblationConfig:
    """Validate a loaded ablation mapping into an :class:`AblationConfig`.

    Args:
        relative_to: folder a relative ``base`` path is also looked up in (the config's own).
        forced: top-level pipeline settings every variant gets whatever the base, ``base_overrides`` or the
            variant set (the command line's ``--data-dir`` and ``--device``).

    Raises:
        ConfigError: naming the offending key (and variant).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(ABLATION_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown}; known: {sorted(ABLATION_KEYS)} "
                          "(pipeline settings go under 'base' or into a variant)")
    for key in ("base", "variants", "output_dir"):
        if key not in raw:
            raise ConfigError(f"{source}: '{key}' is required")
    variants = raw["variants"]
    if not isinstance(variants, Mapping) or not variants:
        raise ConfigError(f"{source}: 'variants' must map at least one variant name to its overrides")
    seeds = raw.get("seeds", list(DEFAULT_SEEDS))
    if isinstance(seeds, int):
        seeds = [seeds]
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"{source}: seeds must be distinct integers >= 0, got {short_repr(seeds)}")
    for key in ("output_dir", "results_dir", "name"):
        if key in raw and raw[key] is not None and not (isinstance(raw[key], str) and raw[key]):
            raise ConfigError(f"{source}: {key} must be a non-empty string, got {short_repr(raw[key])}")
    base = _merge(_base_mapping(raw["base"], source, relative_to),
                  nest_overrides(raw.get("base_overrides"), f"{source}: base_overrides"),
                  f"{source}: base_overrides", top=True)
    if base.get("step_store") is not None:
        raise ConfigError(f"{source}: the ablation keeps its steps in <output_dir>/shared; "
                          "drop step_store from the base")
    output_dir = Path(raw["output_dir"])
    results_dir = Path(raw.get("results_dir") or output_dir)
    configs, overrides, hashes = {}, {}, {}
    for name, spec in variants.items():
        configs[str(name)], overrides[str(name)], hashes[str(name)] = _resolve_variant(
            str(name), base, spec, output_dir, tuple(seeds), source, dict(forced or {}))
    return AblationConfig(str(raw.get("name") or "ablation"), configs, overrides, hashes, tuple(seeds),
                          output_dir, results_dir)


def load_ablation(path: str | Path, *, output_dir: str | None = None, results_dir: str | None = None,
                  seeds: Sequence[int] | None = None, data_dir: str | None = None,
                  device: str | None = None) -> AblationConfig:
    """Read and validate an ablation config file (a relative ``base`` may sit beside it).

    The keyword arguments, when given, replace the file's ``output_dir``, ``results_dir``,
    ``seeds`` and every variant's ``data_dir`` and ``device`` (command-line overrides: over the base,
    ``base_overrides`` and the variant's own overrides alike).
    """
    path = Path(path)
    raw = read_config_file(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    for key, value in (("output_dir", output_dir), ("results_dir", results_dir), ("seeds", seeds)):
        if value:
            raw[key] = list(value) if key == "seeds" else value
    forced = {key: value for key, value in (("data_dir", data_dir), ("device", device)) if value}
    return parse_ablation(raw, str(path), relative_to=path.parent, forced=forced)


def language_phase1_signature(config: PipelineConfig) -> str:
    """Hash of the config settings a language SFT's phase 1 depends on (for the plan only: the runs
    key on the run identity the tuner records, :meth:`deftx.train.sparse_finetuner.SparseFineTuner.identity`,
    which digests the data and the weights — with the warmed head — instead of naming them). The
    training settings are the very ones the language SFTs get (:func:`language_training_settings`)."""
    settings = to_plain(language_training_settings(config, requested_device(config), seed=0))
    training = {k: v for k, v in settings.items() if k not in (*RUN_ONLY_SETTINGS, "seed")}
    return digest({
        "model": config.model, "data_dir": config.data_dir, "head": to_plain(config.mlm_head),
        "text": list(config.language_text_splits), "training": training,
        "full": to_plain(config.language_sft.full), "eligible": list(config.language_sft.eligible),
    })[:12]


def check_variants(ablation: AblationConfig, names: Iterable[str], check: Callable[[PipelineConfig], object]) -> None:
    """``check`` the config of each variant of ``names`` (e.g. :func:`~deftx.pipeline.workspace.fitting_model`),
    a ConfigError it raises naming the variant."""
    for name in names:
        try:
            check(ablation.variants[name])
        except ConfigError as err:
            raise ConfigError(f"variant {name!r}: {err}") from err


def equal_variants(ablation: AblationConfig) -> dict[str, str]:
    """Variant name -> the first variant before it in the config with the same settings (an equal hash), for
    each variant that has one: its steps are that variant's, linked from the store, not trained again."""
    first: dict[str, str] = {}
    equal = {}
    for name, hash_ in ablation.hashes.items():
        if hash_ in first:
            equal[name] = first[hash_]
        else:
            first[hash_] = name
    return equal


def same_settings_note(ablation: AblationConfig, name: str) -> str:
    """`` (same settings as X: ...)`` where variant ``name`` equals an earlier variant X (:func:`equal_variants`),
    else ``""``."""
    twin = equal_variants(ablation).get(name)
    return f" (same settings as {twin}: its steps are {twin}'s, linked, not trained again)" if twin else ""


def plan_lines(ablation: AblationConfig) -> list[str]:
    """One line per variant: hash, overrides, which variants share its language phase 1, and the earlier
    variant it equals, if any (:func:`equal_variants`).

    Raises:
        ConfigError: a variant's token window is longer than its model accepts, where the model is already on
            this machine (:func:`~deftx.pipeline.workspace.check_local_token_windows`).
    """
    check_variants(ablation, ablation.variants, check_local_token_windows)
    groups: dict[str, list[str]] = {}
    for name, config in ablation.variants.items():
        groups.setdefault(language_phase1_signature(config), []).append(name)
    lines = [f"{ablation.name}: {len(ablation.variants)} variants × seeds {list(ablation.seeds)} on NusaX valid "
             f"-> {ablation.results_dir / 'ablation.csv'}; {len(groups)} distinct language-SFT phase 1"]
    for name, config in ablation.variants.items():
        sharing = [other for other in groups[language_phase1_signature(config)] if other != name]
        lines.append(f"  {name} [{ablation.hashes[name][:8]}] {json.dumps(ablation.overrides[name])}"
                     + (f" (language phase 1 shared with {', '.join(sharing)})" if sharing else "")
                     + same_settings_note(ablation, name))
    return lines


def _scale_text(value: Any) -> str:
    return "" if value in (None, "") else repr(float(value))


def row_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    """(variant, seed, source, target, method, scale): one result row of the ablation."""
    return (str(row["variant"]), str(row["seed"]), str(row["source"]), str(row["target"]), str(row["method"]),
            _scale_text(row.get("language_scale")))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of ``ablation.csv`` (numbers parsed; none if the file does not exist)."""
    rows: list[dict[str, Any]] = read_csv(path)
    for row in rows:
        row["seed"] = int(row["seed"])
        row["macro_f1"], row["accuracy"] = float(row["macro_f1"]), float(row["accuracy"])
        row["language_scale"] = None if row["language_scale"] == "" else float(row["language_scale"])
    return rows


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str] = ROW_FIELDS, *,
               append: bool = False) -> None:
    """Write rows to ``path`` (``fields``, by default ablation.csv's), after its rows when ``append`` (the header
    written when the file is new), atomically (:func:`deftx.files.atomic_write`): a write that stops leaves the
    file as it was, never with some of ``rows``. An append holds the file's lock (:func:`deftx.files.locked`),
    so processes appending at once keep every row."""
    if not append:
        atomic_write(path, lambda temporary: write_rows_to(temporary, rows, fields))
        return
    with locked(lock_beside(path)):
        atomic_write(path, lambda temporary: write_rows_to(temporary, rows, fields, after=path))


def write_rows_to(temporary: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str], *,
                  after: Path | None = None) -> None:
    """Write ``rows`` (``fields``) as CSV to ``temporary``, after a copy of the file ``after`` when it exists
    (its header kept), else after a header."""
    earlier = after is not None and after.is_file()
    if earlier:
        shutil.copyfile(after, temporary)
    with temporary.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if not earlier:
            writer.writeheader()
        writer.writerows({name: row.get(name) for name in fields} for row in rows)


def append_rows(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str] = ROW_FIELDS) -> None:
    """Append rows to ``path`` (``fields``, by default ablation.csv's; header written when the file is new), all
    of them or, if the write stops, none (:func:`write_rows`): the rows of a source are there whole or not at all."""
    if rows:
        write_rows(path, rows, fields, append=True)


def variant_folder(output_dir: Path, name: str, hash_: str) -> Path:
    """Where the runs of variant ``name`` with settings hash ``hash_`` live."""
    return output_dir / "variants" / f"{name}-{hash_[:8]}"


def record_variant(ablation: AblationConfig, name: str) -> None:
    """Write the variant's :func:`run_identity` into its folder (what its rows and runs depend on)."""
    config = ablation.variants[name]
    folder = Path(config.output_dir)
    if read_identity(folder) is None:
        write_identity(folder, run_identity(config))


def recorded_variants(results_dir: Path) -> dict[str, Any]:
    """``results_dir``'s :data:`VARIANTS` record: ``"<name>-<hash>"`` -> that variant's identity
    ({} when there is none or it cannot be read)."""
    try:
        record = json.loads((results_dir / VARIANTS).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


def record_variants(ablation: AblationConfig, names: Iterable[str]) -> None:
    """Add the identity of each named variant to ``results_dir``'s :data:`VARIANTS` record, kept
    beside the rows (and committed with them), so that a changed setting can be named on a
    machine without the runs. A run records the variants it runs and those with rows, once."""
    record = recorded_variants(ablation.results_dir)
    added = {f"{name}-{ablation.hashes[name]}": normalised(run_identity(ablation.variants[name]))
             for name in names if f"{name}-{ablation.hashes[name]}" not in record}
    if added:
        text = json.dumps({**record, **added}, indent=1, sort_keys=True) + "\n"
        atomic_write_bytes(ablation.results_dir / VARIANTS, text.encode())


def variant_changes(ablation: AblationConfig, name: str, old_hash: str) -> list[str]:
    """What changed in variant ``name`` since rows with ``old_hash`` were written (from its old folder's
    record, else, where that is missing or damaged, from ``results_dir``'s :data:`VARIANTS` record), a method
    rule's change with what it means (:func:`~deftx.pipeline.identity.with_rule_note`)."""
    in_folder = read_identity(variant_folder(ablation.output_dir, name, old_hash))
    recorded = (None if damage(in_folder) else in_folder) or recorded_variants(ablation.results_dir).get(
        f"{name}-{old_hash}")
    if recorded is None:
        return [f"settings hash {old_hash} -> {ablation.hashes[name]}"]
    current = normalised(run_identity(ablation.variants[name]))
    return [with_rule_note(line) for line in describe_changes(recorded, current)]


def stale_variants(rows: Sequence[Mapping[str, Any]], ablation: AblationConfig) -> dict[str, str]:
    """Variant name -> the settings hash of its rows in ``rows`` written under other settings than the
    variant's now (stale rows), for each variant of the ablation that has such rows."""
    return {row["variant"]: row["variant_hash"] for row in rows
            if row["variant"] in ablation.hashes and row["variant_hash"] != ablation.hashes[row["variant"]]}


def stale_details(stale: Mapping[str, str], ablation: AblationConfig) -> str:
    """``name: what changed`` for each variant of ``stale`` (:func:`stale_variants`), joined by ``; ``."""
    return "; ".join(f"{name}: {', '.join(variant_changes(ablation, name, old))}"
                     for name, old in sorted(stale.items()))


def check_rows_match(rows: Sequence[Mapping[str, Any]], ablation: AblationConfig, names: Iterable[str]) -> None:
    """Refuse rows of the variants ``names`` (those a run runs) whose settings changed since they were written,
    naming the changes; stale rows of other variants are not this run's to refuse (:func:`stale_rows_line`)."""
    stale = {name: old for name, old in stale_variants(rows, ablation).items() if name in set(names)}
    if stale:
        raise ConfigError(f"variants {sorted(stale)} changed since their rows in ablation.csv were written "
                          f"({stale_details(stale, ablation)}): rename them, or run with --overwrite to drop "
                          "their old rows and run them again")


def stale_rows_line(rows: Sequence[Mapping[str, Any]], ablation: AblationConfig) -> str | None:
    """One line naming the variants with stale rows in ``rows`` (:func:`stale_variants`) and what changed: a run
    of other variants leaves them as they are, out of the tables; None when there are none."""
    stale = stale_variants(rows, ablation)
    if not stale:
        return None
    return (f"ablation.csv: rows of variants {sorted(stale)} were written under other settings "
            f"({stale_details(stale, ablation)}): left as they are and out of the tables; run them with --variants "
            f"{' '.join(sorted(stale))} --overwrite to replace them")


def drop_stale_rows(path: Path, ablation: AblationConfig, names: Iterable[str],
                    fields: Sequence[str] = ROW_FIELDS) -> list[dict[str, str]]:
    """Rewrite ``path`` (``ablation.csv``, or ``heldout.csv`` with its ``fields``) without the rows of the
    variants ``names`` (those the run runs again) whose settings changed, under the file's lock
    (:func:`write_rows`); the rows kept, as read. Stale rows of other variants are kept."""
    dropped = set(names)
    with locked(lock_beside(path)):
        rows = read_csv(path)
        kept = [row for row in rows if row["variant"] not in dropped
                or row["variant_hash"] == ablation.hashes[row["variant"]]]
        if len(kept) != len(rows):
            write_rows(path, kept, fields)
    return kept


def current_rows(rows: Sequence[Mapping[str, Any]], ablation: AblationConfig) -> list[Mapping[str, Any]]:
    """The rows of the ablation's variants at their current settings hash: what the tables average
    (stale rows of a variant are never averaged with its fresh ones)."""
    return [row for row in rows if ablation.hashes.get(row["variant"]) == row["variant_hash"]]


def current_heldout(ablation: AblationConfig) -> list[dict[str, str]]:
    """The rows of ``heldout.csv`` of the ablation's variants at their current settings hash."""
    return [row for row in read_csv(ablation.results_dir / HELDOUT_CSV)
            if ablation.hashes.get(row["variant"]) == row["variant_hash"]]


def wants_heldout(run: AblationRun, name: str, seed: int) -> bool:
    """Whether variant ``name``'s language SFTs of ``seed`` are to be scored on held-out text: the run
    scores them (``run.heldout``), the variant leaves some MT text out and ``heldout.csv`` has no rows
    of the variant and seed yet."""
    return (run.heldout and has_heldout_text(run.ablation.variants[name])
            and (name, seed) not in run.heldout_scored)


def score_variant_heldout(run: AblationRun, name: str, seed: int, scorer: HeldoutScorer) -> None:
    """Score variant ``name``'s language SFTs of ``seed`` on held-out text; append the rows to ``heldout.csv``."""
    records = heldout_seed(scorer, seed)
    append_rows(run.ablation.results_dir / HELDOUT_CSV,
                [{"variant": name, "variant_hash": run.ablation.hashes[name], **record} for record in records],
                HELDOUT_ROW_FIELDS)
    run.heldout_scored.add((name, seed))


def average_by_method(rows: Sequence[Mapping[str, Any]], sources: Sequence[str]) -> dict[str, float]:
    """Column label -> mean macro-F1 over targets of some rows of one seed: the summary's ``avg``
    (:func:`summary_rows`, every one of ``sources`` left out, each source apart), the label prefixed
    with its source where the rows have several."""
    averages = [row for row in summary_rows(rows, sources) if row["target"] == AVERAGE]
    labels = column_labels(averages)
    several = len({row["source"] for row in averages}) > 1
    return {(f"{row['source']} " if several else "") + labels[(row["method"], row.get("language_scale"))]:
            row["macro_f1_mean"] for row in averages}


def ablation_sources(ablation: AblationConfig) -> list[str]:
    """Every source language of the ablation's variants, sorted: what its averages over targets leave out."""
    return sorted({source for config in ablation.variants.values() for source in config.sources})


@dataclass
class AblationRun:
    """Bookkeeping of one ``run_ablation`` call."""

    ablation: AblationConfig
    store: LinkedStepStore
    overwrite: bool = False
    heads: dict[str, Path] = field(default_factory=dict)
    tokenizers: dict[str, Any] = field(default_factory=dict)
    head_metrics: dict[str, Any] = field(default_factory=dict)
    timings: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=environment_record)
    """The versions and commit this call started with (what its rows are computed by)."""
    heldout: bool = True
    """Score the variants' language SFTs on held-out text (:func:`score_variant_heldout`)."""
    heldout_scored: set[tuple[str, int]] = field(default_factory=set)
    """(variant, seed) pairs whose language SFTs ``heldout.csv`` holds held-out rows of."""


def head_for(run: AblationRun, ws: Workspace) -> Path:
    """The warmed MLM head of ``ws``: one warm-up (or cache lookup) per distinct warm-up call, keyed by
    the digest of the very inputs it is called with (:class:`~deftx.pipeline.head.HeadCall`)."""
    call = head_call(ws)
    key = call.key()
    if key not in run.heads:
        run.heads[key] = ensure_head(ws, call)
        run.head_metrics[key] = ws.head_metrics
    ws.head_metrics = run.head_metrics[key]
    return run.heads[key]


def variant_workspace(run: AblationRun, name: str, log: Callable[[str], None]) -> tuple[Workspace, Path]:
    """The workspace of variant ``name`` (the run's step store; a tokenizer loaded once per model) and its MLM head."""
    config = run.ablation.variants[name]
    ws = Workspace.open(config, log, tokenizer=run.tokenizers.get(config.model))
    record_variant(run.ablation, name)
    run.tokenizers[config.model] = ws.tokenizer
    ws.step_store = run.store
    ws.overwrite = run.overwrite
    return ws, head_for(run, ws)


def run_variant_seed(run: AblationRun, name: str, seed: int, done: set[tuple[str, ...]],
                     log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Train (or reuse) and evaluate one variant for one seed; append its new rows and, when it leaves
    some MT text out, its language SFTs' held-out rows (:func:`score_variant_heldout`); return all its rows."""
    ablation = run.ablation
    ws, head = variant_workspace(run, name, log)
    scorer = HeldoutScorer(ws, head).prepare(nusax_languages(ws.config)) if wants_heldout(run, name, seed) else None
    csv_path = ablation.results_dir / "ablation.csv"
    rows: list[dict[str, Any]] = []
    for source_rows in run_nusax_seed(ws, seed, head):
        fresh = []
        for evaluated in source_rows:
            row = {"variant": name, "variant_hash": ablation.hashes[name], **evaluated.as_dict()}
            rows.append(row)
            if row_key(row) not in done:
                done.add(row_key(row))
                fresh.append(row)
        append_rows(csv_path, fresh)
    if scorer is not None:
        score_variant_heldout(run, name, seed, scorer)
    run.timings.append({"variant": name, "seed": seed, **ws.timings})
    return rows


def chosen_variants(ablation: AblationConfig, only: Sequence[str] | None = None) -> list[str]:
    """The variants a run takes, in the config's order: those named in ``only`` (``--variants``), else all.

    Raises:
        ConfigError: ``only`` names a variant the ablation does not have (naming the known ones).
    """
    unknown = sorted(set(only or ()) - set(ablation.variants))
    if unknown:
        raise ConfigError(f"--variants: unknown variants {unknown}; known: {list(ablation.variants)}")
    return [name for name in ablation.variants if not only or name in only]


def run_ablation(ablation: AblationConfig, *, log: Callable[[str], None] = print,
                 progress: Callable[[str], None] = print, command: str | None = None,
                 only: Sequence[str] | None = None, overwrite: bool = False, heldout: bool = True) -> str:
    """Run (or resume) every variant × seed of ``ablation``; returns the summary markdown.

    Args:
        log: the pipeline's own step-by-step lines.
        progress: one line per variant × seed (skipped, or done with its cost and averages).
        command: the command line, for results.md.
        only: run just these variants (the summary still covers every variant's current rows): only their
            rows are checked (and dropped with ``overwrite``); stale rows of the others are named in one
            ``progress`` line and left out of the tables (:func:`stale_rows_line`).
        overwrite: drop the rows of the variants it runs whose settings changed (instead of refusing them)
            and retrain the steps whose recorded identity differs (see :mod:`deftx.train.identity`).
        heldout: score each variant's language SFTs of each seed on held-out text, once
            (:func:`score_variant_heldout`), also for a variant × seed whose rows are done.
    """
    chosen = chosen_variants(ablation, only)
    for name in chosen:
        resolve_device(ablation.variants[name])
    check_variants(ablation, chosen, fitting_model)
    start = time.perf_counter()
    ablation.results_dir.mkdir(parents=True, exist_ok=True)
    csv_path = ablation.results_dir / "ablation.csv"
    if overwrite:
        drop_stale_rows(csv_path, ablation, chosen)
        drop_stale_rows(ablation.results_dir / HELDOUT_CSV, ablation, chosen, HELDOUT_ROW_FIELDS)
    existing = read_rows(csv_path)
    check_rows_match(existing, ablation, chosen)
    stale_line = stale_rows_line(existing, ablation)
    if stale_line:
        progress(stale_line)
    with_rows = {row["variant"] for row in existing if row["variant"] in ablation.hashes}
    record_variants(ablation, sorted({*chosen, *with_rows}))
    done = {row_key(row) for row in existing}
    finished = {(row["variant"], row["seed"], row["source"]) for row in existing}
    run = AblationRun(ablation, LinkedStepStore(ablation.output_dir / "shared"), overwrite=overwrite, heldout=heldout)
    run.heldout_scored = {(row["variant"], int(row["seed"])) for row in current_heldout(ablation)}
    total, index = len(chosen) * len(ablation.seeds), 0
    for seed in ablation.seeds:
        for name in chosen:
            index += 1
            sources = ablation.variants[name].sources
            if all((name, seed, source) in finished for source in sources):
                if wants_heldout(run, name, seed) and trained_languages(ablation.variants[name], seed):
                    ws, head = variant_workspace(run, name, log)
                    score_variant_heldout(run, name, seed, HeldoutScorer(ws, head))
                    progress(f"[ablate {index}/{total}] {name} seed {seed}: already in {csv_path.name}; its "
                             f"language SFTs' held-out rows added to {HELDOUT_CSV}")
                else:
                    progress(f"[ablate {index}/{total}] {name} seed {seed}: already in {csv_path.name}, skipped")
                continue
            began, reused, kept = time.perf_counter(), sum(run.store.attached.values()), sum(
                run.store.published.values())
            rows = run_variant_seed(run, name, seed, done, log)
            averages = ", ".join(f"{label} {100 * value:.1f}"
                                 for label, value in average_by_method(rows, ablation_sources(ablation)).items())
            progress(f"[ablate {index}/{total}] {name} seed {seed}: {(time.perf_counter() - began) / 60:.1f} min, "
                     f"shared steps reused {sum(run.store.attached.values()) - reused}, kept "
                     f"{sum(run.store.published.values()) - kept}; valid macro-F1 mean over targets: {averages}")
            write_summary(run, time.perf_counter() - start, command, plot=False)
    append_invocation(ablation.results_dir / INVOCATIONS, command, time.perf_counter() - start,
                      run.environment)
    return write_summary(run, time.perf_counter() - start, command, finished=True)


def summary_rows(rows: Sequence[Mapping[str, Any]], sources: Sequence[str]) -> list[dict[str, Any]]:
    """Mean ± sd over seeds per (variant, source, method, scale, target), plus the ``avg`` target."""
    return summarize(rows, exclude_from_average=sources, group_by=SUMMARY_GROUP)


def _cell(row: Mapping[str, Any] | None, metric: str, targets: int) -> str:
    """``mean ± sd (n seeds)`` ×100 (``mean (1)`` with one seed: no spread to give), naming the targets where
    ``row`` averages fewer than ``targets``."""
    if row is None:
        return "—"
    mean, sd = 100 * row[f"{metric}_mean"], 100 * row[f"{metric}_sd"]
    spread = f" ± {sd:.1f}" if row["seeds"] > 1 else ""
    return f"{mean:.1f}{spread} ({'; '.join([str(row['seeds']), *fewer_targets(row, targets)])})"


def variant_tables(summary: Sequence[Mapping[str, Any]], variants: Sequence[str], metric: str) -> str:
    """Per source: variants × methods (one column per scale of a swept method), the ``avg`` target."""
    blocks = []
    for source in dict.fromkeys(row["source"] for row in summary):
        rows = [r for r in summary if r["source"] == source and r["target"] == AVERAGE]
        labels = column_labels(rows)
        columns = list(dict.fromkeys(labels.values()))
        lookup = {(r["variant"], labels[(r["method"], r.get("language_scale"))]): r for r in rows}
        targets = max((r["targets"] for r in rows), default=1)
        lines = [f"### source: {source} — {metric.replace('_', '-')} ×100, mean over targets, "
                 "mean ± sd over seeds (n seeds)", "", "| variant | " + " | ".join(columns) + " |",
                 "|---|" + "---|" * len(columns)]
        for variant in variants:
            if any(key[0] == variant for key in lookup):
                lines.append(f"| {variant} | " + " | ".join(_cell(lookup.get((variant, c)), metric, targets)
                                                          for c in columns) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def seed_tables(rows: Sequence[Mapping[str, Any]], sources: Sequence[str], variants: Sequence[str],
                metric: str) -> str:
    """Per source: one line per variant × method (× scale), one column per seed: the mean over targets, naming
    the targets where it is over fewer than another cell of the table (:func:`~deftx.eval.report.fewer_targets`)."""
    per_seed = [r for r in summarize(rows, exclude_from_average=sources, group_by=(*SUMMARY_GROUP, "seed"))
                if r["target"] == AVERAGE]
    blocks = []
    for source in dict.fromkeys(row["source"] for row in per_seed):
        rows_here = [r for r in per_seed if r["source"] == source]
        labels = column_labels(rows_here)
        columns = list(dict.fromkeys(labels.values()))
        seeds = sorted({r["seed"] for r in rows_here})
        targets = max(r["targets"] for r in rows_here)
        value = {(r["variant"], labels[(r["method"], r.get("language_scale"))], r["seed"]):
                 f"{100 * r[f'{metric}_mean']:.1f}" + "".join(f" ({note})" for note in fewer_targets(r, targets))
                 for r in rows_here}
        lines = [f"### source: {source} — {metric.replace('_', '-')} ×100 per seed, mean over targets", "",
                 "| variant | method | " + " | ".join(f"seed {seed}" for seed in seeds) + " |",
                 "|---|---|" + "---:|" * len(seeds)]
        for variant in variants:
            for column in columns:
                cells = [value.get((variant, column, seed)) for seed in seeds]
                if any(cell is not None for cell in cells):
                    lines.append(f"| {variant} | {column} | "
                                 + " | ".join("—" if c is None else c for c in cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def cost_lines(records: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> list[str]:
    """Minutes per seed of each variant (mean ± sd over seeds; a resumed run's invocations add up)."""
    minutes: dict[str, dict[int, float]] = {}
    for record in records:
        seconds = sum(v for k, v in record.items() if k not in ("variant", "seed") and isinstance(v, (int, float)))
        per_seed = minutes.setdefault(record["variant"], {})
        per_seed[record["seed"]] = per_seed.get(record["seed"], 0.0) + seconds / 60
    lines = []
    for name in variants:
        if name in minutes:
            mean, sd = mean_sd(list(minutes[name].values()))
            lines.append(f"- {name}: {mean:.1f} ± {sd:.1f} min per seed ({len(minutes[name])} seeds)")
    return lines


INVOCATIONS = "invocations.jsonl"
VARIANTS = "variants.json"
HEAD_METRICS = "mlm_head.json"


def invocation_lines(ledger: Path, command: str | None, wall_seconds: float, *, finished: bool = False) -> list[str]:
    """Markdown lines: each finished invocation in ``ledger`` (command, wall time, end), then this one.

    An invocation whose recorded versions (``environment``) differ from the last recorded before it
    says which: rows of the two may not be comparable.

    ``finished``: this invocation is already the ledger's last line, so it is not added again.
    """
    lines, environment = [], None
    for record in read_ledger(ledger):
        line = (f"- `{record['command'] or '(not recorded)'}`: {record['seconds'] / 60:.1f} min, "
                f"finished {record['finished']}")
        if environment is not None and record.get("environment") is not None:
            changed = environment_changes(environment, record["environment"])
            line += f"; versions changed since the one before: {changed}" if changed else ""
        environment = record.get("environment", environment)
        lines.append(line)
    if finished:
        return lines
    return [*lines, f"- `{command or '(not recorded)'}`: {wall_seconds / 60:.1f} min so far (this invocation)"]


def heldout_summary_lines(ablation: AblationConfig) -> list[str]:
    """The results.md section on the variants' language SFTs on held-out text (``heldout.csv``), targets only."""
    targets = {target for config in ablation.variants.values() for target in config.targets}
    rows = [row for row in current_heldout(ablation) if row["language"] in targets]
    if not rows:
        return []
    pairs = list(dict.fromkeys(pair for config in ablation.variants.values() for pair in config.denoised_pairs()))
    order = {name: index for index, name in enumerate(ablation.variants)}
    rows.sort(key=lambda row: order[row["variant"]])
    return ["### Held-out masked-LM check of the language SFTs (`heldout.csv`)", "",
            "On NusaX MT text that neither the language SFTs nor the MLM head trained on (one fixed set of masks): "
            "the fall of the masked-token loss from θ0's with each SFT added at scale s (> 0: it predicts unseen "
            "text of its language better), then the top-1 accuracy of the masked tokens; per seed the mean over "
            "targets, then mean ± sd over seeds (n seeds). The last columns pair each denoised method with each "
            "plain one within each seed and target: a − b in points, mean ± sd over seeds (n seeds; how many have "
            "it > 0). Variants that share their language SFTs share these rows.", "",
            *heldout_table(rows, "variant", "loss_change", pairs), "",
            *heldout_table(rows, "variant", "accuracy", pairs), ""]


def recorded_head_metrics(run: AblationRun) -> list[dict[str, Any]]:
    """Every MLM head the ablation used: those in mlm_head.json, updated by this invocation's, keyed by head.

    An invocation whose rows are all done loads no head; its results.md keeps the earlier heads' reports.
    """
    path = run.ablation.results_dir / HEAD_METRICS
    recorded = json.loads(path.read_text()) if path.is_file() else []
    by_head = {metrics["key"]: metrics for metrics in recorded}
    by_head.update((metrics["key"], metrics) for metrics in run.head_metrics.values())
    return list(by_head.values())


def record_head_metrics(run: AblationRun) -> list[dict[str, Any]]:
    """:func:`recorded_head_metrics`, written back to mlm_head.json (when there are some) under the file's lock
    and atomically: an invocation of other variants into the same results folder loses none of them, and a
    write that stops leaves the file as it was, never a torn one that every later invocation fails to read."""
    path = run.ablation.results_dir / HEAD_METRICS
    with locked(lock_beside(path)):
        head_metrics = recorded_head_metrics(run)
        if head_metrics:
            atomic_write_bytes(path, (json.dumps(head_metrics, indent=2) + "\n").encode())
    return head_metrics


def seeds_sentence(rows: Sequence[Mapping[str, Any]], invocation_seeds: Sequence[int]) -> str:
    """The seeds the tables cover (every row of ablation.csv), and this invocation's where they differ."""
    covered = sorted({int(row["seed"]) for row in rows})
    if covered == sorted(invocation_seeds):
        return f"Seeds: {covered}."
    return f"Seeds in the tables: {covered} (this invocation ran {list(invocation_seeds)})."


def write_summary(
    run: AblationRun, wall_seconds: float, command: str | None, *, plot: bool = True, finished: bool = False
) -> str:
    """summary.csv, results.md, results.png (with ``plot``) and timings.jsonl from every row of ``ablation.csv``.

    ``finished``: the invocation has ended and is in the invocation ledger (results.md lists it once).
    """
    ablation = run.ablation
    out = ablation.results_dir
    every_row = read_rows(out / "ablation.csv")
    rows = current_rows(every_row, ablation)
    ledger = out / "timings.jsonl"
    if run.timings:
        append_records(ledger, run.timings)
        run.timings.clear()
    if not rows:
        return "(no rows yet)\n"
    sources = ablation_sources(ablation)
    summary = summary_rows(rows, sources)
    write_csv(summary, out / "summary.csv")
    variants = list(ablation.variants)
    averages = [r for r in summary if r["target"] == AVERAGE]
    panels: dict[str, list[dict[str, Any]]] = {}
    for source in dict.fromkeys(r["source"] for r in averages):
        panel = [r for r in averages if r["source"] == source]
        labels = column_labels(panel)
        panels[f"NusaX valid, source {source}: macro-F1 mean over targets"] = [
            {**r, "column": labels[(r["method"], r.get("language_scale"))]} for r in panel]
    if plot:
        grouped_bar_plot(panels, out / "results.png", x_key="variant", series_key="column")
    tables = variant_tables(summary, variants, "macro_f1")
    any_config = next(iter(ablation.variants.values()))
    stale_line = stale_rows_line(every_row, ablation)
    text = [f"# {ablation.name}: ablation on the NusaX valid splits", "",
            "Commands (finished invocations, then the one under way, if any; an interrupted invocation "
            "leaves no line here, its finished variants' costs are below):", "",
            *invocation_lines(out / INVOCATIONS, command, wall_seconds, finished=finished), ""]
    text += [
        f"Scored on the **valid** splits only (the test splits are for the final run of the chosen recipe); "
        f"language SFT and MLM head text: NusaX MT {'+'.join(any_config.language_text_splits)}. "
        f"{seeds_sentence(rows, ablation.seeds)} Targets: {', '.join(any_config.targets)}; the mean over targets "
        "leaves the source out. Model: multilingual-e5-small is 4-bit (Q4_0 word embeddings and Linear weights).",
        "",
        "Variants (overrides of the base config):",
        "",
        *[f"- **{name}** `{json.dumps(ablation.overrides[name])}`{same_settings_note(ablation, name)}"
          for name in variants],
        "",
        *([stale_line, ""] if stale_line else []),
        tables,
        variant_tables(summary, variants, "accuracy"),
        seed_tables(rows, sources, variants, "macro_f1"),
    ]
    text += heldout_summary_lines(ablation)
    for metrics in record_head_metrics(run):
        text += [head_report_line(metrics), "", head_curve_table(metrics)]
    records = read_ledger(ledger)
    if records:
        text += ["Wall time of the runs, training and evaluation (a step reused from another run costs "
                 "nothing here; the first run of a seed pays for the shared ones):", "",
                 *cost_lines(records, variants), ""]
    text += [versions_line(run.environment) + " (this invocation's; `invocations.jsonl` keeps each one's)", ""]
    text += ["Files: ablation.csv (one row per variant, seed, source, target, method, scale), summary.csv "
             "(mean ± sd over seeds, per target and `avg`), results.png, timings.jsonl, invocations.jsonl, "
             "mlm_head.json, heldout.csv (held-out masked-LM scores of the language SFTs, per language).", ""]
    (out / "results.md").write_text("\n".join(text))
    return tables
