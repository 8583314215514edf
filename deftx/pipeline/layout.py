"""Where a pipeline run keeps each step under its ``output_dir``: the one layout shared by the
run (:mod:`deftx.pipeline.run`), its dry-run plan (:mod:`deftx.pipeline.plan`) and the
single-step commands (``deftx train-lang``, ``deftx train-task``)::

    seed-<s>/lang/<language>/              NusaX language SFT (phase 1 shared, one folder per method)
    seed-<s>/task/<source>/<method>/       task SFT on the source's <method> language SFT
    seed-<s>/task/<source>/shared/         (task_on_source_sft: false) one run, every method a branch
    seed-<s>/full/<source>/                NusaX full fine-tuning baseline
    seed-<s>/anli/lang/<language>/         AmericasNLI language SFT (AmericasNLP 2021 text)
    seed-<s>/anli/task/pooled/shared/      AmericasNLI task SFT, one run, every method a branch
    seed-<s>/anli/full/                    AmericasNLI full fine-tuning baseline

A run folder holds ``<method>/sft.safetensors`` for each of its branches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from deftx.pipeline.config import PipelineConfig
from deftx.train.sparse_finetuner import SFT

SHARED_RUN = "shared"
ANLI_TASK_NAME = "pooled"
FULL_PHASE = "full"
"""The phase tag in a run log of an SFT's phase 1 and of the full fine-tuning baseline."""


def task_run_name(method: str, on_source_sft: bool) -> str:
    """The name of the task-SFT run that trains ``method``: its own on a source SFT, else the shared one."""
    return method if on_source_sft else SHARED_RUN


def branch_file(run_dir: Path, method: str) -> Path:
    """The SFT file of ``method``'s branch in the run folder ``run_dir``."""
    return run_dir / method / SFT


@dataclass(frozen=True)
class SeedLayout:
    """The step folders of one seed: ``root`` is ``<output_dir>/seed-<s>``."""

    root: Path

    @classmethod
    def of(cls, output_dir: Path, seed: int) -> SeedLayout:
        return cls(Path(output_dir) / f"seed-{seed}")

    def languages(self, americasnlp: bool = False) -> Path:
        """The folder of the language-SFT runs (on AmericasNLP 2021 text when ``americasnlp``), one per language."""
        return (self.root / "anli" if americasnlp else self.root) / "lang"

    def language(self, language: str, americasnlp: bool = False) -> Path:
        """The language-SFT run of ``language`` (on AmericasNLP 2021 text when ``americasnlp``)."""
        return self.languages(americasnlp) / language

    def task(self, source: str) -> Path:
        """The NusaX task-SFT runs of ``source``: one folder per run name (:func:`task_run_name`)."""
        return self.root / "task" / source

    def baseline(self, source: str) -> Path:
        """The NusaX full fine-tuning baseline trained on ``source``."""
        return self.root / "full" / source

    def anli_task(self) -> Path:
        """The AmericasNLI task-SFT runs (one, ``shared``, on the pooled training languages)."""
        return self.root / "anli" / "task" / ANLI_TASK_NAME

    def anli_baseline(self) -> Path:
        """The AmericasNLI full fine-tuning baseline."""
        return self.root / "anli" / "full"


def sft_phases(methods: Iterable[str]) -> tuple[str, ...]:
    """The phase tags an SFT run of branches ``methods`` logs: its phase 1, then each branch's sparse phase."""
    return (FULL_PHASE, *(f"sparse:{method}" for method in methods))


def seed_runs(config: PipelineConfig, nusax_languages: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Each run folder one seed of ``config`` trains, relative to :attr:`SeedLayout.root` (POSIX), -> the phase
    tags its log holds for ``config``; ``nusax_languages``: the NusaX languages it trains a language SFT of.

    A folder left by another config (a method, target or baseline since dropped) is not one of them, nor
    is the phase of a dropped method in a run folder still used."""
    layout = SeedLayout(Path())
    runs: dict[Path, tuple[str, ...]] = {}
    methods = list(config.methods)
    if config.runs_nusax:
        runs |= {layout.language(language): sft_phases(methods) for language in nusax_languages}
        for source in config.sources:
            if config.task_on_source_sft:
                runs |= {layout.task(source) / task_run_name(method, True): sft_phases([method])
                         for method in methods}
            else:
                runs[layout.task(source) / SHARED_RUN] = sft_phases(methods)
            if config.baseline:
                runs[layout.baseline(source)] = (FULL_PHASE,)
    if config.americasnli is not None:
        runs |= {layout.language(language, americasnlp=True): sft_phases(methods)
                 for language in config.americasnli.test_languages}
        runs[layout.anli_task() / SHARED_RUN] = sft_phases(methods)
        if config.baseline:
            runs[layout.anli_baseline()] = (FULL_PHASE,)
    return {run.as_posix(): phases for run, phases in runs.items()}
