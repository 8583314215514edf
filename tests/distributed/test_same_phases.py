"""The sharded run takes the single-process path's phases: L1 pull, clipping, learning-rate schedule,
weight decay (biases and norms spared, as a Trainer spares them).

The same tiny BERT (no dropout) and the same 8 examples, trained once by
:class:`~deftx.SparseFineTuner` inside a ``transformers.Trainer`` (one batch of all 8 per step,
so its shuffling changes nothing) and once by :func:`deftx.distributed.train.run_sparse_finetuning`
on 2 gloo ranks (4 examples each, gradients averaged). The L1 pull is strong enough to hold
entries at θ0 and the clipping threshold low enough to act on every step, so a path without
either (or with another schedule) would not come out the same.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertForSequenceClassification, Trainer, TrainingArguments

from deftx import SparseFineTuner
from deftx.distributed.train import SFTSettings, full_selection, full_state, run_sparse_finetuning
from deftx.train.checkpoint import load_tensors
from deftx.train.config import PhaseConfig, SparseFineTuningConfig
from tests.distributed.world import run_world
from tests.sft.helpers import tiny_config

K = 400
STEPS = 4
PHASE = PhaseConfig(steps=STEPS, learning_rate=1e-2, l1=20.0)
MAX_GRAD_NORM = 0.1


WEIGHT_DECAY = 0.5


def tiny_bert() -> BertForSequenceClassification:
    """No dropout, and no key biases: their gradient is zero in exact arithmetic (the softmax ignores
    a constant per query), so Adam would turn two runs' different rounding noise into ±lr steps. The
    other biases start away from 0, so that weight decay applied to them would show."""
    torch.manual_seed(0)
    config = tiny_config(max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config)
    for layer in model.bert.encoder.layer:
        layer.attention.self.key.register_parameter("bias", None)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.5)
    return model


def examples() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 64, (8, 8), generator=gen)
    return [{"input_ids": row, "labels": row[0] % 3} for row in ids]


def sharded_worker(rank: int, world: int, strategy: str, weight_decay: float) -> dict:
    from torch.distributed.tensor import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    rows = examples()[rank::world]
    batch = {key: torch.stack([row[key] for row in rows]) for key in ("input_ids", "labels")}
    settings = SFTSettings(k=K, full=PHASE, sparse=PHASE, max_grad_norm=MAX_GRAD_NORM, weight_decay=weight_decay)
    _, result = run_sparse_finetuning(tiny_bert(), strategy, settings, lambda step: batch, mesh)
    return {"selection": full_selection(result, mesh.get_group()), "theta1": full_state(result.theta1),
            "diff": result.diff, "losses": result.losses}


@pytest.fixture(scope="module", params=[0.0, WEIGHT_DECAY], ids=["no-decay", "decay"])
def single(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    args = TrainingArguments(output_dir=str(folder / "trainer"), per_device_train_batch_size=8, report_to=[],
                             save_strategy="no", disable_tqdm=True, use_cpu=True, seed=3, weight_decay=request.param,
                             max_grad_norm=MAX_GRAD_NORM, lr_scheduler_type="linear", logging_steps=1)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=examples())
    config = SparseFineTuningConfig(k=K, full=PHASE, sparse=PHASE, selections={"lt-sft": None}, ship_head=True)
    result = SparseFineTuner(trainer, config, folder / "work", progress=False, keep_theta1=True,
                             warn_overrides=False).fit()
    records = [json.loads(line) for line in (folder / "work" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "grad_norm" in r]
    assert len(steps) == 2 * STEPS and all(r["grad_norm"] > MAX_GRAD_NORM for r in steps), "clipping must act"
    assert steps[0]["learning_rate"] > steps[STEPS - 1]["learning_rate"] > 0, "the schedule must move"
    return request.param, result.diffs["lt-sft"], load_tensors(folder / "work" / "theta1.safetensors")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_sharded_run_equals_the_trainer_run(single, strategy, tmp_path):
    weight_decay, diff, theta1 = single
    run = run_world(sharded_worker, 2, tmp_path, strategy, weight_decay, timeout_s=120)[0]
    for name, value in run["theta1"].items():
        torch.testing.assert_close(value, theta1[name], rtol=0, atol=1e-5, msg=f"θ1 of {name}")
    for name, idx in run["selection"].items():
        assert torch.equal(idx, diff.indices[name]), f"selection of {name}"
    for name in diff.indices:
        torch.testing.assert_close(run["diff"].values[name], diff.values[name], rtol=0, atol=1e-5, msg=name)
    for name in diff.dense:
        torch.testing.assert_close(run["diff"].dense[name], diff.dense[name], rtol=0, atol=1e-5, msg=name)
