"""Disk (issue #19): a run keeps what resuming needs and no more, and reports the bytes it keeps.

θ0 is the model the run is given (never copied), θ1 lives until every branch is done (or on
request), a mask until its SFT is written; the full fine-tuning baseline keeps the rows it
changed, not the model. (The pipeline's disk before and after: README, "Disk".)
"""

from __future__ import annotations

import pytest
import torch

from deftx.train.checkpoint import changed_rows, folder_bytes, load_changed_rows_, save_changed_rows
from deftx.train.config import DenoiseConfig, PhaseConfig, SparseFineTuningConfig
from deftx.train.sparse_finetuner import SparseFineTuner
from tests.helpers import assert_bitwise_equal
from tests.train.conftest import tiny_trainer

KEPT = {"identity.json", "log.jsonl", "lt-sft/identity.json", "lt-sft/selection.json", "lt-sft/sft.safetensors",
        "deft-x/identity.json", "deft-x/selection.json", "deft-x/sft.safetensors"}


def config() -> SparseFineTuningConfig:
    return SparseFineTuningConfig(
        k=0.1, full=PhaseConfig(steps=3, learning_rate=1e-2), sparse=PhaseConfig(steps=3, learning_rate=1e-2),
        eligible=("word_embeddings", "embeddings", "attention", "ffn"),
        selections={"lt-sft": None, "deft-x": DenoiseConfig(rank=1, method="exact")}, train_head=True, ship_head=True,
    )


def files(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_a_finished_run_keeps_identities_logs_reports_and_sfts_only(tmp_path):
    trainer = tiny_trainer(tmp_path, save_steps=1)
    result = SparseFineTuner(trainer, config(), tmp_path / "work", progress=False).fit()
    assert files(tmp_path / "work") == KEPT
    assert result.kept_bytes == folder_bytes(tmp_path / "work") == sum(
        (tmp_path / "work" / name).stat().st_size for name in KEPT)


def test_keep_theta1_keeps_it_for_a_later_branch(tmp_path):
    trainer = tiny_trainer(tmp_path)
    SparseFineTuner(trainer, config(), tmp_path / "work", progress=False, keep_theta1=True).fit()
    assert files(tmp_path / "work") == KEPT | {"theta1.safetensors"}


def test_folder_bytes_counts_a_hard_linked_file_once(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "b").hardlink_to(tmp_path / "a")
    (tmp_path / "c").write_bytes(b"y" * 7)
    assert folder_bytes(tmp_path) == 107 and folder_bytes(tmp_path / "missing") == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_changed_rows_round_trip_bit_exactly(tmp_path, dtype):
    generator = torch.Generator().manual_seed(0)
    base = {"emb": torch.randn(50, 4, generator=generator).to(dtype), "bias": torch.randn(6, generator=generator),
            "scale": torch.tensor(2.0), "same": torch.ones(3, 3)}
    tuned = {name: t.clone() for name, t in base.items()}
    tuned["emb"][[3, 17]] += 1
    tuned["emb"][40, 2] = -0.0 if base["emb"][40, 2] == 0 else -base["emb"][40, 2]
    tuned["bias"][0] = torch.nan
    tuned["scale"] = torch.tensor(3.0)
    assert changed_rows(base["emb"], tuned["emb"]).tolist() == [3, 17, 40]
    save_changed_rows(tmp_path / "final.safetensors", base, tuned)
    restored = {name: t.clone() for name, t in base.items()}
    load_changed_rows_(restored, tmp_path / "final.safetensors")
    for name in base:
        assert_bitwise_equal(restored[name], tuned[name], what=name)
    assert (tmp_path / "final.safetensors").stat().st_size < 1_000, "three rows, an entry, a scalar: not the tensors"


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(2000)]]


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A save_pretrained BERT body whose embeddings dominate (2,005 words) and its tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=12, max_position_embeddings=32)
    BertModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "base")
    BertTokenizer(vocab={word: i for i, word in enumerate(WORDS)}).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_the_baseline_keeps_the_rows_it_changed_and_resumes_to_the_same_model(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from deftx.train.task import BASELINE_FILE, classification_examples, train_full_finetune
    from deftx.train.trainer_args import TrainingSettings

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    texts = ["w1 w2 w3", "w4 w5", "w6 w1 w7", "w2 w2 w8"] * 4
    examples = classification_examples(tokenizer, texts, [2, 0, 1, 2] * 4, 16)
    settings = TrainingSettings(batch_size=4, max_length=16, save_steps=50, progress=False)
    phase = PhaseConfig(steps=3, learning_rate=1e-3)
    trained = train_full_finetune(tiny_model_dir, tokenizer, examples, phase, tmp_path / "full", num_labels=3,
                                  settings=settings)
    again = train_full_finetune(tiny_model_dir, tokenizer, examples, phase, tmp_path / "full", num_labels=3,
                                settings=settings)
    for (name, a), (_, b) in zip(trained.named_parameters(), again.named_parameters(), strict=True):
        assert_bitwise_equal(b.detach(), a.detach(), what=name)
    assert files(tmp_path / "full") == {BASELINE_FILE, "identity.json", "log.jsonl"}
    kept = (tmp_path / "full" / BASELINE_FILE).stat().st_size
    assert kept < sum(p.numel() * p.element_size() for p in trained.parameters()) / 4, "the touched rows only"


def test_a_baseline_trained_with_bf16_is_scored_in_float32_as_when_resumed(tmp_path, tiny_model_dir):
    """``bf16: true`` trains under autocast, which accelerate leaves on the model's ``forward``: the baseline
    returned after training computes as the one resumed from its rows (float32), not in bf16."""
    from transformers import AutoTokenizer

    from deftx.train.task import classification_examples, train_full_finetune
    from deftx.train.trainer_args import TrainingSettings

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    examples = classification_examples(tokenizer, ["w1 w2 w3", "w4 w5", "w6 w1 w7", "w2 w2 w8"] * 4,
                                       [2, 0, 1, 2] * 4, 16)
    settings = TrainingSettings(batch_size=4, max_length=16, save_steps=0, progress=False,
                                arguments={"bf16": True, "use_cpu": True})

    def baseline() -> torch.nn.Module:
        return train_full_finetune(tiny_model_dir, tokenizer, examples, PhaseConfig(steps=2, learning_rate=1e-2),
                                   tmp_path / "full", num_labels=3, settings=settings).eval()

    trained, resumed = baseline(), baseline()
    batch = tokenizer(["w1 w2 w3 w9", "w4 w5"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert_bitwise_equal(trained(**batch).logits, resumed(**batch).logits, what="the trained baseline's logits")
    assert "forward" not in vars(trained)


def test_a_baseline_the_store_finished_leaves_no_partial_phase_in_the_log(tmp_path, tiny_model_dir):
    """Stopped in its phase, then given the finished baseline by the store: the log keeps no record of
    the phase cut short; the model is the one the store's run trained."""
    from transformers import AutoTokenizer

    from deftx.train.checkpoint import read_log
    from deftx.train.store import LinkedStepStore
    from deftx.train.task import classification_examples, train_full_finetune
    from deftx.train.trainer_args import TrainingSettings
    from tests.reliability.killpoints import Killed, kill_at

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    examples = classification_examples(tokenizer, ["w1 w2 w3", "w4 w5", "w6 w1 w7", "w2 w2 w8"] * 4,
                                       [2, 0, 1, 2] * 4, 16)
    settings = TrainingSettings(batch_size=4, max_length=16, save_steps=2, logging_steps=1, progress=False)
    store = LinkedStepStore(tmp_path / "store")

    def run(name: str) -> torch.nn.Module:
        return train_full_finetune(tiny_model_dir, tokenizer, examples, PhaseConfig(steps=4, learning_rate=1e-3),
                                   tmp_path / name, num_labels=3, settings=settings, store=store)

    with kill_at(("step", "full", 3)), pytest.raises(Killed):
        run("stopped")
    assert read_log(tmp_path / "stopped" / "log.jsonl"), "the stopped run logged part of its phase"
    trained = run("other")
    linked = run("stopped")
    assert read_log(tmp_path / "stopped" / "log.jsonl") == []
    for (name, a), (_, b) in zip(trained.named_parameters(), linked.named_parameters(), strict=True):
        assert_bitwise_equal(b.detach(), a.detach(), what=name)


def test_the_baseline_refuses_an_l1_pull_it_would_not_apply(tmp_path, tiny_model_dir):
    """Full fine-tuning trains without an L1 pull: a phase asking for one (which trained bit for bit as
    ``l1=0``) is refused before anything is built or written."""
    from transformers import AutoTokenizer

    from deftx.train.task import classification_examples, train_full_finetune
    from deftx.train.trainer_args import TrainingSettings

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    examples = classification_examples(tokenizer, ["w1 w2 w3", "w4 w5"] * 4, [2, 0] * 4, 16)
    settings = TrainingSettings(batch_size=4, max_length=16, save_steps=0, progress=False)
    with pytest.raises(ValueError, match=r"full fine-tuning baseline takes no L1 pull.* l1 is 0\.5"):
        train_full_finetune(tiny_model_dir, tokenizer, examples, PhaseConfig(steps=2, learning_rate=1e-2, l1=0.5),
                            tmp_path / "full", num_labels=3, settings=settings)
    assert not (tmp_path / "full").exists()
