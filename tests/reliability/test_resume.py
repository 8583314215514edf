"""A killed run resumes to the same SFTs, bit for bit, whatever the kill point.

One run of two branches (LT-SFT and DeFT-X, dropout 0.1, checkpoints every 2 steps) is
killed at every phase boundary, at the first step of every phase (before its first
checkpoint), after a checkpoint, halfway through a checkpoint's ``trainer_state.json`` and
halfway through writing a run file (the run identity among them); each kill is followed by a new ``fit()`` in a fresh
Trainer with the global RNG disturbed, as in a new process. The SFTs and the loss log must
equal an uninterrupted run's; one kill is a real SIGKILL of a child process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Trainer

from deftx.sft import SparseDiff
from deftx.train.config import DenoiseConfig, PhaseConfig, SparseFineTuningConfig
from deftx.train.sparse_finetuner import SparseFineTuner
from tests.helpers import assert_bitwise_equal
from tests.reliability.killpoints import Killed, kill_at
from tests.train.conftest import tiny_trainer

ROOT = Path(__file__).resolve().parents[2]
BRANCHES = ("lt-sft", "deft-x")
STEPS = 4  # checkpoints at step 2 (save_steps=2); none at the last step

KILL_POINTS = [
    ("saved", "work/identity.json"),
    ("saved", "deft-x/identity.json"),
    ("step", "full", 1),
    ("checkpoint-state", "phase1", 2),
    ("step", "full", 3),
    ("writing", "theta1.safetensors"),
    ("saved", "theta1.safetensors"),
    ("saved", "lt-sft/mask.safetensors"),
    ("step", "sparse:lt-sft", 1),
    ("step", "sparse:lt-sft", 3),
    ("saved", "lt-sft/sft.safetensors"),
    ("saved", "deft-x/selection.json"),
    ("step", "sparse:deft-x", 1),
    ("checkpoint-state", "deft-x/phase3", 2),
    ("step", "sparse:deft-x", 4),
]


def run_config() -> SparseFineTuningConfig:
    return SparseFineTuningConfig(
        k=0.1,
        full=PhaseConfig(steps=STEPS, learning_rate=1e-2, l1=0.1),
        sparse=PhaseConfig(steps=STEPS, learning_rate=1e-2, l1=0.1),
        eligible=("word_embeddings", "embeddings", "attention", "ffn"),
        selections={"lt-sft": None, "deft-x": DenoiseConfig(rank=1, method="exact")},
        train_head=True,
        ship_head=True,
    )


def fit(root: Path, disturb: int = 0) -> dict[str, SparseDiff]:
    """One ``fit()`` of the run in ``root/work`` with a new Trainer (its model at θ0)."""
    trainer = tiny_trainer(root)
    torch.rand(disturb)  # what ran before in the process must not matter
    return SparseFineTuner(trainer, run_config(), root / "work", progress=False).fit().diffs


def loss_records(root: Path) -> list[tuple]:
    lines = (root / "work" / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [(r["phase"], r["step"], r["loss"], r["grad_norm"]) for r in records if "loss" in r]


def assert_same_sfts(resumed: dict[str, SparseDiff], reference: dict[str, SparseDiff]) -> None:
    assert set(resumed) == set(reference) == set(BRANCHES)
    for branch in BRANCHES:
        a, b = resumed[branch], reference[branch]
        assert a.names == b.names, branch
        for name in b.indices:
            assert_bitwise_equal(a.indices[name], b.indices[name], what=f"{branch} indices {name}")
            assert_bitwise_equal(a.values[name], b.values[name], what=f"{branch} values {name}")
        for name in b.dense:
            assert_bitwise_equal(a.dense[name], b.dense[name], what=f"{branch} dense {name}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        diffs = fit(root)
    finally:
        torch.set_num_threads(threads)
    return diffs, loss_records(root)


def test_a_run_without_trainer_checkpoints_writes_none_and_gives_the_same_sfts(tmp_path, reference, monkeypatch):
    """save_strategy "no" (``TrainingSettings(save_steps=0)``): no checkpoint inside any phase,
    the same SFTs and losses bit for bit (checkpoints only cost time)."""
    saved = []
    original = Trainer._save_checkpoint
    monkeypatch.setattr(Trainer, "_save_checkpoint", lambda self, *a, **k: saved.append(1) or original(self, *a, **k))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = tiny_trainer(tmp_path, save_strategy="no")
        diffs = SparseFineTuner(trainer, run_config(), tmp_path / "work", progress=False).fit().diffs
    finally:
        torch.set_num_threads(threads)
    assert saved == []
    assert_same_sfts(diffs, reference[0])
    assert loss_records(tmp_path) == reference[1]


def test_kills_at_every_phase_boundary_and_first_step_resume_bit_identically(tmp_path, reference):
    diffs, log = reference
    for number, point in enumerate(KILL_POINTS, start=1):
        with kill_at(point), pytest.raises(Killed):
            fit(tmp_path, disturb=number)
    assert_same_sfts(fit(tmp_path, disturb=99), diffs)
    assert loss_records(tmp_path) == log, "every step logged once, with the uninterrupted run's loss"
    assert not list((tmp_path / "work").rglob(".*.tmp-*")), "no temporary file left"
    assert not list((tmp_path / "work").rglob("checkpoint-*")), "finished phases keep no checkpoint"
    assert not list((tmp_path / "work").rglob("theta*")) and not list((tmp_path / "work").rglob("mask*")), (
        "a finished run keeps no θ and no mask")


def test_killed_at_the_first_step_of_a_branch(tmp_path, reference):
    """Issue #24's case: killed before the first branch's first checkpoint, resumed by calling fit() again."""
    with kill_at(("step", "sparse:lt-sft", 1)), pytest.raises(Killed):
        fit(tmp_path)
    assert_same_sfts(fit(tmp_path, disturb=5), reference[0])


CHILD = """
import sys, torch
torch.set_num_threads(1)
from pathlib import Path
from tests.reliability.killpoints import kill_at
from tests.reliability.test_resume import fit
point = eval(sys.argv[2])
with kill_at(point, hard=True):
    fit(Path(sys.argv[1]))
"""


def test_a_sigkilled_process_resumes_bit_identically(tmp_path, reference):
    """A real kill: nothing runs after it (no finally, no cleanup of the temporary being written)."""
    point = ("writing", "lt-sft/sft.safetensors")
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), repr(point)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr[-2000:]
    assert list((tmp_path / "work" / "lt-sft").glob(".sft.safetensors.tmp-*")), "the killed save left its temporary"
    assert_same_sfts(fit(tmp_path), reference[0])
    assert not list((tmp_path / "work").rglob(".*.tmp-*")), "the next save removed the dead writer's temporary"
    assert loss_records(tmp_path) == reference[1]


def language_run(root: Path, model_dir: Path, head_file: Path, disturb: int = 0) -> dict[str, SparseDiff]:
    """A language SFT (masked LM, MLM masks from the collator) of one branch, epochs of 3 batches."""
    from deftx.train.language import language_sft_tuner
    from deftx.train.trainer_args import TrainingSettings
    from tests.models.conftest import WORDS, tiny_tokenizer

    texts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(5 + i % 4)) for i in range(12)]
    config = SparseFineTuningConfig(
        k=0.05, full=PhaseConfig(steps=5, learning_rate=1e-2), sparse=PhaseConfig(steps=5, learning_rate=1e-2),
        eligible=("embeddings", "attention", "ffn"), selections={"lt-sft": None}, train_head=False,
    )
    settings = TrainingSettings(batch_size=4, max_length=8, seed=3, save_steps=2, logging_steps=1,
                                group_by_length=False, progress=False)
    torch.rand(disturb)
    return language_sft_tuner(model_dir, tiny_tokenizer(), texts, config, root / "work", head_file=head_file,
                              settings=settings).fit().diffs


def test_a_language_sft_resumed_mid_phase_sees_the_same_masks(tmp_path):
    """Killed after a checkpoint (mid-epoch and across an epoch boundary), the MLM masks continue as uninterrupted."""
    from transformers import BertConfig, BertModel

    from deftx.models.mlm import build_mlm_model, save_head
    from tests.models.conftest import tiny_tokenizer

    config = BertConfig(vocab_size=len(tiny_tokenizer()), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=16, pad_token_id=1)  # dropout 0.1
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "base")
    save_head(build_mlm_model(tmp_path / "base", seed=1), tmp_path / "head.safetensors")
    reference = language_run(tmp_path / "a", tmp_path / "base", tmp_path / "head.safetensors")
    for number, point in enumerate([("step", "full", 3), ("step", "sparse:lt-sft", 5)], start=1):
        with kill_at(point), pytest.raises(Killed):
            language_run(tmp_path / "b", tmp_path / "base", tmp_path / "head.safetensors", disturb=number)
    resumed = language_run(tmp_path / "b", tmp_path / "base", tmp_path / "head.safetensors", disturb=7)
    for name in reference["lt-sft"].indices:
        assert_bitwise_equal(resumed["lt-sft"].indices[name], reference["lt-sft"].indices[name], what=name)
        assert_bitwise_equal(resumed["lt-sft"].values[name], reference["lt-sft"].values[name], what=name)


def test_steps_the_store_finished_leave_no_partial_phase_in_the_log(tmp_path):
    """Killed in phase 1, then given θ1 or the branches by the store (another run finished the same steps
    meanwhile): the log keeps no record of the phase the kill cut short, which the loss trends would read
    as the whole phase."""
    from deftx.train.checkpoint import read_log
    from deftx.train.store import LinkedStepStore

    store = LinkedStepStore(tmp_path / "store")

    def shared_fit(name: str) -> dict[str, SparseDiff]:
        return SparseFineTuner(tiny_trainer(tmp_path / name), run_config(), tmp_path / name / "work", progress=False,
                               store=store).fit().diffs

    def phases(name: str) -> dict[str, int]:
        records = read_log(tmp_path / name / "work" / "log.jsonl")
        return {phase: sum(1 for r in records if r["phase"] == phase and "loss" in r)
                for phase in dict.fromkeys(r["phase"] for r in records)}

    for name in ("theta1", "branches"):
        with kill_at(("step", "full", 3)), pytest.raises(Killed):
            shared_fit(name)
        assert phases(name) == {"full": 2}
    with kill_at(("step", "sparse:lt-sft", 1)), pytest.raises(Killed):
        shared_fit("other")  # θ1 is in the store now, no branch yet
    shared_fit("theta1")
    assert phases("theta1") == {"sparse:lt-sft": STEPS, "sparse:deft-x": STEPS}, "θ1 linked, its phase not logged"
    shared_fit("other")
    shared_fit("branches")
    assert phases("branches") == {}, "every step linked: nothing of this folder's phase 1 logged"
    assert phases("other") == {"full": STEPS}, "its branches linked: the one cut short no longer logged"
