"""Fixtures for the model tests: a tiny word-level tokenizer, tiny BERT configs, the real e5.

The real multilingual-e5-small is converted once per test session: into ``$DEFTX_CACHE`` when
set (then reused across sessions), else into a session temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch.nn.functional import gelu, layer_norm

from deftx.models.e5 import CACHE_ENV, ensure_e5_small
from deftx.models.e5 import SPECIAL_TOKENS as E5_SPECIAL_TOKENS

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]
WORDS = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "log", "fast", "slow", "red", "big", "small"]


def tiny_vocab(words=WORDS) -> list[str]:
    """Pieces in id order: ``<s> <pad> </s> <unk>``, the words, then ``<mask>`` (XLM-R style ids)."""
    return [*SPECIAL_TOKENS, *words, "<mask>"]


def tiny_backend(pieces: list[str]):
    """A ``tokenizers.Tokenizer``: whitespace word-level over ``pieces``, ``<s> $A </s>`` template."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in [*SPECIAL_TOKENS, "<mask>"]])
    return tokenizer


def tiny_tokenizer(words=WORDS):
    """A ``PreTrainedTokenizerFast`` with e5's special-token layout (pad 1, mask last)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tiny_backend(tiny_vocab(words)), **E5_SPECIAL_TOKENS)


def tiny_bert(vocab_size: int, *, seed: int = 0, hidden: int = 32, layers: int = 2, dtype=torch.float32):
    """A randomly initialised ``BertModel`` (no pooler), deterministic for ``seed``."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        pad_token_id=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    return BertModel(config, add_pooling_layer=False).to(dtype)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on the shared 2-core CPU, two spinning threads ran the tiny models
    ~20x and the real e5 ~2.4x slower (wall) than one; results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def e5_dir(tmp_path_factory) -> Path:
    """Folder of the converted real e5 (converted at most once per session)."""
    root = os.environ.get(CACHE_ENV) or tmp_path_factory.mktemp("deftx-cache")
    return ensure_e5_small(root)


EMBEDDING_ROWS = 24  # more rows than the tokenizer's 19 ids, like e5 (250037 vs 250002)


def reference_logits(model, input_ids, attention_mask) -> torch.Tensor:
    """(B, L, V) logits at every position, from the head's tensors with plain torch ops."""
    hidden = model.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
    head = model.head
    x = gelu(hidden @ head.dense.weight.float().T + head.dense.bias.float())
    x = layer_norm(x, (x.shape[-1],), head.layer_norm.weight.float(), head.layer_norm.bias.float(), head.layer_norm.eps)
    return x @ head.decoder_weight.float().T + head.bias.float()
