"""The held-out check of a run's NusaX language SFTs: θ0 and θ0 + s·φ on text neither they nor
the MLM head trained on (:mod:`deftx.eval.language`).

The held-out text of a language is its NusaX MT text of the splits that are not in
``language_text_splits`` (the MLM head's NusaX text is of those splits too); never a test split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from deftx.data import nusax
from deftx.eval.language import HeldoutRow, score_language_sfts
from deftx.models.mlm import FrozenDecoderMLM
from deftx.pipeline.layout import branch_file
from deftx.pipeline.workspace import Workspace
from deftx.sft import SparseDiff
from deftx.train.masking import MLMCollator, chunk_token_ids, mask_once

MASK_SEED = 0
"""Seed of the held-out masks: one set of masks for every seed, method and scale of a run."""


def heldout_splits(ws: Workspace) -> tuple[str, ...]:
    """The NusaX MT splits no language SFT or MLM head of ``ws`` trained on (ValueError when none)."""
    splits = tuple(split for split in nusax.MT_SPLITS if split not in ws.config.language_text_splits)
    if not splits:
        raise ValueError(
            f"language_text_splits {list(ws.config.language_text_splits)} covers every NusaX MT split but test: "
            "no held-out text to score language SFTs on (train them on [train] to keep valid out)"
        )
    return splits


def trained_languages(ws: Workspace, seed: int) -> list[str]:
    """The NusaX languages with a language SFT of some method of the config under seed ``seed``."""
    root = ws.layout(seed).root / "lang"
    folders = sorted(path for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
    return [folder.name for folder in folders
            if any(branch_file(folder, method).is_file() for method in ws.config.methods)]


def language_sft_files(ws: Workspace, seed: int, language: str) -> dict[str, Path]:
    """Method -> SFT file of ``language``'s language SFT under seed ``seed`` (FileNotFoundError when none)."""
    work = ws.layout(seed).language(language)
    files = {method: branch_file(work, method) for method in ws.config.methods}
    found = {method: path for method, path in files.items() if path.is_file()}
    if not found:
        raise FileNotFoundError(
            f"no language SFT of {language} for seed {seed} ({', '.join(str(p) for p in files.values())}); "
            f"train it first: deftx train-lang CONFIG --language {language} --seed {seed}"
        )
    return found


def heldout_batches(ws: Workspace, language: str) -> list[dict[str, torch.Tensor]]:
    """``language``'s held-out text in masked batches (language-SFT window and batch size, :data:`MASK_SEED`)."""
    texts = nusax.load_mt_text(ws.data_dir, language, heldout_splits(ws))
    settings = ws.language_settings(MASK_SEED)
    sequences = chunk_token_ids(ws.tokenizer, texts, settings.max_length)
    if not sequences:
        raise ValueError(f"{language}: no held-out text in the NusaX MT splits {list(heldout_splits(ws))}")
    return mask_once(MLMCollator(ws.tokenizer, seed=MASK_SEED), sequences, settings.batch_size)


def score_heldout(model: FrozenDecoderMLM, sft_files: Mapping[str, Path], scales: Sequence[float],
                  batches: Sequence[Mapping[str, torch.Tensor]]) -> list[HeldoutRow]:
    """θ0 and each method's language SFT (``sft_files``: :func:`language_sft_files`) at each scale, on the
    language's held-out ``batches`` (:func:`heldout_batches`)."""
    sfts = {method: SparseDiff.load(path) for method, path in sft_files.items()}
    return score_language_sfts(model, sfts, scales, batches)
