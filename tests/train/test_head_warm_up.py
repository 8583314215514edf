"""deftx.train.masking and deftx.train.head_warm_up on tiny random BERTs: collator, windows, warm-up."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from torch.nn.functional import cross_entropy, gelu, layer_norm

from deftx.models.mlm import IGNORE_INDEX, build_mlm_model, load_head
from deftx.train.head_warm_up import (
    HELDOUT_SEED_OFFSET,
    head_and_token_settings,
    head_progress_line,
    masked_token_scores,
    split_heldout,
    warm_up_mlm_head,
    windowed_curve,
)
from deftx.train.language import mlm_examples
from deftx.train.masking import MLMCollator, chunk_token_ids
from tests.helpers import assert_bitwise_equal, assert_close, tolerance
from tests.models.conftest import EMBEDDING_ROWS, reference_logits, tiny_bert, tiny_tokenizer


@pytest.fixture
def model():
    return build_mlm_model(tiny_bert(EMBEDDING_ROWS), seed=3)


def collated_batches(monkeypatch) -> list[list[tuple[int, ...]]]:
    """Every batch the MLM collator is called with from now on, as tuples of token ids (filled as they come)."""
    calls: list[list[tuple[int, ...]]] = []
    collate = MLMCollator.__call__

    def spy(self, examples):
        calls.append([tuple(e) for e in examples])
        return collate(self, examples)

    monkeypatch.setattr(MLMCollator, "__call__", spy)
    return calls


def test_collator_never_samples_beyond_the_real_vocabulary():
    tokenizer = tiny_tokenizer()
    real = 12  # ids 12..18 exist in the tokenizer but are treated as not real here
    collator = MLMCollator(tokenizer, mlm_probability=1.0, real_vocab_size=real, seed=0)
    generator = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(20):
        lengths = torch.randint(1, 30, (8,), generator=generator).tolist()
        rows = [torch.randint(4, 18, (n,), generator=generator) for n in lengths]
        batch = collator(rows)
        ids, _ = collator.pad(rows)
        replaced = (batch["input_ids"] != ids) & (batch["input_ids"] != tokenizer.mask_token_id)
        seen |= set(batch["input_ids"][replaced].tolist())
    assert seen, "no random replacement drawn"
    assert max(seen) < real
    assert not seen & set(tokenizer.all_special_ids)
    assert seen == set(range(4, real)), "every real non-special id should be drawable"


def test_collator_masks_only_real_tokens_in_80_10_10_proportions():
    tokenizer = tiny_tokenizer()
    collator = MLMCollator(tokenizer, mlm_probability=1.0, seed=0)
    generator = torch.Generator().manual_seed(0)
    rows = [[0, *torch.randint(4, 18, (int(n),), generator=generator).tolist(), 2] for n in range(1, 129)]
    ids, attention = collator.pad(rows)
    batch = collator(rows)
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids)) | (attention == 0)
    assert torch.equal(batch["labels"][special], torch.full_like(ids[special], IGNORE_INDEX))
    assert torch.equal(batch["input_ids"][special], ids[special])
    assert torch.equal(batch["labels"][~special], ids[~special])  # probability 1: all real tokens
    assert torch.equal(batch["attention_mask"], attention)
    n = int((~special).sum())
    masked = float((batch["input_ids"][~special] == tokenizer.mask_token_id).sum()) / n
    kept = float((batch["input_ids"][~special] == ids[~special]).sum()) / n
    # kept = 10% kept + 10% random that drew the same id (1 in 14 candidates)
    assert abs(masked - 0.8) < 0.03, masked
    assert abs(kept - (0.1 + 0.1 / 14)) < 0.03, kept


def test_collator_selection_rate():
    tokenizer = tiny_tokenizer()
    collator = MLMCollator(tokenizer, mlm_probability=0.15, seed=4)
    rows = [[0, *([5] * 100), 2] for _ in range(64)]
    rate = float((collator(rows)["labels"] != IGNORE_INDEX).float().sum()) / (64 * 100)
    assert abs(rate - 0.15) < 0.015, rate


def test_collator_is_deterministic_for_a_seed():
    tokenizer = tiny_tokenizer()
    rows = [{"input_ids": [0, 4, 5, 6, 7, 2]}, {"input_ids": [0, 8, 9, 2]}]
    a, b, c = (MLMCollator(tokenizer, 0.5, seed=s) for s in (7, 7, 8))
    first_a, second_a = a(rows), a(rows)
    first_b, second_b = b(rows), b(rows)
    for key in first_a:
        assert torch.equal(first_a[key], first_b[key]) and torch.equal(second_a[key], second_b[key])
    outputs_c = [c(rows) for _ in range(4)]
    assert any(not torch.equal(o["labels"], first_a["labels"]) for o in outputs_c)


def test_collator_bad_arguments():
    tokenizer = tiny_tokenizer()
    with pytest.raises(ValueError, match=r"real_vocab_size must be in \[1, 19\]"):
        MLMCollator(tokenizer, real_vocab_size=20)
    with pytest.raises(ValueError, match="mlm_probability"):
        MLMCollator(tokenizer, mlm_probability=0.0)
    with pytest.raises(ValueError, match="no non-special id"):
        MLMCollator(tokenizer, real_vocab_size=4)
    collator = MLMCollator(tokenizer)
    with pytest.raises(ValueError, match="empty batch"):
        collator([])
    with pytest.raises(ValueError, match="1-D"):
        collator([[[4, 5]]])
    with pytest.raises(ValueError, match="non-negative"):
        collator([[4, -1]])


def test_chunk_token_ids_splits_without_truncating():
    tokenizer = tiny_tokenizer()
    text = " ".join(["the cat sat on a mat"] * 3)  # 18 tokens
    chunks = chunk_token_ids(tokenizer, [text, "", "dog"], seq_len=7)
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [len(c) for c in chunks] == [7, 7, 7, 5, 3]  # 18 tokens = 5 + 5 + 5 + 3
    assert all(c[0] == tokenizer.cls_token_id and c[-1] == tokenizer.sep_token_id for c in chunks)
    assert [t for c in chunks[:4] for t in c[1:-1]] == full
    with pytest.raises(ValueError, match="seq_len must be >= 3"):
        chunk_token_ids(tokenizer, [text], seq_len=2)



def test_chunk_token_ids_does_not_warn_of_a_length_it_windows(caplog):
    """A text beyond model_max_length is windowed, so the tokenizer's warning that the model would fail on it
    (logged once per tokenizer, which the control call shows) would mislead."""
    text = " ".join(["the cat sat on a mat"] * 3)  # 18 tokens
    control = tiny_tokenizer()
    control.model_max_length = 8
    with caplog.at_level(logging.WARNING):
        control(text, add_special_tokens=False)
    assert "longer than the specified maximum sequence length" in caplog.text
    caplog.clear()
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = 8
    with caplog.at_level(logging.WARNING):
        assert len(chunk_token_ids(tokenizer, [text], seq_len=7)) == 4
    assert "longer than the specified maximum" not in caplog.text

def _warm_up_texts() -> list[str]:
    generator = torch.Generator().manual_seed(0)
    patterns = ["the cat sat on a mat", "a dog ran on the log", "the big red dog ran fast", "a small cat sat slow"]
    return [patterns[int(i)] for i in torch.randint(0, len(patterns), (40,), generator=generator)]


def _distinct_texts(count: int = 40) -> list[str]:
    """``count`` different six-word sentences of the tiny vocabulary: held-out windows with no copy to train on."""
    from tests.models.conftest import WORDS

    generator = torch.Generator().manual_seed(0)
    texts: dict[str, None] = {}
    while len(texts) < count:
        texts[" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (6,), generator=generator))] = None
    return list(texts)


def test_warm_up_trains_only_the_head_and_caches_it(tmp_path):
    tokenizer = tiny_tokenizer()
    body = tiny_bert(EMBEDDING_ROWS, seed=2)
    body.train()
    body_before = {k: v.clone() for k, v in body.state_dict().items()}
    model = build_mlm_model(body, seed=0)
    head_before = model.head_state_dict()
    settings = dict(steps=60, batch_size=8, lr=2e-2, seq_len=16, seed=0, cache_path=tmp_path)

    metrics = warm_up_mlm_head(model, tokenizer, _warm_up_texts(), **settings)

    for key, value in body.state_dict().items():
        assert_bitwise_equal(value, body_before[key], what=f"body {key}")
    assert body.training, "the body's training mode must be restored"
    trained = model.head_state_dict()
    assert all(not torch.equal(trained[k], head_before[k]) for k in ("dense.weight", "bias", "layer_norm.weight"))
    assert len(metrics["loss"]) == len(metrics["accuracy"]) == len(metrics["masked_tokens"]) == 60
    assert metrics["final_loss"] < metrics["initial_loss"] - 0.4, (metrics["initial_loss"], metrics["final_loss"])
    assert metrics["final_accuracy"] > metrics["initial_accuracy"] + 0.15
    assert not metrics["cache_hit"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".lock-")) == [
        f"mlm-head-{metrics['key'][:24]}.safetensors"]

    again = build_mlm_model(body, seed=0)
    cached = warm_up_mlm_head(again, tokenizer, _warm_up_texts(), **settings)
    assert cached["cache_hit"] and cached["key"] == metrics["key"]
    assert cached["final_loss"] == metrics["final_loss"]
    for key, value in again.head_state_dict().items():
        assert_bitwise_equal(value, trained[key], what=f"cached head {key}")


def test_a_cached_head_gives_its_training_curve_at_this_calls_eval_every(tmp_path):
    """Without held-out text eval_every is no part of the key: a cache hit windows the recorded per-step
    losses as asked, not as the run that trained the head did."""
    tokenizer = tiny_tokenizer()
    body = tiny_bert(EMBEDDING_ROWS, seed=2)
    settings = dict(steps=6, batch_size=4, lr=1e-2, seq_len=16, seed=0, cache_path=tmp_path, log=lambda line: None)
    trained = warm_up_mlm_head(build_mlm_model(body, seed=0), tokenizer, _warm_up_texts(), eval_every=3, **settings)
    cached = warm_up_mlm_head(build_mlm_model(body, seed=0), tokenizer, _warm_up_texts(), eval_every=2, **settings)
    assert cached["cache_hit"] and cached["loss"] == trained["loss"]
    losses = trained["loss"]
    assert [point["step"] for point in cached["train_curve"]] == [2, 4, 6]
    assert [point["loss"] for point in cached["train_curve"]] == pytest.approx(
        [(losses[0] + losses[1]) / 2, (losses[2] + losses[3]) / 2, (losses[4] + losses[5]) / 2])


def test_two_warm_ups_of_one_key_at_once_train_it_once(tmp_path, monkeypatch):
    """Seeds run in parallel share the head's cache: the second waits for the first's head (saying so)
    instead of spending the warm-up a second time."""
    import threading
    import time

    from deftx.train import head_warm_up

    train = head_warm_up._train_head

    def slow_train(*args, **kwargs):
        time.sleep(1.0)  # the first is still training when the second looks for its head
        return train(*args, **kwargs)

    monkeypatch.setattr(head_warm_up, "_train_head", slow_train)
    tokenizer, body = tiny_tokenizer(), tiny_bert(EMBEDDING_ROWS, seed=2)
    results: dict[str, dict] = {}
    lines: list[str] = []

    def warm(name: str) -> None:
        results[name] = warm_up_mlm_head(build_mlm_model(body, seed=0), tokenizer, _warm_up_texts(), steps=10,
                                         batch_size=8, seq_len=16, cache_path=tmp_path, log=lines.append)

    first = threading.Thread(target=warm, args=("first",))
    first.start()
    time.sleep(0.5)
    warm("second")
    first.join()
    assert (results["first"]["cache_hit"], results["second"]["cache_hit"]) == (False, True)
    assert results["second"]["final_loss"] == results["first"]["final_loss"]
    assert any("another process is warming it up" in line for line in lines), lines


def test_a_shipped_head_of_the_same_key_is_used_and_one_of_another_key_is_not(tmp_path):
    """A head shipped with deftx spares the warm-up only when its key (its file name) matches."""
    tokenizer = tiny_tokenizer()
    body = tiny_bert(EMBEDDING_ROWS, seed=2)
    settings = dict(steps=5, batch_size=8, lr=2e-2, seq_len=16, seed=0)
    shipped = tmp_path / "shipped"
    trained = warm_up_mlm_head(build_mlm_model(body, seed=0), tokenizer, _warm_up_texts(), cache_path=shipped,
                               **settings)
    lines: list[str] = []
    model = build_mlm_model(body, seed=0)
    found = warm_up_mlm_head(model, tokenizer, _warm_up_texts(), cache_path=tmp_path / "cache", log=lines.append,
                             shipped_path=shipped, **settings)
    assert found["cache_hit"] and found["key"] == trained["key"] and found["loss"] == trained["loss"]
    assert (tmp_path / "cache" / Path(trained["cache_file"]).name).read_bytes() == Path(
        trained["cache_file"]).read_bytes()
    assert lines == [f"MLM head {Path(trained['cache_file']).name}: the one shipped in {shipped} (same key), "
                     "copied into the cache"]
    other = warm_up_mlm_head(build_mlm_model(body, seed=0), tokenizer, _warm_up_texts(), cache_path=tmp_path / "c2",
                             shipped_path=shipped, **{**settings, "lr": 1e-2})
    assert not other["cache_hit"] and other["key"] != trained["key"]


def test_warm_up_cache_key_covers_settings_texts_and_body(tmp_path):
    tokenizer = tiny_tokenizer()
    body = tiny_bert(EMBEDDING_ROWS, seed=2)
    settings = dict(steps=2, batch_size=4, lr=1e-2, seq_len=16, seed=0, cache_path=tmp_path)

    def run(texts=None, **changes):
        model = build_mlm_model(body, seed=0)
        return warm_up_mlm_head(model, tokenizer, texts or _warm_up_texts(), **{**settings, **changes})["key"]

    keys = [run(), run(lr=1e-3), run(seed=1), run(seq_len=8), run(texts=["the cat sat"] * 5)]
    with torch.no_grad():
        body.encoder.layer[0].output.dense.weight[0, 0] += 1.0  # a one-entry "sparse diff" on the body
    keys.append(run())
    assert len(set(keys)) == len(keys)
    assert len(list(tmp_path.glob("mlm-head-*"))) == len(keys)


def test_a_body_of_equal_tensors_and_another_attention_head_count_is_keyed_apart(tmp_path):
    """A body saved again with another ``num_attention_heads`` (every tensor the same, each head narrower) computes
    other features: the head warmed on the first is not the second's. e5's counts for its widths (small and
    base 12, large 16), and heads of 64 dimensions elsewhere, enter no key: the keys of e5's heads (the shipped
    one) stay as they were."""
    from transformers import BertConfig, BertModel

    tokenizer = tiny_tokenizer()
    two = tiny_bert(EMBEDDING_ROWS, seed=2)
    four = BertModel(BertConfig(**{**two.config.to_dict(), "num_attention_heads": 4}), add_pooling_layer=False)
    four.load_state_dict(two.state_dict())
    ids = torch.tensor([[0, 5, 6, 7, 8, 2]])
    with torch.no_grad():
        assert not torch.allclose(two(ids).last_hidden_state, four(ids).last_hidden_state), "other features"
    settings = dict(steps=2, batch_size=4, lr=1e-2, seq_len=16, seed=0, cache_path=tmp_path)
    first = warm_up_mlm_head(build_mlm_model(two, seed=0), tokenizer, _warm_up_texts(), **settings)
    second = warm_up_mlm_head(build_mlm_model(four, seed=0), tokenizer, _warm_up_texts(), **settings)
    assert not second["cache_hit"] and second["key"] != first["key"]
    for hidden, heads in ((384, 12), (768, 12), (1024, 16), (512, 8)):
        body = BertModel(BertConfig(vocab_size=EMBEDDING_ROWS, hidden_size=hidden, num_attention_heads=heads,
                                    num_hidden_layers=1, intermediate_size=4, max_position_embeddings=8),
                         add_pooling_layer=False)
        keyed = head_and_token_settings(build_mlm_model(body), MLMCollator(tokenizer))
        assert "num_attention_heads" not in keyed, (hidden, heads)


def test_warm_up_bad_arguments(model):
    tokenizer = tiny_tokenizer()
    with pytest.raises(ValueError, match="steps >= 1"):
        warm_up_mlm_head(model, tokenizer, ["the cat"], steps=0)
    with pytest.raises(ValueError, match="no text"):
        warm_up_mlm_head(model, tokenizer, ["", "  "], steps=1)


def test_no_texts_or_a_group_given_as_one_string_is_a_clear_error(model):
    """No texts at all are "no text" (not the tokenizer's IndexError); a group that is one string would
    be read character by character (20 one-letter texts)."""
    tokenizer = tiny_tokenizer()
    assert chunk_token_ids(tokenizer, [], seq_len=8) == []
    with pytest.raises(ValueError, match="no text to warm the head up on"):
        warm_up_mlm_head(model, tokenizer, {"a": []}, steps=1)
    with pytest.raises(ValueError, match="no text to train a language SFT on"):
        mlm_examples(tokenizer, [], 8)
    with pytest.raises(TypeError, match="group 'b' is one string"):
        warm_up_mlm_head(model, tokenizer, {"a": ["the cat sat"], "b": "the cat sat on a mat"}, steps=1, seq_len=8)


def test_split_heldout_is_seeded_disjoint_and_per_group():
    train, held = split_heldout({"a": 7, "b": 4}, 2, seed=0)
    assert [len(group) for group in held] == [2, 2]
    assert all(0 <= i < 7 for i in held[0]) and all(7 <= i < 11 for i in held[1])
    assert sorted(train + held[0] + held[1]) == list(range(11)) and train == sorted(train)
    assert split_heldout({"a": 7, "b": 4}, 2, seed=0) == (train, held)
    assert any(split_heldout({"a": 7, "b": 4}, 2, seed=s)[1] != held for s in range(1, 6))
    assert split_heldout({"a": 7, "b": 4}, 0, seed=0) == (list(range(11)), [[], []])
    with pytest.raises(ValueError, match="'b' has 2 token windows"):
        split_heldout({"a": 7, "b": 2}, 2, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        split_heldout({"a": 7}, -1, seed=0)


def test_windowed_curve_means_each_window_and_skips_nan():
    losses = [float(i) for i in range(1, 11)]
    accuracies = [0.1 * i for i in range(10)]
    accuracies[8] = float("nan")  # a step without masked tokens
    curve = windowed_curve(losses, accuracies, 4)
    assert [point["step"] for point in curve] == [4, 8, 10]
    assert [point["loss"] for point in curve] == pytest.approx([2.5, 6.5, 9.5])
    assert [point["accuracy"] for point in curve] == pytest.approx([0.15, 0.55, 0.9])
    assert windowed_curve([], [], 3) == []
    with pytest.raises(ValueError, match="every"):
        windowed_curve(losses, accuracies, 0)


@pytest.mark.parametrize("count", [0, 1, 7, 20])
def test_masked_token_scores_match_full_cross_entropy(model, count):
    generator = torch.Generator().manual_seed(count)
    hidden = torch.randn(count, model.head.dense.in_features, generator=generator)
    labels = torch.randint(0, EMBEDDING_ROWS, (count,), generator=generator)
    scores = masked_token_scores(model.head, hidden, labels, chunk=3)
    assert scores["masked_tokens"] == count
    if count == 0:
        assert math.isnan(scores["loss"]) and math.isnan(scores["accuracy"])
        return
    head = model.head
    x = gelu(hidden @ head.dense.weight.T + head.dense.bias)
    x = layer_norm(x, (x.shape[-1],), head.layer_norm.weight, head.layer_norm.bias, head.layer_norm.eps)
    reference = (x @ head.decoder_weight.T + head.bias).detach()
    tol = tolerance(torch.float32, hidden.shape[-1] + EMBEDDING_ROWS)  # a dot product, then a log-sum-exp
    assert_close(torch.tensor(scores["loss"]), cross_entropy(reference, labels), rtol=tol, atol=tol, what="loss")
    assert scores["accuracy"] == pytest.approx(float((reference.argmax(-1) == labels).double().mean()))


def _reference_heldout(model, tokenizer, groups, eval_sequences, seq_len, batch_size, probability, seed):
    """(loss, accuracy, masked tokens) per group, from reference_logits on the held-out windows."""
    chunked = {name: chunk_token_ids(tokenizer, texts, seq_len) for name, texts in groups.items()}
    flat = [ids for windows in chunked.values() for ids in windows]
    _, held = split_heldout({name: len(w) for name, w in chunked.items()}, eval_sequences, seed)
    collator = MLMCollator(tokenizer, probability, len(tokenizer), seed=seed + HELDOUT_SEED_OFFSET)
    scores = {}
    for name, indices in zip(chunked, held, strict=True):
        logits, labels = [], []
        for start in range(0, len(indices), batch_size):
            batch = collator([flat[i] for i in indices[start : start + batch_size]])
            with torch.no_grad():
                full = reference_logits(model, batch["input_ids"], batch["attention_mask"])
            selected = batch["labels"] != IGNORE_INDEX
            logits.append(full[selected])
            labels.append(batch["labels"][selected])
        logits, labels = torch.cat(logits), torch.cat(labels)
        scores[name] = (float(cross_entropy(logits, labels)), float((logits.argmax(-1) == labels).double().mean()),
                        int(labels.numel()))
    return scores


def test_warm_up_heldout_curve_scores_untrained_windows(tmp_path):
    tokenizer = tiny_tokenizer()
    body = tiny_bert(EMBEDDING_ROWS, seed=2)
    texts = _distinct_texts()
    groups = {"first": texts[:20], "second": texts[20:]}
    settings = dict(steps=30, batch_size=8, lr=2e-2, seq_len=16, seed=0, mlm_probability=0.5,
                    eval_every=10, eval_sequences=4, cache_path=tmp_path)
    initial = build_mlm_model(body, seed=0)
    model = build_mlm_model(body, seed=0)
    lines: list[str] = []
    metrics = warm_up_mlm_head(model, tokenizer, groups, **settings, log=lines.append)

    curve = metrics["heldout_curve"]
    assert [point["step"] for point in curve] == [0, 10, 20, 30]
    assert [line.split(" (")[0] for line in lines] == [f"MLM head step {s}/30" for s in (10, 20, 30)]
    assert lines[-1].endswith(f"held out first {curve[-1]['groups']['first']['accuracy']:.3f}, "
                              f"second {curve[-1]['groups']['second']['accuracy']:.3f}")
    assert metrics["groups"] == {name: {"train_sequences": 16, "heldout_sequences": 4} for name in groups}
    assert [point["step"] for point in metrics["train_curve"]] == [10, 20, 30]
    assert metrics["heldout_seconds"] <= metrics["seconds"]
    tol = tolerance(torch.float32, 32 + EMBEDDING_ROWS)
    for point, reference_model in ((curve[0], initial), (curve[-1], model)):
        expected = _reference_heldout(reference_model, tokenizer, groups, 4, 16, 8, 0.5, 0)
        for name, (loss, accuracy, count) in expected.items():
            got = point["groups"][name]
            assert count > 0 and got["masked_tokens"] == count
            assert_close(torch.tensor(got["loss"]), torch.tensor(loss), rtol=tol, atol=tol, what=f"{name} loss")
            assert got["accuracy"] == pytest.approx(accuracy)
    assert all(curve[-1]["groups"][n]["loss"] < curve[0]["groups"][n]["loss"] for n in groups)

    cached = warm_up_mlm_head(build_mlm_model(body, seed=0), tokenizer, groups, **settings)
    assert cached["cache_hit"] and cached["heldout_curve"] == curve and cached["key"] == metrics["key"]


def test_head_progress_line_hand_computed():
    line = head_progress_line(250, 3000, 180.0, [0.05, float("nan"), 0.07], {"nusax": {"accuracy": 0.0584}})
    assert line == ("MLM head step 250/3000 (3.0 min, ~33 min left): masked-token accuracy 0.060, "
                    "held out nusax 0.058")
    assert head_progress_line(10, 10, 6.0, [0.5], {}) == (
        "MLM head step 10/10 (0.1 min, ~0 min left): masked-token accuracy 0.500")


def test_warm_up_key_covers_heldout_settings_but_not_groups_without_them(tmp_path):
    tokenizer = tiny_tokenizer()
    body = tiny_bert(EMBEDDING_ROWS, seed=2)
    texts = _distinct_texts()
    settings = dict(steps=2, batch_size=4, lr=1e-2, seq_len=16, seed=0, cache_path=tmp_path)

    def run(source, **changes):
        return warm_up_mlm_head(build_mlm_model(body, seed=0), tokenizer, source, **{**settings, **changes})

    plain = run(texts)
    grouped = run({"a": texts[:25], "b": texts[25:]})
    assert grouped["key"] == plain["key"] and grouped["cache_hit"], "groups alone do not change the head"
    assert plain["heldout_curve"] == [] and len(plain["train_curve"]) == 1
    stored = load_head(build_mlm_model(body, seed=0), plain["cache_file"])
    assert set(stored["settings"]) == {"steps", "batch_size", "lr", "seq_len", "seed", "mlm_probability",
                                       "real_vocab_size", "mask_token_id", "special_ids", "num_attention_heads"}, \
        ("without held-out text the key is the one kept before (plus the tiny tokenizer's mask id, not e5's, and the "
         "tiny body's 2 attention heads of 16 dimensions)")
    keys = {plain["key"], run({"a": texts[:25], "b": texts[25:]}, eval_sequences=2)["key"],
            run({"a": texts[:25], "b": texts[25:]}, eval_sequences=3)["key"],
            run({"a": texts[:25], "b": texts[25:]}, eval_sequences=2, eval_every=1)["key"],
            run({"a": texts[:20], "b": texts[20:]}, eval_sequences=2)["key"]}
    assert len(keys) == 5
    with pytest.raises(ValueError, match="eval_every"):
        run(texts, eval_every=0)
    with pytest.raises(TypeError, match="not one string"):
        run("the cat sat")


def test_heldout_windows_are_never_trained_on(monkeypatch):
    from tests.models.conftest import WORDS

    generator = torch.Generator().manual_seed(5)
    sentences = list(dict.fromkeys(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (5,),
                                                                                    generator=generator))
                                   for _ in range(40)))
    tokenizer = tiny_tokenizer()
    calls = collated_batches(monkeypatch)
    model = build_mlm_model(tiny_bert(EMBEDDING_ROWS, seed=2), seed=0)
    warm_up_mlm_head(model, tokenizer, {"all": sentences}, steps=30, batch_size=8, seq_len=16, eval_sequences=6)

    windows = [tuple(w) for w in chunk_token_ids(tokenizer, sentences, 16)]
    _, (held,) = split_heldout({"all": len(windows)}, 6, seed=0)
    heldout = {windows[i] for i in held}
    scored = [call for call in calls if set(call) <= heldout]
    trained = [call for call in calls if call not in scored]
    assert sorted(w for call in scored for w in call) == sorted(heldout), "each held-out window scored once"
    assert len(trained) == 30 and not any(set(call) & heldout for call in trained)
    assert {w for call in trained for w in call} == set(windows) - heldout


def test_no_copy_of_a_heldout_window_is_trained_on(monkeypatch):
    """A corpus that repeats sentences (AmericasNLP 2021 repeats 14% of its lines): a held-out window's
    copy under another index is left out of training too, and the counts say how many windows trained."""
    from tests.models.conftest import WORDS

    generator = torch.Generator().manual_seed(5)
    unique = list(dict.fromkeys(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (5,),
                                                                                 generator=generator))
                                for _ in range(30)))
    sentences = unique + unique[:10]
    tokenizer = tiny_tokenizer()
    calls = collated_batches(monkeypatch)
    model = build_mlm_model(tiny_bert(EMBEDDING_ROWS, seed=2), seed=0)
    metrics = warm_up_mlm_head(model, tokenizer, {"all": sentences}, steps=40, batch_size=8, seq_len=16,
                               eval_sequences=8)

    windows = [(0, *tokenizer(s, add_special_tokens=False)["input_ids"], 2) for s in sentences]
    _, (held,) = split_heldout({"all": len(windows)}, 8, seed=0)
    heldout = {windows[i] for i in held}
    expected_training = [w for w in windows if w not in heldout]
    assert len(expected_training) < len(windows) - 8, "the seed must hold out a repeated sentence"
    scored, trained = calls[0], calls[1:]
    assert sorted(scored) == sorted(windows[i] for i in held)
    assert len(trained) == 40 and not {w for call in trained for w in call} & heldout
    assert {w for call in trained for w in call} == set(expected_training)
    assert metrics["groups"] == {"all": {"train_sequences": len(expected_training), "heldout_sequences": 8}}


def test_warm_up_key_covers_the_heads_activation_eps_and_the_masking_token_ids(tmp_path):
    """Equal body weights under another ``layer_norm_eps`` / ``hidden_act`` train another head (and body function),
    and a tokenizer with another mask or special ids masks other positions: none may share a cached head."""
    from transformers import PreTrainedTokenizerFast

    from tests.models.conftest import tiny_backend, tiny_vocab

    body = tiny_bert(EMBEDDING_ROWS, seed=2)
    texts = _warm_up_texts()

    def key(tokenizer, **config):
        for name, value in config.items():
            setattr(body.config, name, value)
        model = build_mlm_model(body, seed=0)
        return warm_up_mlm_head(model, tokenizer, texts, steps=2, batch_size=4, seq_len=16,
                                cache_path=tmp_path, cached_only=True)["key"]

    tokenizer = tiny_tokenizer()
    other_specials = PreTrainedTokenizerFast(  # <unk> no longer special: it may be masked and drawn
        tokenizer_object=tiny_backend(tiny_vocab()), bos_token="<s>", eos_token="</s>", cls_token="<s>",
        sep_token="</s>", pad_token="<pad>", mask_token="<mask>")
    assert tokenizer(texts)["input_ids"] == other_specials(texts)["input_ids"]
    keys = [key(tokenizer, layer_norm_eps=1e-12, hidden_act="gelu"), key(tokenizer, layer_norm_eps=1e-5),
            key(tokenizer, layer_norm_eps=1e-12, hidden_act="relu"), key(other_specials, hidden_act="gelu")]
    assert len(set(keys)) == len(keys)
