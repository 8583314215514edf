"""The held-out check of a run's language SFTs: θ0 and θ0 + s·φ on text neither they nor the MLM
head trained on (:mod:`deftx.eval.language`).

Language SFTs train on one of two corpora, and the held-out text of a language is its text of the
corpus's splits that the config's training text leaves out (the MLM head's text of that corpus is of
the same splits); never a test split:

- :data:`NUSAX`: the NusaX languages' MT text; held out: the MT splits not in ``language_text_splits``.
- :data:`AMERICASNLP`: the AmericasNLI languages' AmericasNLP 2021 text (``deftx train-lang
  --americasnlp``, the pipeline's ``americasnli`` section); held out: the splits not in
  ``americasnlp_text_splits`` (``dev``, the AmericasNLI dev sentences, when it is ``[train]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from deftx.data import americasnli, americasnlp, nusax
from deftx.eval.language import HeldoutRow, heldout_records, score_language_sfts
from deftx.models.mlm import FrozenDecoderMLM, build_mlm_model
from deftx.pipeline.config import AMERICASNLP, NUSAX, TEXT_SPLITS_KEYS, PipelineConfig
from deftx.pipeline.layout import SeedLayout, branch_file
from deftx.pipeline.workspace import Workspace
from deftx.sft import SparseDiff
from deftx.train.masking import MLMCollator, chunk_token_ids, mask_once

MASK_SEED = 0
"""Default seed of the held-out masks: one set of masks for every seed, method and scale of a run."""
HELDOUT_CSV = "heldout.csv"
"""The held-out rows a pipeline or ablation writes beside its results (:func:`~deftx.eval.language.heldout_records`)."""
CORPUS_NAMES = {NUSAX: "NusaX MT", AMERICASNLP: "AmericasNLP 2021"}
"""Corpus -> its name in reports."""
_ALL_SPLITS = {NUSAX: nusax.MT_SPLITS, AMERICASNLP: americasnlp.SPLITS}
KNOWN_LANGUAGES = {NUSAX: tuple(nusax.LANGUAGE_CODES), AMERICASNLP: americasnli.LANGUAGES}
"""Corpus -> the languages it has text of: the NusaX languages' folder names, the AmericasNLI codes."""


def left_out_splits(config: PipelineConfig, corpus: str = NUSAX) -> tuple[str, ...]:
    """The splits of ``corpus`` (never test) left out of ``config``'s training text of that corpus."""
    trained = config.text_splits(corpus)
    return tuple(split for split in _ALL_SPLITS[corpus] if split not in trained)


def has_heldout_text(config: PipelineConfig, corpus: str = NUSAX) -> bool:
    """Whether some split of ``corpus`` is left out of ``config``'s training text of that corpus."""
    return bool(left_out_splits(config, corpus))


def nusax_languages(config: PipelineConfig) -> list[str]:
    """The languages ``config``'s NusaX protocol may train language SFTs for: targets, then sources."""
    return list(dict.fromkeys([*config.targets, *config.sources]))


def config_languages(config: PipelineConfig, corpus: str = NUSAX) -> list[str]:
    """The languages ``config`` trains language SFTs for on ``corpus``: NusaX targets then sources
    (:func:`nusax_languages`), or the AmericasNLI test languages (none without that section)."""
    if corpus == AMERICASNLP:
        return list(config.americasnli.test_languages) if config.americasnli is not None else []
    return nusax_languages(config)


def check_languages(config: PipelineConfig, languages: Iterable[str], corpus: str = NUSAX) -> None:
    """Refuse a language of ``languages`` that ``corpus`` has no text of (:data:`KNOWN_LANGUAGES`), before
    any SFT file is looked for: no language SFT of it can exist to score.

    Raises:
        ValueError: naming the unknown languages, the known ones and ``config``'s own
            (:func:`config_languages`).
    """
    unknown = [language for language in dict.fromkeys(languages) if language not in KNOWN_LANGUAGES[corpus]]
    if unknown:
        kind = "AmericasNLI language code" if corpus == AMERICASNLP else "NusaX language"
        named = f"{kind} {unknown[0]!r}" if len(unknown) == 1 else f"{kind}s {unknown}"
        own = "AmericasNLI test languages" if corpus == AMERICASNLP else "targets and sources"
        raise ValueError(f"unknown {named}: not one of the config's {own} "
                         f"({', '.join(config_languages(config, corpus)) or 'none'}) nor of the known "
                         f"{kind}s ({', '.join(KNOWN_LANGUAGES[corpus])})")


def default_scales(config: PipelineConfig) -> tuple[float, ...]:
    """The scales a language SFT is scored at by default: 1 and ``config``'s language scales, ascending."""
    return tuple(sorted({1.0, *config.language_scales()}))


def heldout_splits(ws: Workspace, corpus: str = NUSAX) -> tuple[str, ...]:
    """The splits of ``corpus`` no language SFT or MLM head of ``ws`` trained on (ValueError when none)."""
    splits = left_out_splits(ws.config, corpus)
    if not splits:
        key = TEXT_SPLITS_KEYS[corpus]
        raise ValueError(
            f"{key} {list(ws.config.text_splits(corpus))} covers every {CORPUS_NAMES[corpus]} split but test: "
            f"no held-out text to score language SFTs on (set {key}: [train] to keep "
            f"{'+'.join(split for split in _ALL_SPLITS[corpus] if split != 'train')} out)"
        )
    return splits


def trained_languages(config: PipelineConfig, seed: int, corpus: str = NUSAX) -> list[str]:
    """The languages with a language SFT of some method of ``config`` on ``corpus`` under its ``output_dir``
    for ``seed``."""
    root = SeedLayout.of(Path(config.output_dir), seed).languages(americasnlp=corpus == AMERICASNLP)
    folders = sorted(path for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
    return [folder.name for folder in folders
            if any(branch_file(folder, method).is_file() for method in config.methods)]


def language_sft_files(ws: Workspace, seed: int, language: str, corpus: str = NUSAX) -> dict[str, Path]:
    """Method -> SFT file of ``language``'s language SFT on ``corpus`` under seed ``seed`` (FileNotFoundError
    when none)."""
    work = ws.layout(seed).language(language, americasnlp=corpus == AMERICASNLP)
    files = {method: branch_file(work, method) for method in ws.config.methods}
    found = {method: path for method, path in files.items() if path.is_file()}
    if not found:
        flag = " --americasnlp" if corpus == AMERICASNLP else ""
        raise FileNotFoundError(
            f"no language SFT of {language} for seed {seed} ({', '.join(str(p) for p in files.values())}); "
            f"train it first: deftx train-lang CONFIG{flag} --language {language} --seed {seed}"
        )
    return found


def heldout_texts(ws: Workspace, language: str, corpus: str = NUSAX) -> list[str]:
    """``language``'s text of the ``corpus`` splits no language SFT or MLM head of ``ws`` trained on."""
    splits = heldout_splits(ws, corpus)
    if corpus == AMERICASNLP:
        return americasnlp.load_text(ws.data_dir, language, splits)
    return nusax.load_mt_text(ws.data_dir, language, splits)


def heldout_batches(ws: Workspace, language: str, mask_seed: int = MASK_SEED,
                    corpus: str = NUSAX) -> list[dict[str, torch.Tensor]]:
    """``language``'s held-out text (:func:`heldout_texts`) in masked batches: the language SFTs' window and
    batch size, the masks drawn from ``mask_seed``."""
    texts = heldout_texts(ws, language, corpus)
    settings = ws.language_settings(mask_seed)
    sequences = chunk_token_ids(ws.tokenizer, texts, settings.max_length)
    if not sequences:
        raise ValueError(f"{language}: no held-out text in the {CORPUS_NAMES[corpus]} splits "
                         f"{list(heldout_splits(ws, corpus))}")
    return mask_once(MLMCollator(ws.tokenizer, seed=mask_seed), sequences, settings.batch_size)


def score_heldout(model: FrozenDecoderMLM, sft_files: Mapping[str, Path], scales: Sequence[float],
                  batches: Sequence[Mapping[str, torch.Tensor]]) -> list[HeldoutRow]:
    """θ0 and each method's language SFT (``sft_files``: :func:`language_sft_files`) at each scale, on the
    language's held-out ``batches`` (:func:`heldout_batches`)."""
    sfts = {method: SparseDiff.load(path) for method, path in sft_files.items()}
    return score_language_sfts(model, sfts, scales, batches)


class _ThetaZeroMLM:
    """θ0's body on ``ws.device`` with the MLM head in ``head_file``, built on the first call and then kept."""

    def __init__(self, ws: Workspace, head_file: Path) -> None:
        self.ws = ws
        self.head_file = head_file
        self._model: FrozenDecoderMLM | None = None

    def __call__(self) -> FrozenDecoderMLM:
        if self._model is None:
            self._model = build_mlm_model(self.ws.model_dir, head_state=self.head_file).to(self.ws.device)
        return self._model


class HeldoutScorer:
    """The held-out check of one workspace's language SFTs on one ``corpus``, seed by seed.

    The MLM model (θ0's body on ``ws.device`` with the MLM head in ``head_file``) is built on first
    use, once for this scorer and those :meth:`for_corpus` makes from it, and each language's masked
    batches (:func:`heldout_batches`, masks drawn from ``mask_seed``) are made once, so every seed and
    method of a run is scored against the same masks.
    """

    def __init__(self, ws: Workspace, head_file: Path, scales: Sequence[float] | None = None,
                 mask_seed: int = MASK_SEED, corpus: str = NUSAX) -> None:
        ws.config.text_splits(corpus)
        self.ws = ws
        self.head_file = head_file
        self.scales = tuple(scales) if scales else default_scales(ws.config)
        self.mask_seed = mask_seed
        self.corpus = corpus
        self._batches: dict[str, list[dict[str, torch.Tensor]]] = {}
        self._model = _ThetaZeroMLM(ws, head_file)

    def for_corpus(self, corpus: str) -> HeldoutScorer:
        """A scorer of the same workspace, head, scales and mask seed on ``corpus``, sharing this one's MLM
        model (built once for both)."""
        scorer = HeldoutScorer(self.ws, self.head_file, self.scales, self.mask_seed, corpus)
        scorer._model = self._model
        return scorer

    def batches(self, language: str) -> list[dict[str, torch.Tensor]]:
        """``language``'s held-out batches, made on the first call (ValueError when it has no held-out text)."""
        if language not in self._batches:
            self._batches[language] = heldout_batches(self.ws, language, self.mask_seed, self.corpus)
        return self._batches[language]

    def prepare(self, languages: Iterable[str]) -> HeldoutScorer:
        """Make the held-out batches of ``languages`` now: before training, so that missing held-out text
        fails at once rather than after the run's training. Returns the scorer."""
        for language in languages:
            self.batches(language)
        return self

    def model(self) -> FrozenDecoderMLM:
        """θ0 with the run's MLM head, built on the first call of this scorer or one sharing its model."""
        return self._model()

    def records(self, seed: int, language: str, sft_files: Mapping[str, Path] | None = None) -> list[dict[str, Any]]:
        """θ0 and each method's language SFT of ``seed`` at every scale (:func:`~deftx.eval.language.heldout_records`).

        Args:
            sft_files: method -> SFT file; default: the seed's (:func:`language_sft_files`).
        """
        files = sft_files if sft_files is not None else language_sft_files(self.ws, seed, language, self.corpus)
        batches = self.batches(language)
        return heldout_records(seed, language, score_heldout(self.model(), files, self.scales, batches))
