"""The labelled data sets through ``datasets.load_dataset``, for users with a network.

Same examples as the local readers (``deftx.data.nusax.load_sentiment``,
``deftx.data.americasnli.load_nli``), fetched from the Hugging Face Hub or read from the
``datasets`` cache. Offline (no network, or ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` set) a
cached copy is read; without one every loader raises ``HubUnavailableError`` pointing at the
local readers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from numbers import Integral
from typing import Any

from deftx.data import americasnli, nusax
from deftx.data.americasnli import NLIExample
from deftx.data.nusax import SentimentExample

NUSAX_REPO = "indonlp/NusaX-senti"
AMERICASNLI_REPO = "americas_nli"
HUB_SPLITS = {"train": "train", "valid": "validation", "dev": "validation", "test": "test"}
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class HubUnavailableError(RuntimeError):
    """The Hub could not be reached (offline); the message names the local reader to use."""


def _offline_variable() -> str | None:
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}:
            return name
    return None


def _unavailable(repo: str, config: str, local_reader: str, reason: str) -> HubUnavailableError:
    return HubUnavailableError(
        f"cannot load {repo!r} (config {config!r}) from the Hugging Face Hub: {reason}. "
        f"Without a network, read the local copy with {local_reader}(data_dir, ...) "
        "(see deftx.data.default_data_dir)"
    )


def _load_dataset(repo: str, config: str, split: str) -> Iterable[Mapping[str, Any]]:
    import datasets

    return datasets.load_dataset(repo, config, split=split)


def _fetch(
    repo: str, config: str, split: str, local_reader: str
) -> tuple[Iterable[Mapping[str, Any]], Callable[[Any], str | None]]:
    """Rows of one Hub split (offline: of the ``datasets`` cache) and a function turning a raw label into its name."""
    try:
        rows = _load_dataset(repo, config, split)
    except (ConnectionError, OSError) as err:
        offline = _offline_variable()
        cache = f"${offline} is set and the datasets cache holds no copy; " if offline else ""
        raise _unavailable(repo, config, local_reader, f"{cache}{type(err).__name__}: {err}") from err
    features = getattr(rows, "features", None) or {}
    names = getattr(features.get("label"), "names", None)
    return rows, class_label_name(names) if names else str


def class_label_name(names: list[str]) -> Callable[[Any], str | None]:
    """Raw label -> its name in a ``ClassLabel`` column of ``names``; None for an id outside ``0..len-1``
    (``datasets`` marks an unlabelled row with -1, which Python indexing would make the last name)."""

    def name(raw: Any) -> str | None:
        return names[raw] if isinstance(raw, Integral) and 0 <= raw < len(names) else None

    return name


def _hub_split(split: str) -> str:
    if split not in HUB_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(HUB_SPLITS)}")
    return HUB_SPLITS[split]


def _label(raw: Any, to_name: Callable[[Any], str | None], labels: tuple[str, ...], where: str) -> int:
    name = to_name(raw)
    if name not in labels:
        raise ValueError(f"{where}: label {raw!r} is not one of {', '.join(labels)}")
    return labels.index(name)


def _text(row: Mapping[str, Any], column: str, where: str) -> str:
    """``row[column]`` stripped; ValueError naming ``where`` when it is missing, not a string or empty."""
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {column} {value!r} is no text (missing, not a string or empty)")
    return value.strip()


def load_sentiment_hub(language: str, split: str, *, repo: str = NUSAX_REPO) -> list[SentimentExample]:
    """NusaX sentiment examples of ``language`` (a folder name such as ``"acehnese"``).

    ``split`` is ``train``, ``valid`` or ``test`` (``valid`` is the Hub's ``validation``).
    """
    if language not in nusax.LANGUAGE_CODES:
        raise ValueError(f"unknown NusaX language {language!r}; known: {', '.join(nusax.LANGUAGE_CODES)}")
    config = nusax.LANGUAGE_CODES[language]
    rows, to_name = _fetch(repo, config, _hub_split(split), "deftx.data.nusax.load_sentiment")
    return [
        SentimentExample(
            _text(row, "text", f"{repo}/{config} row {i}"),
            _label(row["label"], to_name, nusax.LABELS, f"{repo}/{config} row {i}"),
            str(row.get("id", i)),
        )
        for i, row in enumerate(rows)
    ]


def load_nli_hub(language: str, split: str, *, repo: str = AMERICASNLI_REPO) -> list[NLIExample]:
    """AmericasNLI examples of ``language`` (a code such as ``"aym"``); ``split`` dev or test."""
    americasnli.check_language(language)
    if split not in americasnli.SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(americasnli.SPLITS)}")
    rows, to_name = _fetch(repo, language, _hub_split(split), "deftx.data.americasnli.load_nli")
    return [
        NLIExample(
            _text(row, "premise", f"{repo}/{language} row {i}"),
            _text(row, "hypothesis", f"{repo}/{language} row {i}"),
            _label(row["label"], to_name, americasnli.LABELS, f"{repo}/{language} row {i}"),
            str(row.get("id", i)),
            language,
        )
        for i, row in enumerate(rows)
    ]
