"""deftx.eval.language: held-out masked-LM scores of θ0 and θ0 + s·φ, against plain-torch references."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.functional import cross_entropy

from deftx.eval.language import (
    BASE,
    HELDOUT_FIELDS,
    HeldoutRow,
    MaskedLMScore,
    heldout_records,
    heldout_table,
    masked_lm_score,
    score_language_sfts,
)
from deftx.models.mlm import IGNORE_INDEX, build_mlm_model
from deftx.sft import SparseDiff
from deftx.train.masking import MLMCollator, mask_once
from tests.helpers import assert_bitwise_equal, assert_close, tolerance
from tests.models.conftest import EMBEDDING_ROWS, reference_logits, tiny_tokenizer

HIDDEN = 16


def dropout_bert(dropout: float = 0.3):
    """A tiny random BertModel whose dropout would change every score in training mode."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=EMBEDDING_ROWS, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * HIDDEN, max_position_embeddings=64, pad_token_id=1,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    return BertModel(config, add_pooling_layer=False)


@pytest.fixture
def model():
    return build_mlm_model(dropout_bert(), seed=5)


def ragged_batches(count: int = 7, batch_size: int = 3, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``count`` sequences of 1..19 tokens between [cls] and [sep], masked once at rate 0.5."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 20, (count,), generator=generator).tolist()
    rows = [[0, *torch.randint(4, 18, (n,), generator=generator).tolist(), 2] for n in lengths]
    return mask_once(MLMCollator(tiny_tokenizer(), mlm_probability=0.5, seed=seed), rows, batch_size)


def reference_score(model, batches) -> tuple[float, float, int]:
    """Mean cross-entropy, accuracy and count at the labelled positions, from logits at every position
    (plain torch over the head's tensors, on an eval-mode copy)."""
    frozen = copy.deepcopy(model).eval()
    total, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for batch in batches:
            logits = reference_logits(frozen, batch["input_ids"], batch["attention_mask"])
            selected = batch["labels"] != IGNORE_INDEX
            targets = batch["labels"][selected]
            total += float(cross_entropy(logits[selected].double(), targets, reduction="sum"))
            correct += int((logits[selected].argmax(-1) == targets).sum())
            count += int(selected.sum())
    return total / count, correct / count, count


def assert_score(actual: MaskedLMScore, expected: tuple[float, float, int]) -> None:
    loss, accuracy, count = expected
    tol = tolerance(torch.float32, HIDDEN + EMBEDDING_ROWS)  # a dot product, then a log-sum-exp
    assert actual.masked_tokens == count
    assert_close(torch.tensor(actual.loss), torch.tensor(loss), rtol=tol, atol=tol, what="loss")
    assert actual.accuracy == pytest.approx(accuracy)


def test_mask_once_masks_in_order_as_one_collator_would():
    batches = ragged_batches(count=7, batch_size=3)
    assert [b["input_ids"].shape[0] for b in batches] == [3, 3, 1]
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 20, (7,), generator=generator).tolist()
    rows = [[0, *torch.randint(4, 18, (n,), generator=generator).tolist(), 2] for n in lengths]
    collator = MLMCollator(tiny_tokenizer(), mlm_probability=0.5, seed=0)
    for start, batch in zip(range(0, 7, 3), batches, strict=True):
        expected = collator(rows[start : start + 3])
        for key in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(batch[key], expected[key]), key
    assert mask_once(collator, [], 4) == []
    with pytest.raises(ValueError, match="batch_size"):
        mask_once(collator, rows, 0)


@pytest.mark.parametrize(("count", "batch_size"), [(1, 1), (5, 2), (9, 4)])
def test_score_matches_cross_entropy_over_every_masked_position_with_dropout_off(model, count, batch_size):
    batches = ragged_batches(count, batch_size, seed=count)
    model.train()
    score = masked_lm_score(model, batches)
    assert model.training and model.body.training, "the training mode is restored"
    assert_score(score, reference_score(model, batches))
    assert masked_lm_score(model, batches) == score, "dropout off: the same score twice"


def test_nothing_masked_is_an_error(model):
    batch = {"input_ids": torch.tensor([[0, 5, 2]]), "attention_mask": torch.ones(1, 3, dtype=torch.int64),
             "labels": torch.full((1, 3), IGNORE_INDEX)}
    with pytest.raises(ValueError, match="no masked position"):
        masked_lm_score(model, [batch])


def noisy_sft(model, seed: int = 1) -> SparseDiff:
    """A sparse diff of a few entries in three of the body's tensors (no base-model id)."""
    generator = torch.Generator().manual_seed(seed)
    base = {name: p.detach().clone() for name, p in model.body.named_parameters()}
    names = ["embeddings.position_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
             "encoder.layer.1.output.dense.bias"]
    tuned, indices = dict(base), {}
    for name in names:
        flat = base[name].reshape(-1)
        indices[name] = torch.randperm(flat.numel(), generator=generator)[: max(1, flat.numel() // 7)].sort().values
        tuned[name] = base[name].clone()
        tuned[name].view(-1)[indices[name]] += torch.randn(indices[name].numel(), generator=generator)
    return SparseDiff.from_states(base, tuned, indices, method="lt-sft")


def with_sft_added(model, sft: SparseDiff, scale: float):
    """A copy of ``model`` whose body has ``scale`` × the diff added entry by entry (plain torch, fp32)."""
    added = copy.deepcopy(model)
    params = dict(added.body.named_parameters())
    with torch.no_grad():
        for name, idx in sft.indices.items():
            params[name].view(-1)[idx] += torch.tensor(scale, dtype=torch.float32) * sft.values[name]
    return added


def test_sft_rows_score_the_model_with_the_sft_added_and_leave_theta0_bit_exact(model):
    batches = ragged_batches(count=6, batch_size=4, seed=3)
    sfts = {"lt-sft": noisy_sft(model, 1), "deft-x": noisy_sft(model, 2)}
    before = {name: t.detach().clone() for name, t in model.state_dict().items()}
    rows = score_language_sfts(model, sfts, [1.0, 0.5], batches)
    assert [(r.method, r.scale) for r in rows] == [(BASE, 0.0), ("lt-sft", 1.0), ("lt-sft", 0.5),
                                                   ("deft-x", 1.0), ("deft-x", 0.5)]
    assert_score(rows[0].score, reference_score(model, batches))
    for row in rows[1:]:
        assert_score(row.score, reference_score(with_sft_added(model, sfts[row.method], row.scale), batches))
        assert row.score.loss != rows[0].score.loss, "the SFT changes the held-out loss"
    for name, tensor in model.state_dict().items():
        assert_bitwise_equal(tensor, before[name], what=name)


def test_scale_zero_scores_as_theta0(model):
    batches = ragged_batches(count=4, batch_size=4, seed=4)
    base, zero = score_language_sfts(model, {"lt-sft": noisy_sft(model)}, [0.0], batches)
    assert zero.score == base.score


def test_change_is_the_relative_fall_of_the_loss():
    base = MaskedLMScore(8.0, 0.05, 100)
    assert HeldoutRow("lt-sft", 1.0, MaskedLMScore(6.0, 0.1, 100)).change(base) == pytest.approx(0.25)
    assert HeldoutRow("lt-sft", 1.0, MaskedLMScore(8.4, 0.1, 100)).change(base) == pytest.approx(-0.05)
    assert HeldoutRow(BASE, 0.0, base).change(base) == 0.0


def test_records_carry_each_rows_change_from_theta0():
    base = MaskedLMScore(4.0, 0.1, 20)
    rows = [HeldoutRow(BASE, 0.0, base), HeldoutRow("lt-sft", 1.0, MaskedLMScore(3.0, 0.25, 20))]
    records = heldout_records(7, "madurese", rows)
    assert [tuple(r) for r in records] == [HELDOUT_FIELDS] * 2
    assert records[0] == {"seed": 7, "language": "madurese", "method": BASE, "scale": 0.0, "loss": 4.0,
                          "loss_change": 0.0, "accuracy": 0.1, "masked_tokens": 20}
    assert records[1]["loss_change"] == pytest.approx(0.25) and records[1]["accuracy"] == 0.25


def record(seed, language, method, scale, loss, accuracy, base_loss):
    """A heldout.csv line as read back: every value a string."""
    return {"seed": str(seed), "language": language, "method": method, "scale": str(scale), "loss": str(loss),
            "loss_change": str((base_loss - loss) / base_loss), "accuracy": str(accuracy), "masked_tokens": "50"}


def test_table_cells_average_a_lines_records_per_seed_then_over_seeds():
    """Two targets × two seeds in one line (a variant): per seed the mean over targets, then mean ± sd."""
    records = []
    losses = {(0, "a"): 3.0, (0, "b"): 2.0, (1, "a"): 2.0, (1, "b"): 1.0}
    for (seed, language), loss in losses.items():
        records += [record(seed, language, BASE, 0.0, 4.0, 0.10, 4.0),
                    record(seed, language, "lt-sft", 1.25, loss, 0.20 + 0.1 * seed, 4.0)]
    records.append(record(0, "a", "deft-x", 1.25, 3.5, 0.15, 4.0))
    for r in records:
        r["variant"] = "v"
    loss = heldout_table(records, "variant", "loss_change")
    assert loss[:2] == ["| variant | θ0 loss | lt-sft ×1.25 | deft-x ×1.25 | deft-x − lt-sft ×1.25 |",
                        "|---|---:|---:|---:|---:|"]
    per_seed = [(0.25 + 0.5) / 2, (0.5 + 0.75) / 2]
    mean = sum(per_seed) / 2
    sd = ((per_seed[0] - mean) ** 2 + (per_seed[1] - mean) ** 2) ** 0.5
    # the paired column pairs deft-x's one record (seed 0, a) with lt-sft's of the same seed and language
    assert loss[2] == (f"| v | 4.000 ± 0.000 (2) | {100 * mean:+.1f}% ± {100 * sd:.1f} (2) | +12.5% (1) | "
                       "-12.50 (1; 0 > 0) |")
    accuracy = heldout_table(records, "variant", "accuracy")
    assert accuracy[0] == "| variant | θ0 | lt-sft ×1.25 | deft-x ×1.25 | deft-x − lt-sft ×1.25 |"
    assert accuracy[2] == "| v | 10.0% ± 0.0 (2) | 25.0% ± 7.1 (2) | 15.0% (1) | -5.00 (1; 0 > 0) |"


def test_table_lines_in_first_seen_order_and_a_missing_cell_is_a_dash():
    records = [record(0, "b", BASE, 0.0, 4.0, 0.1, 4.0), record(0, "b", "lt-sft", 1.0, 3.0, 0.2, 4.0),
               record(0, "a", BASE, 0.0, 5.0, 0.1, 5.0)]
    table = heldout_table(records, "language", "loss_change")
    assert table[2:] == ["| b | 4.000 (1) | +25.0% (1) |", "| a | 5.000 (1) | — |"]
    with pytest.raises(ValueError, match="loss_change or accuracy"):
        heldout_table(records, "language", "loss")


def test_paired_columns_difference_each_seeds_shared_languages_then_average_over_seeds():
    """deft-x − lt-sft per seed over the languages both methods have, then mean ± sd over seeds, per scale."""
    base = 4.0
    losses = {  # (seed, language, method, scale) -> loss
        (0, "a", "lt-sft", 1.0): 3.0, (0, "a", "deft-x", 1.0): 2.8, (0, "b", "lt-sft", 1.0): 3.2,
        (0, "b", "deft-x", 1.0): 3.0, (1, "a", "lt-sft", 1.0): 3.1, (1, "a", "deft-x", 1.0): 3.2,
        (1, "b", "lt-sft", 1.0): 3.0,  # no deft-x of b in seed 1: b is left out of seed 1's difference
        (0, "a", "lt-sft", 2.0): 2.0, (0, "a", "deft-x", 2.0): 1.6}
    records = [record(seed, language, BASE, 0.0, base, 0.1, base) for seed in (0, 1) for language in "ab"]
    records += [record(seed, language, method, scale, loss, 0.1, base)
                for (seed, language, method, scale), loss in losses.items()]
    for r in records:
        r["variant"] = "v"
    table = heldout_table(records, "variant", "loss_change")
    assert table[0].endswith("| deft-x − lt-sft ×1 | deft-x − lt-sft ×2 |")
    per_seed = [((3.0 - 2.8) / base + (3.2 - 3.0) / base) / 2, (3.1 - 3.2) / base]
    mean = sum(per_seed) / 2
    sd = ((per_seed[0] - mean) ** 2 + (per_seed[1] - mean) ** 2) ** 0.5
    assert table[2].endswith(f"| {100 * mean:+.2f} ± {100 * sd:.2f} (2; 1 > 0) | +10.00 (1; 1 > 0) |")
    by_language = heldout_table(records, "language", "loss_change")
    a_by_seed = [(3.0 - 2.8) / base, (3.1 - 3.2) / base]  # +5 and -2.5 points: mean +1.25, sd 7.5 / sqrt(2)
    assert by_language[2].endswith(f"| +1.25 ± {100 * abs(a_by_seed[0] - a_by_seed[1]) / 2 ** 0.5:.2f} (2; 1 > 0) "
                                   "| +10.00 (1; 1 > 0) |")
    assert by_language[3].endswith("| +5.00 (1; 1 > 0) | — |")
    reverse = heldout_table(records, "variant", "loss_change", pairs=[("lt-sft", "deft-x")])
    assert reverse[2].endswith(f"| {-100 * mean:+.2f} ± {100 * sd:.2f} (2; 1 > 0) | -10.00 (1; 0 > 0) |")
    assert "−" not in heldout_table(records, "variant", "loss_change", pairs=())[0]
