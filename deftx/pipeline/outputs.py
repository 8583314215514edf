"""What a pipeline run writes under ``results_dir``: tables, CSVs, plot, timings, disk use, results.md."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deftx.eval.language import heldout_table
from deftx.eval.report import (
    RECIPE,
    bar_plot,
    environment_changes,
    markdown_tables,
    read_csv,
    read_ledger,
    summarize,
    versions_line,
    write_csv,
)
from deftx.eval.zero_shot import EvalRow
from deftx.files import atomic_write_bytes
from deftx.pipeline.config import (
    AMERICASNLP,
    BASELINE,
    NO_LANGUAGE_SFT,
    NUSAX,
    TEXT_SPLITS_KEYS,
    ConfigError,
    PipelineConfig,
    parse_config,
)
from deftx.pipeline.head import head_report_line
from deftx.pipeline.heldout import CORPUS_NAMES, HELDOUT_CSV, has_heldout_text, left_out_splits
from deftx.pipeline.identity import RULES, method_rules, recipe_hash, run_identity, with_rule_note
from deftx.pipeline.layout import SeedLayout
from deftx.pipeline.workspace import Workspace
from deftx.train.checkpoint import LOG, folder_bytes
from deftx.train.config import to_plain
from deftx.train.identity import describe_changes, normalised
from deftx.train.losses import FELL, FLAT, FLAT_FALL, NON_FINITE, folder_trends
from deftx.train.sparse_finetuner import SELECTION

RESULTS_CSV = "results.csv"
CONFIG_JSON = "config.json"
MAX_NAMED_CELLS = 3


@dataclass(frozen=True, order=True)
class Cell:
    """One results.csv cell of a seed: what a row scores, less the seed and the scores."""

    benchmark: str
    split: str
    source: str
    target: str
    method: str
    language_scale: float | None

    @classmethod
    def of(cls, row: EvalRow) -> Cell:
        """The cell ``row`` scores."""
        return cls(row.benchmark, row.split, row.source, row.target, row.method, row.language_scale)

    def __str__(self) -> str:
        scale = "" if self.language_scale is None else f" scale {self.language_scale:g}"
        return f"{self.benchmark} {self.split} {self.source}->{self.target} {self.method}{scale}"


@dataclass(frozen=True)
class EarlierSeeds:
    """What a results folder holds of seeds a run does not train: kept when of the same recipe.

    Attributes:
        seeds: the seeds kept; rows, selections, overlaps, heldout: their lines of results.csv,
            selection.csv, overlap.csv and heldout.csv.
        dropped: seeds of another recipe left out (``overwrite``).
    """

    seeds: tuple[int, ...] = ()
    rows: tuple[EvalRow, ...] = ()
    selections: tuple[dict[str, str], ...] = ()
    overlaps: tuple[dict[str, str], ...] = ()
    heldout: tuple[dict[str, str], ...] = ()
    dropped: tuple[int, ...] = ()


def recipe_changes(config: PipelineConfig, recorded: Path) -> list[str]:
    """What differs between the recipe of ``config`` and the one a results folder's ``config.json``
    records (:func:`~deftx.pipeline.identity.run_identity`, so not its seeds or paths); one line
    instead when there is no readable record."""
    if not recorded.is_file():
        return [f"no {recorded.name} records their recipe"]
    try:
        values = json.loads(recorded.read_text())
        rules = values.pop(RULES, {}) if isinstance(values, dict) else {}
        earlier = parse_config(values, str(recorded))
    except (OSError, ValueError, RecursionError) as err:
        return [f"{recorded.name} cannot be read as a config of this version ({err})"]
    changes = describe_changes(normalised(with_rules(run_identity(earlier), rules)), normalised(run_identity(config)))
    return [with_rule_note(line) for line in changes]


def with_rules(identity: dict[str, Any], rules: Mapping[str, Any]) -> dict[str, Any]:
    """``identity`` (:func:`~deftx.pipeline.identity.run_identity`) with the method rules a results folder
    recorded (none when it recorded none: it was written before deftx recorded them) in place of today's."""
    identity = {key: value for key, value in identity.items() if key != RULES}
    return {**identity, RULES: dict(rules)} if rules else identity


def rows_recipe_changes(config: PipelineConfig, results_dir: Path, rows: Sequence[Mapping[str, str]]) -> list[str]:
    """What differs between the recipe of ``config`` and the one that made ``rows`` (lines of
    ``results_dir``'s results.csv): none when each carries ``config``'s :data:`RECIPE` digest; else
    :func:`recipe_changes` from its ``config.json`` (the only record of rows written before the column),
    or the digests when that file describes ``config``'s recipe, not theirs."""
    ours = recipe_hash(config)
    stamps = {row.get(RECIPE) or None for row in rows}
    if stamps == {ours}:
        return []
    changes = recipe_changes(config, results_dir / CONFIG_JSON)
    if changes or stamps <= {None, ours}:
        return changes
    theirs = sorted(stamp for stamp in stamps if stamp not in (None, ours))
    return [f"their rows' {RECIPE} {', '.join(theirs)} is not this config's {ours}, and {CONFIG_JSON} does "
            "not describe them"]


def missing_cells(rows: Sequence[Mapping[str, str]], cells: AbstractSet[Cell]) -> dict[int, list[Cell]]:
    """Seed -> the ``cells`` (one seed's grid) its ``rows`` (results.csv lines) lack, of the seeds that lack some."""
    present: dict[int, set[Cell]] = {}
    for row in rows:
        present.setdefault(int(row["seed"]), set()).add(Cell.of(EvalRow.from_record(row)))
    return {seed: sorted(cells - have, key=str) for seed, have in sorted(present.items()) if cells - have}


def incomplete_seeds_error(results_csv: Path, missing: Mapping[int, Sequence[Cell]]) -> ConfigError:
    """The refusal of kept seeds that lack some cells of their grid (:func:`missing_cells`)."""
    seeds = list(missing)
    named = "; ".join(f"seed {seed}: {', '.join(str(cell) for cell in cells[:MAX_NAMED_CELLS])}"
                      + (f" and {len(cells) - MAX_NAMED_CELLS} more" if len(cells) > MAX_NAMED_CELLS else "")
                      for seed, cells in missing.items())
    return ConfigError(f"{results_csv} lacks rows of seeds {seeds} that this recipe scores ({named}); their "
                       f"averages would be over fewer cells. Re-run them first (seeds: {seeds} in the config, or "
                       f"--seeds {' '.join(map(str, seeds))}: their finished steps are reused and their rows "
                       "written whole), then this run")


def kept_seeds_note(seeds: Sequence[int], ledger: Path, environment: Mapping[str, str]) -> str | None:
    """The results.md note on kept earlier seeds when the ``ledger``'s invocations ran on other
    versions than ``environment`` or recorded none; ``None`` when every one ran on the same."""
    records = read_ledger(ledger)
    unrecorded = sum(1 for record in records if not record.get("environment"))
    changes = list(dict.fromkeys(change for record in records if record.get("environment")
                                 if (change := environment_changes(record["environment"], environment))))
    reasons = [f"{unrecorded} of {len(records)} recorded no versions"] if unrecorded else []
    reasons += [f"some ran on other versions ({'; '.join(changes)})"] if changes else []
    if not reasons:
        return None
    return (f"seeds {list(seeds)} are kept from earlier invocations, of which {' and '.join(reasons)}: their rows "
            "and this invocation's may differ by more than the seed")


def earlier_seeds(config: PipelineConfig, results_dir: Path, cells: AbstractSet[Cell], *,
                  overwrite: bool = False) -> EarlierSeeds:
    """The results ``results_dir`` holds of seeds outside ``config.seeds``, to be kept beside this
    run's: a run of some seeds adds them to the folder's table instead of replacing it. ``cells``: the
    grid one seed of ``config`` scores (:func:`deftx.pipeline.run.seed_cells`).

    Raises:
        ConfigError: those seeds are of another recipe (:func:`rows_recipe_changes`, naming what
            changed), unless ``overwrite``, which leaves them out (:attr:`EarlierSeeds.dropped`); or
            some lack cells of the grid (:func:`incomplete_seeds_error`).
    """
    ours = set(config.seeds)
    other = [r for r in read_csv(results_dir / RESULTS_CSV) if int(r["seed"]) not in ours]
    if not other:
        return EarlierSeeds()
    seeds = tuple(sorted({int(r["seed"]) for r in other}))
    changes = rows_recipe_changes(config, results_dir, other)
    if changes and overwrite:
        return EarlierSeeds(dropped=seeds)
    if changes:
        raise ConfigError(f"{results_dir} holds the results of seeds {list(seeds)} of another recipe "
                          f"({'; '.join(changes)}): give this run its own --results-dir (deftx paired merges "
                          "results folders), or --overwrite to drop them")
    missing = missing_cells(other, cells)
    if missing:
        raise incomplete_seeds_error(results_dir / RESULTS_CSV, missing)

    def of_other_seeds(name: str) -> tuple[dict[str, str], ...]:
        return tuple(r for r in read_csv(results_dir / name) if int(r["seed"]) not in ours)

    return EarlierSeeds(seeds, tuple(EvalRow.from_record(r) for r in other), of_other_seeds("selection.csv"),
                        of_other_seeds("overlap.csv"), of_other_seeds(HELDOUT_CSV))


def heldout_corpora(config: PipelineConfig) -> list[str]:
    """The corpora ``config`` trains language SFTs on (:mod:`deftx.pipeline.heldout`): NusaX MT for its NusaX
    targets, AmericasNLP 2021 for its AmericasNLI test languages."""
    return [corpus for corpus, runs in ((NUSAX, config.runs_nusax), (AMERICASNLP, config.americasnli is not None))
            if runs]


def no_heldout_line(config: PipelineConfig, corpus: str) -> str:
    """The results.md line saying that ``corpus``'s language SFTs left no text of their language out."""
    name, key = CORPUS_NAMES[corpus], TEXT_SPLITS_KEYS[corpus]
    whose = "the language SFTs" if corpus == NUSAX else "the AmericasNLI language SFTs"
    return (f"Held-out masked-LM check: none — {whose} trained on every {name} split but test ({key}: "
            + "+".join(config.text_splits(corpus)) + "), so no text of their language is left that they did "
            "not see.")


def heldout_lines(config: PipelineConfig, records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The results.md section on the language SFTs' held-out masked-LM scores (``heldout.csv``)."""
    corpora = heldout_corpora(config)
    lines = [line for corpus in corpora if not has_heldout_text(config, corpus)
             for line in (no_heldout_line(config, corpus), "")]
    scored = [corpus for corpus in corpora if has_heldout_text(config, corpus)]
    if not records or not scored:
        return lines
    text = " and ".join(f"{CORPUS_NAMES[corpus]} {'+'.join(left_out_splits(config, corpus))}" for corpus in scored)
    return [*lines,
            f"Held-out masked-LM check (`{HELDOUT_CSV}`): did each language SFT learn its language? On {text} "
            "text, which neither the language SFTs nor the MLM head trained on, one fixed set of masks: "
            "the fall of the masked-token loss from θ0's with the SFT added at scale s (> 0: it predicts unseen "
            "text of its language better), and the top-1 accuracy of the masked tokens; mean ± sd over seeds "
            "(n seeds). The last columns pair each denoised method with each plain one within each seed (they "
            "branch from one phase 1): a − b in points, mean ± sd over seeds (n seeds; how many have it > 0).", "",
            *heldout_table(records, "language", "loss_change", config.denoised_pairs()), "",
            *heldout_table(records, "language", "accuracy", config.denoised_pairs()), ""]


def copy_run_logs(output_dir: Path, destination: Path) -> None:
    """Copy the small per-run files (loss logs, selection reports) next to the results; the copies an earlier
    call made are not copied again where ``destination`` lies under ``output_dir``."""
    for pattern in (LOG, SELECTION):
        for path in output_dir.rglob(pattern):
            if path.resolve().is_relative_to(destination.resolve()):
                continue
            target = destination / path.relative_to(output_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def loss_rows(logs: Path, seeds: Sequence[int], runs: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """One row per seed, run and phase of the run logs under ``logs`` (a pipeline's output_dir
    layout): the :class:`~deftx.train.losses.LossTrend` of the phase, seeds in order; only the phases
    ``runs`` names (:func:`~deftx.pipeline.layout.seed_runs`: run folder -> phases), not those another
    config left there.

    Raises:
        ValueError: a run log with a whole line that is not a JSON object (the pipeline wrote them;
            a phase that restarts drops its torn lines), naming the file and line.
    """
    return [{"seed": seed, "run": run, **trend.as_row()}
            for seed in seeds for run, trend in folder_trends(SeedLayout.of(logs, seed).root, strict=True)
            if trend.phase in runs.get(run, ())]


def hardly_trained(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The :func:`loss_rows` whose phase hardly trained or logged a non-finite loss."""
    return [row for row in rows if row["verdict"] != FELL]


def loss_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The results.md section on the training losses: per run (in path order) and phase (in log
    order), the mean over seeds of the first and last windows' loss, and the seeds in which the
    phase hardly trained or logged a non-finite loss (named as such: its loss may have fallen)."""
    if not rows:
        return []
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["run"], row["phase"]), []).append(row)
    table = ["| run | phase | steps | loss, first → last window (mean over seeds) | fall | "
             f"fell less than {FLAT_FALL:.0%} (or non-finite) in seeds |",
             "|---|---|---:|---|---:|---|"]
    for (run, phase), members in sorted(groups.items(), key=lambda item: item[0][0]):
        first, last = (sum(float(r[key]) for r in members) / len(members) for key in ("first_loss", "last_loss"))
        flat = [str(r["seed"]) + (f" ({NON_FINITE})" if r["verdict"] == NON_FINITE else "")
                for r in hardly_trained(members)]
        table.append(f"| {run} | {phase} | {members[0]['steps']} | {first:.3f} → {last:.3f} | "
                     f"{100 * (first - last) / first:+.1f}% | {', '.join(flat) or '—'} |")
    flat_count = sum(1 for row in rows if row["verdict"] == FLAT)
    non_finite = sum(1 for row in rows if row["verdict"] == NON_FINITE)
    return [f"Training losses (`losses.csv`: the mean logged loss over each phase's first and last "
            f"{rows[0]['window']}-step window): {flat_count} of {len(rows)} phases took off less than "
            f"{FLAT_FALL:.0%} of their loss" + (f", {non_finite} logged a non-finite loss (NaN or Inf)" if non_finite
                                                 else "")
            + (" — read their rows with care." if flat_count or non_finite else "."),
            "", *table, ""]


def data_lines(config: PipelineConfig) -> list[str]:
    """What each benchmark of ``config`` was trained and evaluated on, one line each."""
    lines = []
    if config.runs_nusax:
        lines.append(f"NusaX evaluated on the **{config.eval_split}** split; language SFT text: NusaX MT "
                     + "+".join(config.language_text_splits) + ".")
    if config.americasnli is not None:
        lines.append("AmericasNLI: task trained on the pooled **dev** sets of "
                     + ", ".join(config.americasnli.train_languages) + "; evaluated on the **test** sets of "
                     + ", ".join(config.americasnli.test_languages)
                     + "; language SFT text: AmericasNLP 2021 " + "+".join(config.americasnlp_text_splits)
                     + " of each test language.")
    return lines


def recorded_config(config: PipelineConfig, seeds: Sequence[int], device: str) -> dict[str, Any]:
    """What :data:`CONFIG_JSON` records: ``config`` with the ``seeds`` of its rows, the ``device`` they ran on and
    the :func:`~deftx.pipeline.identity.method_rules` they were made under (a config file that
    :func:`~deftx.pipeline.config.parse_config` reads back)."""
    rules = method_rules(config)
    return {**to_plain(config), "seeds": list(seeds), "device": device, **({RULES: rules} if rules else {})}


def write_side_table(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write ``rows`` to ``path`` (:func:`~deftx.eval.report.write_csv`), or remove ``path`` when there are none:
    the file holds this run's rows (and its kept seeds'), never an earlier run's that this one has none of."""
    if rows:
        write_csv(rows, path)
    else:
        path.unlink(missing_ok=True)


def kept_bytes(ws: Workspace, seeds: Sequence[int], runs: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Run folder (relative to ``output_dir``) -> the bytes it keeps, of every seed of ``seeds`` (those of the
    rows): this invocation's finished runs (``ws.kept``), and the ``runs`` folders
    (:func:`~deftx.pipeline.layout.seed_runs`) of the seeds kept from earlier invocations that ``output_dir``
    holds."""
    earlier = {}
    for seed in seeds:
        if seed not in ws.config.seeds:
            root = ws.layout(seed).root
            earlier |= {str((root / run).relative_to(ws.output_dir)): folder_bytes(root / run)
                        for run in runs if (root / run).is_dir()}
    return {**earlier, **ws.kept}


def write_outputs(ws: Workspace, rows: list[EvalRow], wall_seconds: float, command: str | None,
                  runs: Mapping[str, Sequence[str]]) -> str:
    """results.csv, config.json, summary.csv, overlap.csv, selection.csv, losses.csv, timings.json, results.md,
    results.png. config.json (the config of results.csv's rows, their seeds) is written right after results.csv,
    each atomically, so that a run stopped anywhere leaves the two describing each other; every row carries
    the :data:`RECIPE` digest of the config that made it (:func:`earlier_seeds` checks it). ``runs``: the run
    folders of a seed and their phases (:func:`~deftx.pipeline.layout.seed_runs`), those losses.csv reports.

    Returns the macro-F1 tables, and the losses section's first line when a phase hardly trained.
    """
    out = ws.results_dir
    seeds = sorted({row.seed for row in rows})
    recipe = recipe_hash(ws.config)
    plain = [{**row.as_dict(), RECIPE: recipe} for row in rows]
    write_csv(plain, out / RESULTS_CSV)
    recorded = recorded_config(ws.config, seeds, ws.device)
    atomic_write_bytes(out / CONFIG_JSON, (json.dumps(recorded, indent=2) + "\n").encode())
    summary = summarize(plain, exclude_from_average=ws.config.sources)
    write_csv(summary, out / "summary.csv")
    write_side_table(ws.overlaps, out / "overlap.csv")
    write_side_table(ws.selections, out / "selection.csv")
    write_side_table(ws.heldout, out / HELDOUT_CSV)
    timings = {"wall_seconds": wall_seconds, "earlier_invocations_seconds": ws.earlier_seconds, **ws.timings}
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    if ws.head_metrics:
        (out / "mlm_head.json").write_text(json.dumps(ws.head_metrics, indent=2) + "\n")
    kept = kept_bytes(ws, seeds, runs)
    (out / "disk.json").write_text(json.dumps({**kept, "total": sum(kept.values())}, indent=2) + "\n")
    logs = ws.output_dir
    if ws.results_dir.resolve() != ws.output_dir.resolve():
        logs = ws.results_dir / "logs"
        copy_run_logs(ws.output_dir, logs)
    losses = loss_rows(logs, seeds, runs)
    write_side_table(losses, out / "losses.csv")
    main = [r for r in summary if not r["method"].endswith(NO_LANGUAGE_SFT)]
    bar_plot(main, out / "results.png")
    tables = markdown_tables(main, "macro_f1")
    text = [f"# {ws.config.name}: zero-shot results", ""]
    if command:
        text += ["Command:", "", f"    {command}", ""]
    earlier = ws.earlier_seconds
    total = f" ({(earlier + wall_seconds) / 60:.1f} min over all invocations of this run)" if earlier else ""
    text += [
        f"Wall time: {wall_seconds / 60:.1f} min{total}. Model: {ws.config.model} ({ws.model_dir}); "
        "multilingual-e5-small here is 4-bit (Q4_0 word embeddings and Linear weights).",
        f"Seeds: {seeds}. Methods: {BASELINE} (full fine-tuning on the source, no SFT), "
        + ", ".join(ws.config.methods) + " (task SFT + target language SFT"
        + f", scaled by {', '.join(f'{s:g}' for s in ws.config.language_scales())}).",
        *data_lines(ws.config),
        "",
        tables,
        markdown_tables(main, "accuracy"),
        "Without the target language SFT (task SFT alone):",
        "",
        markdown_tables([r for r in summary if r["method"].endswith(NO_LANGUAGE_SFT)] or main[:0], "macro_f1")
        if any(r["method"].endswith(NO_LANGUAGE_SFT) for r in summary) else "(none)\n",
    ]
    if ws.head_metrics:
        text += [head_report_line(ws.head_metrics), ""]
    if ws.notes:
        text += ["Notes:", "", *[f"- {note}" for note in ws.notes], ""]
    losses_section = loss_lines(losses)
    text += losses_section
    text += heldout_lines(ws.config, ws.heldout)
    text += disk_lines(kept)
    text += [versions_line(ws.environment), ""]
    text += ["Files: results.csv (per seed), summary.csv, overlap.csv (mask overlap per group), "
             "selection.csv (share of K per group), losses.csv (training loss per phase), heldout.csv (held-out "
             "masked-LM scores of the language SFTs, when some MT text is left out), timings.json, disk.json, "
             "results.png.", ""]
    (out / "results.md").write_text("\n".join(text))
    if hardly_trained(losses):
        return f"{tables}\n{losses_section[0]}\n"
    return tables


def disk_lines(kept: Mapping[str, int]) -> list[str]:
    """The results.md section on the bytes each run folder keeps (identities, logs, reports, SFTs, results)."""
    if not kept:
        return []
    rows = [f"| {folder} | {size:,} |" for folder, size in sorted(kept.items())]
    return ["Disk kept by each run (bytes; θ0 is the base model and never copied, θ1 and masks are removed "
            "once their SFTs are written):", "", "| run folder | bytes |", "|---|---:|", *rows,
            f"| **total** | {sum(kept.values()):,} |", ""]


def reused_steps_note(attached: Mapping[str, int], store: str) -> str:
    """The results.md note on the finished steps this invocation linked from ``store`` (by step name)."""
    if not attached:
        return f"step store {store}: this invocation linked no step from it (and added its finished steps)"
    counts = ", ".join(f"{name} ×{count}" for name, count in sorted(attached.items()))
    return (f"step store {store}: this invocation linked {sum(attached.values())} finished steps instead of "
            f"training them ({counts}); their wall time is the run's that trained them, not this one's")

