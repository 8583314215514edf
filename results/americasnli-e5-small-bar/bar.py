"""The AmericasNLI full fine-tuning bar with its learning rate chosen on a held-out *training* language.

Two stages (NOTES.md has the question and the rule, written before any row):

``select``  full fine-tuning on the pooled dev sets of the training languages but one, at each
            candidate lr, scored on the held-out language's dev set; appends to ``select.csv``.
``final``   full fine-tuning on all five training languages' dev sets at the chosen lr, scored on
            the test sets of the five test languages, as the pipeline's bar is; appends to ``final.csv``.

Both resume: a (stage, lr, seed) already in its CSV is skipped, and a finished training run in
``runs/americasnli-e5-small-bar`` is reused (the pipeline's own step folders and identities).
Usage, from the repository root (COMMANDS.sh has the commands run)::

    python results/americasnli-e5-small-bar/bar.py select
    python results/americasnli-e5-small-bar/bar.py final --lr 3e-5 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from deftx.data import americasnli
from deftx.eval.report import read_csv, write_csv
from deftx.eval.zero_shot import RowContext, nli_examples
from deftx.pipeline.config import PipelineConfig, load_config
from deftx.pipeline.run import ANLI, ANLI_PROTOCOL, baseline_cells, evaluate, pooled_dev
from deftx.pipeline.steps import full_finetune
from deftx.pipeline.workspace import Workspace
from deftx.train.checkpoint import read_log

HERE = Path(__file__).resolve().parent
CONFIG = "configs/americasnli-e5-small.yaml"
OUTPUT = Path("runs/americasnli-e5-small-bar")
HELD_OUT = "shp"
CANDIDATES = (1e-5, 3e-5)


def bar_config(base: PipelineConfig, learning_rate: float, stage: str, seed: int, output: Path,
               results: Path) -> PipelineConfig:
    """The base config with the bar's lr replaced and its own folders (nothing else changes)."""
    return replace(base, full_finetune=replace(base.full_finetune, learning_rate=learning_rate),
                   output_dir=str(output / stage / f"lr-{learning_rate:g}"), results_dir=str(results), seeds=(seed,))


def loss_ends(log: Path, points: int = 10) -> tuple[float, float]:
    """Mean training loss over the first and the last ``points`` logged steps of the run's log.jsonl."""
    losses = [record["loss"] for record in read_log(log) if "loss" in record]
    return sum(losses[:points]) / len(losses[:points]), sum(losses[-points:]) / len(losses[-points:])


def train_and_score(ws: Workspace, train_languages: list[str], targets: list[str], split: str, seed: int,
                    stage: str) -> list[dict]:
    """One full fine-tuning on the pooled dev sets of ``train_languages``, scored on ``split`` of ``targets``."""
    max_length = ws.config.training.max_length
    source, train = pooled_dev(ws, train_languages)
    scored = {language: nli_examples(ws.data_dir, language, split, ws.tokenizer, max_length) for language in targets}
    began = time.perf_counter()
    work = ws.layout(seed).anli_baseline()
    model = full_finetune(ws, train, seed, len(americasnli.LABELS), work)
    rows = evaluate(ws, model, baseline_cells(scored), RowContext(ANLI, ANLI_PROTOCOL, source, seed, split),
                    len(americasnli.LABELS))
    first, last = loss_ends(work / "log.jsonl")
    minutes = (time.perf_counter() - began) / 60
    return [{"stage": stage, "learning_rate": ws.config.full_finetune.learning_rate, "seed": seed, "source": source,
             "target": row.target, "split": split, "macro_f1": row.macro_f1, "accuracy": row.accuracy,
             "examples": row.examples, "first_loss": first, "last_loss": last, "minutes": minutes} for row in rows]


def done(path: Path) -> set[tuple[float, int]]:
    """The (lr, seed) pairs whose rows ``path`` already holds."""
    return {(float(row["learning_rate"]), int(row["seed"])) for row in read_csv(path)}


def run(stage: str, learning_rates: list[float], seeds: list[int], config: str, output: Path,
        results: Path) -> None:
    base = load_config(config)
    section = base.americasnli
    if stage == "select":
        train_languages = [language for language in section.train_languages if language != HELD_OUT]
        targets, split = [HELD_OUT], "dev"
    else:
        train_languages, targets, split = list(section.train_languages), list(section.test_languages), "test"
    path = results / f"{stage}.csv"
    for seed in seeds:
        for learning_rate in learning_rates:
            if (learning_rate, seed) in done(path):
                print(f"{stage} lr {learning_rate:g} seed {seed}: already in {path.name}")
                continue
            ws = Workspace.open(bar_config(base, learning_rate, stage, seed, output, results), print)
            rows = train_and_score(ws, train_languages, targets, split, seed, stage)
            write_csv([*read_csv(path), *rows], path)
            mean = sum(row["macro_f1"] for row in rows) / len(rows)
            print(f"{stage} lr {learning_rate:g} seed {seed}: {rows[0]['minutes']:.1f} min, training loss "
                  f"{rows[0]['first_loss']:.3f} -> {rows[0]['last_loss']:.3f}, {split} macro-F1 mean {100 * mean:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("select", "final"))
    parser.add_argument("--lr", type=float, nargs="+", help="select: the candidates (default: NOTES.md's); "
                        "final: the chosen lr")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--config", default=CONFIG, help="the pipeline config whose recipe the bar keeps "
                        "but for its lr (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="training runs (default: %(default)s)")
    parser.add_argument("--results", type=Path, default=HERE, help="select.csv / final.csv (default: this folder)")
    args = parser.parse_args()
    if args.stage == "final" and not args.lr:
        parser.error("final needs --lr (the lr select chose)")
    args.results.mkdir(parents=True, exist_ok=True)
    run(args.stage, args.lr or list(CANDIDATES), args.seeds, args.config, args.output, args.results)


if __name__ == "__main__":
    main()
