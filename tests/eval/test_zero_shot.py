"""Scoring composed models: diffs change the predictions, revert restores the base exactly."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, PreTrainedTokenizerFast

from deftx.eval.metrics import accuracy, macro_f1
from deftx.eval.predict import predict_labels
from deftx.eval.zero_shot import Composition, EvalRow, RowContext, score_composed, score_compositions
from deftx.models.classifier import BertMeanPoolClassifier
from deftx.sft import SparseDiff
from deftx.train.task import classification_examples
from tests.helpers import assert_bitwise_equal


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{f"w{i}": 4 + i for i in range(20)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]")


def tiny_classifier(seed=0) -> BertMeanPoolClassifier:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=24, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=12, num_labels=3)
    return BertMeanPoolClassifier(config).eval()


def examples(tokenizer, n=13):
    generator = torch.Generator().manual_seed(3)
    texts = [" ".join(f"w{int(i)}" for i in torch.randint(0, 20, (int(l),), generator=generator))
             for l in torch.randint(1, 9, (n,), generator=generator)]
    labels = torch.randint(0, 3, (n,), generator=generator).tolist()
    return classification_examples(tokenizer, texts, labels, max_length=16)


def random_diff(model, seed, dense=()) -> SparseDiff:
    generator = torch.Generator().manual_seed(seed)
    state = {n: p.detach() for n, p in model.named_parameters()}
    tuned = {n: t + torch.randn(t.shape, generator=generator) for n, t in state.items()}
    indices = {n: torch.randperm(t.numel(), generator=generator)[: max(1, t.numel() // 3)].sort().values
               for n, t in state.items() if n.startswith("bert.")}
    return SparseDiff.from_states(state, tuned, indices, dense)


def test_mean_pool_classifier_ignores_padding():
    model = tiny_classifier()
    ids = torch.tensor([[2, 5, 6, 3]])
    padded = torch.tensor([[2, 5, 6, 3, 0, 0]])
    a = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    b = model(input_ids=padded, attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]])).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_predict_labels_matches_one_by_one():
    tokenizer, model = word_tokenizer(), tiny_classifier()
    rows = examples(tokenizer)
    batched = predict_labels(model, tokenizer, rows, batch_size=4)
    with torch.no_grad():
        single = [int(model(input_ids=torch.tensor([r["input_ids"]])).logits.argmax()) for r in rows]
    assert batched.tolist() == single


def test_score_composed_applies_then_reverts_bit_exactly():
    tokenizer, model = word_tokenizer(), tiny_classifier()
    rows = examples(tokenizer, n=40)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    task = random_diff(model, 1, dense=("classifier.weight", "classifier.bias"))
    lang = random_diff(model, 2)
    f1, acc = score_composed(model, tokenizer, rows, [task, lang], [1.0, 0.5], 3, batch_size=7)
    for name, param in model.named_parameters():
        assert_bitwise_equal(param.detach(), original[name], what=name)
    reference = tiny_classifier()
    task.apply(reference)
    lang.apply(reference, scale=0.5)
    gold = torch.tensor([r["labels"] for r in rows])
    predictions = predict_labels(reference, tokenizer, rows)
    assert f1 == pytest.approx(macro_f1(predictions, gold, 3))
    assert acc == pytest.approx(accuracy(predictions, gold, 3))
    base_f1, _ = score_composed(model, tokenizer, rows, [], [], 3)
    assert base_f1 == pytest.approx(macro_f1(predict_labels(tiny_classifier(), tokenizer, rows), gold, 3))


def test_score_composed_rejects_empty():
    with pytest.raises(ValueError, match="no examples"):
        score_composed(tiny_classifier(), word_tokenizer(), [], [], [], 3)


def test_score_compositions_one_row_per_cell_in_order():
    tokenizer, model = word_tokenizer(), tiny_classifier()
    rows, fewer = examples(tokenizer, n=20), examples(tokenizer, n=9)
    task, lang = random_diff(model, 1, dense=("classifier.weight", "classifier.bias")), random_diff(model, 2)
    cells = [("a", rows, Composition("m", (task, lang), (1.0, 0.5), language_sft=True, language_scale=0.5)),
             ("a", rows, Composition("m alone", (task,), (1.0,))),
             ("b", fewer, Composition("base"))]
    scored = list(score_compositions(model, tokenizer, cells, RowContext("bench", "proto", "src", 3, "valid"), 3))
    expected = [score_composed(model, tokenizer, rows, [task, lang], [1.0, 0.5], 3),
                score_composed(model, tokenizer, rows, [task], [1.0], 3),
                score_composed(model, tokenizer, fewer, [], [], 3)]
    assert scored == [
        EvalRow("bench", "proto", "m", "src", "a", 3, *expected[0], 20, True, "valid", 0.5),
        EvalRow("bench", "proto", "m alone", "src", "a", 3, *expected[1], 20, False, "valid", None),
        EvalRow("bench", "proto", "base", "src", "b", 3, *expected[2], 9, False, "valid", None),
    ]


def test_sentence_pairs_are_predicted_with_their_segment_ids():
    """A BERT tokenizer marks the second segment with token_type_ids 1; the examples dropped them, so a
    hypothesis was read as more of the premise (most of these predictions changed)."""
    from transformers import BertTokenizer

    words = [f"w{i}" for i in range(20)]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])})
    torch.manual_seed(0)
    config = BertConfig(vocab_size=24, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=12, num_labels=3, type_vocab_size=2)
    model = BertMeanPoolClassifier(config).eval()
    with torch.no_grad():
        model.bert.embeddings.token_type_embeddings.weight[1].normal_(0.0, 2.0)
        model.classifier.weight.normal_(0.0, 5.0)
    generator = torch.Generator().manual_seed(4)

    def sentence() -> str:
        length = int(torch.randint(1, 8, (1,), generator=generator))
        return " ".join(words[int(i)] for i in torch.randint(0, 20, (length,), generator=generator))

    premises, hypotheses = [sentence() for _ in range(40)], [sentence() for _ in range(40)]
    rows = classification_examples(tokenizer, premises, [0] * 40, 32, pairs=hypotheses)

    def logits(segment_ids: bool) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(**tokenizer(p, h, return_tensors="pt", return_token_type_ids=segment_ids)).logits
                              for p, h in zip(premises, hypotheses, strict=True)])

    with torch.no_grad():
        model.classifier.bias.sub_(logits(True).mean(0))
    plain, one_segment = logits(True).argmax(-1).tolist(), logits(False).argmax(-1).tolist()
    assert len(set(plain)) == 3 and plain != one_segment, "the segment ids change predictions: the test can fail"
    assert predict_labels(model, tokenizer, rows, batch_size=16).tolist() == plain
    single = classification_examples(tokenizer, premises, None, 32)
    assert all(set(row) == {"input_ids", "attention_mask"} for row in single), "one segment: all 0, left to the model"


def test_predictions_are_those_of_each_text_alone_whatever_the_tokenizers_padding_side():
    """A tokenizer that pads on the left put a short text's tokens at later positions (BERT numbers them from
    the first pad): some of its predictions changed with the batch it fell into."""
    tokenizer, model = word_tokenizer(), tiny_classifier()
    tokenizer.padding_side = "left"
    rows = examples(tokenizer, n=60)
    with torch.no_grad():
        logits = torch.cat([model(input_ids=torch.tensor([r["input_ids"]])).logits for r in rows])
        model.classifier.bias.sub_(logits.mean(0))
        alone = [int(model(input_ids=torch.tensor([r["input_ids"]])).logits.argmax()) for r in rows]
    assert len(set(alone)) == 3
    assert predict_labels(model, tokenizer, rows, batch_size=32).tolist() == alone
    assert tokenizer.padding_side == "left", "the tokenizer is left as it was"
