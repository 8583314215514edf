"""deftx.models.mlm on tiny random BERTs: frozen decoder, sparse logits, loss, head state."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import cross_entropy
from transformers import BertForSequenceClassification

from deftx.models.mlm import HEAD_KEYS, IGNORE_INDEX, build_mlm_model, load_head, save_head
from tests.helpers import assert_bitwise_equal, assert_close, tolerance
from tests.models.conftest import EMBEDDING_ROWS, reference_logits, tiny_bert


def make_batch(seed: int = 0, batch: int = 3, length: int = 7, vocab: int = 19):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab - 1, (batch, length), generator=generator)
    attention = torch.ones_like(ids)
    attention[1, 5:] = 0  # a ragged row
    ids[1, 5:] = 1
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, [1, 4]] = ids[0, [1, 4]]
    labels[2, [0, 3, 6]] = ids[2, [0, 3, 6]]  # row 1 has no label at all
    return ids, attention, labels


@pytest.fixture
def model():
    return build_mlm_model(tiny_bert(EMBEDDING_ROWS), seed=3)


def test_decoder_is_a_frozen_copy_outside_every_parameter_list(model):
    theta0 = model.body.get_input_embeddings().weight.detach().clone()
    params = dict(model.named_parameters())
    assert not any("decoder" in name for name in params)
    assert all(p is not model.head.decoder_weight for p in model.parameters())
    assert "head.decoder_weight" not in model.state_dict()
    assert model.head.decoder_weight.data_ptr() != model.body.get_input_embeddings().weight.data_ptr()
    assert_bitwise_equal(model.head.decoder_weight, theta0, what="decoder at build")
    assert {n for n, _ in model.head.named_parameters()} == set(HEAD_KEYS)

    ids, attention, labels = make_batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(input_ids=ids, attention_mask=attention, labels=labels).loss.backward()
    optimizer.step()

    assert_bitwise_equal(model.head.decoder_weight, theta0, what="decoder after a step")
    embeddings = model.body.get_input_embeddings().weight
    assert not torch.equal(embeddings, theta0), "the body's embeddings should have trained"
    for name in ("head.dense.weight", "head.bias", "body.encoder.layer.0.attention.self.query.weight"):
        assert not torch.equal(params[name], before[name]), f"{name} did not change"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_only_at_labelled_positions_and_loss_matches_full_cross_entropy(dtype):
    model = build_mlm_model(tiny_bert(EMBEDDING_ROWS, dtype=dtype), seed=1)
    with torch.no_grad():
        model.head.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    ids, attention, labels = make_batch(seed=2)
    out = model(input_ids=ids, attention_mask=attention, labels=labels)
    selected = labels != IGNORE_INDEX
    assert out.logits.shape == (int(selected.sum()), EMBEDDING_ROWS)

    full = reference_logits(model, ids, attention)
    expected_loss = cross_entropy(full.reshape(-1, EMBEDDING_ROWS), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    hidden = model.body.config.hidden_size
    rtol = tolerance(dtype, hidden) if dtype == torch.float32 else 2e-2
    assert_close(out.logits.float(), full[selected], rtol=rtol, atol=rtol, what="logits at labelled positions")
    assert_close(out.loss.float(), expected_loss, rtol=rtol, atol=rtol, what="loss")


def test_a_trainers_item_count_turns_the_mean_into_a_sum_over_that_count(model):
    """``num_items_in_batch`` (the labelled positions of a whole accumulated step) divides the
    summed cross-entropy."""
    ids, attention, labels = make_batch(seed=4)
    full = reference_logits(model, ids, attention)
    summed = cross_entropy(full.reshape(-1, EMBEDDING_ROWS), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")
    for count in (11, torch.tensor(11)):
        out = model(input_ids=ids, attention_mask=attention, labels=labels, num_items_in_batch=count)
        assert_close(out.loss.detach(), summed / 11, rtol=1e-5, atol=1e-6, what=f"loss over {count!r} items")
    assert model.accepts_loss_kwargs


def test_without_labels_logits_cover_every_position(model):
    ids, attention, _ = make_batch()
    out = model(input_ids=ids, attention_mask=attention)
    assert out.loss is None
    assert_close(out.logits, reference_logits(model, ids, attention), rtol=1e-5, atol=1e-5, what="all logits")


def test_no_labelled_position_gives_zero_differentiable_loss(model):
    ids, attention, labels = make_batch()
    labels.fill_(IGNORE_INDEX)
    out = model(input_ids=ids, attention_mask=attention, labels=labels)
    assert out.logits.shape == (0, EMBEDDING_ROWS)
    assert float(out.loss.detach()) == 0.0
    out.loss.backward()
    assert float(model.head.bias.grad.abs().sum()) == 0.0


def test_bad_labels(model):
    ids, attention, labels = make_batch()
    labels[0, 0] = EMBEDDING_ROWS
    with pytest.raises(ValueError, match=r"-100 or in \[0, 24\); found 24"):
        model(input_ids=ids, attention_mask=attention, labels=labels)
    with pytest.raises(ValueError, match="labels shape"):
        model(input_ids=ids, attention_mask=attention, labels=labels[:, :3])
    with pytest.raises(TypeError, match="int64 or int32"):
        model(input_ids=ids, attention_mask=attention, labels=labels.float())


def test_head_state_round_trip(model, tmp_path):
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.1)
    state = model.head_state_dict()
    assert set(state) == set(HEAD_KEYS)
    ids, attention, _ = make_batch()
    expected = model(input_ids=ids, attention_mask=attention).logits

    other = build_mlm_model(model.body, head_state=state)
    assert_bitwise_equal(other(input_ids=ids, attention_mask=attention).logits, expected, what="from state")

    save_head(model, tmp_path / "head.safetensors", {"note": "x"})
    fresh = build_mlm_model(model.body, seed=9)
    assert load_head(fresh, tmp_path / "head.safetensors") == {"note": "x"}
    assert_bitwise_equal(fresh(input_ids=ids, attention_mask=attention).logits, expected, what="from file")
    from_path = build_mlm_model(model.body, head_state=tmp_path / "head.safetensors")
    assert_bitwise_equal(from_path.head.bias, model.head.bias, what="bias from path")

    with pytest.raises(ValueError, match="exactly the keys"):
        model.load_head_state_dict({k: v for k, v in state.items() if k != "bias"})
    with pytest.raises(ValueError, match="bias: shape"):
        model.load_head_state_dict({**state, "bias": torch.zeros(3)})


def test_fresh_heads_are_seeded(model):
    a = build_mlm_model(model.body, seed=5).head_state_dict()
    b = build_mlm_model(model.body, seed=5).head_state_dict()
    c = build_mlm_model(model.body, seed=6).head_state_dict()
    assert_bitwise_equal(a["dense.weight"], b["dense.weight"], what="same seed")
    assert not torch.equal(a["dense.weight"], c["dense.weight"])


def test_build_from_folder_and_from_a_task_model(tmp_path):
    body = tiny_bert(EMBEDDING_ROWS)
    body.save_pretrained(tmp_path / "body")
    from_dir = build_mlm_model(tmp_path / "body")
    assert not any(n.startswith("pooler") for n, _ in from_dir.body.named_parameters())
    assert_bitwise_equal(from_dir.head.decoder_weight, body.get_input_embeddings().weight, what="decoder")

    task = BertForSequenceClassification(body.config)
    shared = build_mlm_model(task)
    assert shared.body is task.bert


def test_a_body_without_segment_ids_runs_and_its_logits_are_the_heads():
    """DistilBERT's forward takes no ``token_type_ids``: the model passes them only when given."""
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    body = DistilBertModel(DistilBertConfig(vocab_size=19, dim=16, n_layers=1, n_heads=2, hidden_dim=32,
                                            max_position_embeddings=16))
    model = build_mlm_model(body, seed=3).eval()
    ids, attention, labels = make_batch()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits
        labelled = model(input_ids=ids, attention_mask=attention, labels=labels)
        expected = reference_logits(model, ids, attention)
    rtol = tolerance(torch.float32, 16)
    assert_close(logits, expected, rtol=rtol, atol=rtol, what="logits at every position")
    selected = labels != IGNORE_INDEX
    assert_close(labelled.loss, cross_entropy(expected[selected], labels[selected]), rtol=rtol, atol=rtol, what="loss")
