"""A step's identity covers every input it is called with (issue #20): the data collator's
settings, the label names the SFTs record and the device the model trains on.

Each test changes exactly one of them: the finished step is refused (naming the change) and
recomputed with ``overwrite=True``; the same inputs resume without training.
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass

import pytest
import torch
from transformers import DataCollatorWithPadding, TrainingArguments

from deftx.ops import native
from deftx.ops.denoise import ENERGY_SKETCH_RULE
from deftx.train.config import DenoiseConfig, to_plain
from deftx.train.identity import (
    IDENTITY_FILE,
    RUN_FORMAT,
    IdentityMismatchError,
    describe_changes,
    digest,
    settings_identity,
)
from deftx.train.language import BatchSeededCollator
from deftx.train.masking import MLMCollator
from deftx.train.sparse_finetuner import SparseFineTuner, explained
from tests.models.conftest import tiny_tokenizer
from tests.train.conftest import tiny_model, tiny_trainer
from tests.train.test_run_identity import run_config

LABELS = ("negative", "neutral", "positive")


class MaskedInputs:
    """Masks a classification batch's ``input_ids`` with an :class:`MLMCollator` (keeps its labels)."""

    def __init__(self, collator: BatchSeededCollator) -> None:
        self.collator = collator

    def __call__(self, examples):
        batch = self.collator([e["input_ids"] for e in examples])
        labels = torch.tensor([e["labels"] for e in examples])
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def masked_inputs(mlm_probability: float = 0.15, real_vocab_size: int | None = None, seed: int = 0) -> MaskedInputs:
    mlm = MLMCollator(tiny_tokenizer(), mlm_probability, real_vocab_size, seed=seed)
    return MaskedInputs(BatchSeededCollator(mlm, seed))


def labelled_model(labels=LABELS):
    model = tiny_model()
    model.config.update({"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}})
    return model


def step(tmp_path, *, collator=None, model=None, overwrite: bool = False, **arguments) -> SparseFineTuner:
    trainer = tiny_trainer(tmp_path, labelled_model() if model is None else model, **arguments)
    trainer.data_collator = masked_inputs() if collator is None else collator
    config = run_config(selections={"lt-sft": None})
    return SparseFineTuner(trainer, config, tmp_path / "work", progress=False, overwrite=overwrite,
                           warn_overrides=False)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One finished step (masked inputs, named labels, on the CPU)."""
    root = tmp_path_factory.mktemp("done")
    step(root).fit()
    return root


def refused_lines(root, **change) -> list[str]:
    with pytest.raises(IdentityMismatchError) as refused:
        step(root, **change).fit()
    return refused.value.changes


def test_the_same_inputs_resume(done):
    assert step(done).fit().seconds == {}


@pytest.mark.parametrize(
    ("collator", "line"),
    [
        (masked_inputs(mlm_probability=0.3), "phase 1: collator.settings.collator.settings.collator.settings."
                                              "mlm_probability: 0.15 -> 0.3"),
        (masked_inputs(real_vocab_size=10), "phase 1: collator.settings.collator.settings.collator.settings."
                                            "real_vocab_size: 19 -> 10"),
        (masked_inputs(seed=3), "phase 1: collator.settings.collator.settings.seed: 0 -> 3"),
    ],
)
def test_another_masking_setting_is_refused_naming_it(done, collator, line):
    assert line in refused_lines(done, collator=collator)


def test_another_masking_rate_is_retrained_with_overwrite(done, tmp_path):
    shutil.copytree(done / "work", tmp_path / "work")
    retrained = step(tmp_path, collator=masked_inputs(mlm_probability=0.3), overwrite=True).fit()
    assert {"full", "sparse:lt-sft"} <= set(retrained.seconds)
    assert step(tmp_path, collator=masked_inputs(mlm_probability=0.3)).fit().seconds == {}


def test_other_label_names_are_refused_and_the_branch_redone(done, tmp_path):
    shutil.copytree(done / "work", tmp_path / "work")
    renamed = labelled_model(("bad", "meh", "good"))
    lines = refused_lines(tmp_path, model=renamed)
    assert any(line.startswith("branch lt-sft: info.labels: ") for line in lines), lines
    assert not any(line.startswith("phase 1") for line in lines), "phase 1 (θ1) trains on label ids, not names"
    reordered = labelled_model(tuple(reversed(LABELS)))
    assert any(line.startswith("branch lt-sft: info.labels: ") for line in refused_lines(tmp_path, model=reordered))
    result = step(tmp_path, model=renamed, overwrite=True).fit()
    assert "sparse:lt-sft" in result.seconds
    assert result.diffs["lt-sft"].info["labels"] == ["bad", "meh", "good"]


def test_the_device_trained_on_is_recorded_not_use_cpu(done, monkeypatch):
    assert step(done).phase1_identity()["device"] == "cpu"
    if not torch.cuda.is_available():
        assert step(done, use_cpu=False).fit().seconds == {}, "use_cpu=False without cuda trains on the cpu too"
    elsewhere = step(done)
    monkeypatch.setattr(TrainingArguments, "device", property(lambda self: torch.device("meta")))
    with pytest.raises(IdentityMismatchError) as refused:
        elsewhere.fit()
    assert refused.value.changes == ['phase 1: device: "cpu" -> "meta"']


@dataclass
class Settings:
    rate: float
    names: tuple[str, ...]


class Plain:
    def __init__(self) -> None:
        self.weights = torch.arange(3.0)
        self.settings = Settings(0.5, ("a",))


def test_settings_identity_records_every_setting_and_refuses_what_it_cannot():
    mlm = masked_inputs()
    assert settings_identity(mlm) == settings_identity(masked_inputs())
    mlm.collator.batches = 5
    assert settings_identity(mlm) == settings_identity(masked_inputs()), "a phase's progress is no setting"
    plain = settings_identity(Plain())
    assert plain["settings"]["settings"] == {"class": f"{__name__}.Settings", "settings": {"rate": 0.5, "names": ["a"]}}
    changed = Plain()
    changed.weights[0] = 7
    assert settings_identity(changed) != plain
    assert settings_identity(torch.nn.functional.relu) == "torch.nn.functional.relu"
    partial = settings_identity(functools.partial(round, ndigits=2))
    assert partial["settings"]["keywords"] == {"ndigits": 2}
    padding = settings_identity(DataCollatorWithPadding(tiny_tokenizer()))["settings"]
    assert padding["tokenizer"]["settings"]["padding_side"] == "right" and len(padding["tokenizer"]["settings"]
                                                                             ["vocabulary"]) == 64
    with pytest.raises(TypeError, match="Generator"):
        settings_identity({"draws": torch.Generator()})
    looped = Plain()
    looped.itself = looped
    with pytest.raises(TypeError, match="levels deep"):
        settings_identity(looped)


def test_a_tokenizers_vocabulary_is_digested_once_until_it_changes(monkeypatch):
    """The digest of a tokenizer's vocabulary is kept beside the object, and taken again once a token is added."""
    tokenizer = tiny_tokenizer()
    reads = []
    get_vocab = tokenizer.get_vocab
    monkeypatch.setattr(tokenizer, "get_vocab", lambda: reads.append(1) or get_vocab())

    def recorded():
        return settings_identity(tokenizer)["settings"]["vocabulary"]

    first = recorded()
    assert first == digest(get_vocab()) and recorded() == first and len(reads) == 1
    tokenizer.add_tokens(["zebra"])
    assert recorded() == digest(get_vocab()) != first and len(reads) == 2
    tokenizer.add_special_tokens({"additional_special_tokens": ["<x>"]})
    assert recorded() == digest(get_vocab()) and len(reads) == 3
    assert recorded() == digest(get_vocab()) and len(reads) == 3
    assert settings_identity(tiny_tokenizer()) == settings_identity(tiny_tokenizer()), "another object, read again"


def test_a_step_of_an_older_identity_format_is_refused_saying_so(done, tmp_path):
    shutil.copytree(done / "work", tmp_path / "work")
    record = tmp_path / "work" / IDENTITY_FILE
    older = json.loads(record.read_text())
    older["format"]["run"] = RUN_FORMAT - 1
    record.write_text(json.dumps(older))
    assert f"phase 1: format.run: {RUN_FORMAT - 1} -> {RUN_FORMAT} (written by an older deftx" in " ".join(
        refused_lines(tmp_path))


def test_a_branch_records_its_ops_backends_and_is_redone_on_others(done, tmp_path, monkeypatch):
    """The native and torch masked steps agree to rounding only: a branch is the same step only on the
    same backends."""
    if native.unavailable_reason() is not None:
        pytest.skip(native.unavailable_reason())
    assert step(done).branch_identity("lt-sft", None, {})["backends"] == {"topk": "native", "masked_step": "native"}
    shutil.copytree(done / "work", tmp_path / "work")
    monkeypatch.setenv("DEFTX_BACKEND", "torch")
    lines = refused_lines(tmp_path)
    assert [line.split(" (")[0] for line in lines] == ['branch lt-sft: backends.masked_step: "native" -> "torch"',
                                                       'branch lt-sft: backends.topk: "native" -> "torch"']
    assert all("agree to rounding" in line for line in lines)
    assert not any(line.startswith("phase 1") for line in lines), "phase 1 runs on no deftx.ops op"
    assert "sparse:lt-sft" in step(tmp_path, overwrite=True).fit().seconds
    assert step(tmp_path).fit().seconds == {}


def test_a_randomized_energy_selection_records_its_sketch_rule_and_an_older_one_is_named(done):
    """The energy policy's sketch widths changed what randomized DeFT-X keeps (ENERGY_SKETCH_RULE 2): its
    branches record the rule, so an older branch is redone with --overwrite, not reused; other selections
    record what they did."""
    tuner = step(done)
    energy = tuner.branch_identity("d", DenoiseConfig(energy=0.9), {})["selection"]
    assert energy == {**to_plain(DenoiseConfig(energy=0.9)), "energy_sketch": ENERGY_SKETCH_RULE}
    for other in (DenoiseConfig(rank=4), DenoiseConfig(energy=0.9, method="exact"), None):
        assert tuner.branch_identity("d", other, {})["selection"] == to_plain(other)
    older = {**energy}
    del older["energy_sketch"]
    lines = [explained(line) for line in describe_changes({"selection": older}, {"selection": energy})]
    assert lines == [f"selection.energy_sketch: added ({ENERGY_SKETCH_RULE}) (selected by an older deftx, whose "
                     "randomized SVD kept an energy rank with no spare sketch columns: --overwrite redoes the branch)"]
