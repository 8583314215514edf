"""Sparse fine-tuning inside your own ``transformers.Trainer``: the contract, end to end.

    python examples/sparse_finetune_your_trainer.py

A tiny random BERT classifier, a ``datasets.Dataset`` whose label is the first token id
mod 3, and a plain ``Trainer`` with your own ``TrainingArguments``. The script shows what
``SparseFineTuner`` changes on that Trainer (one warning, naming each field), the state it
leaves it in, saving and loading the SFTs, reverting a loaded file by content, and the run
identity: a second ``fit()`` resumes, a changed K is refused until ``overwrite=True``.
Runs on a CPU in well under a minute; nothing is downloaded. README, "Your Trainer,
sparse fine-tuned", shows the same code.
"""

import warnings
from pathlib import Path

import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from deftx import (
    IdentityMismatchError,
    PhaseConfig,
    SparseDiff,
    SparseFineTuner,
    TrainerOverrideWarning,
    task_sft_config,
)

torch.manual_seed(0)
model = BertForSequenceClassification(BertConfig(
    vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=3))
ids = torch.randint(4, 64, (64, 12), generator=torch.Generator().manual_seed(1))
data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 3).tolist()})
args = TrainingArguments(output_dir="runs/yours", max_steps=30, learning_rate=3e-3, per_device_train_batch_size=16,
                         save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
trainer = Trainer(model=model, args=args, train_dataset=data)
theta0 = {name: p.detach().clone() for name, p in model.named_parameters()}

# Phase 1 with *your* length and learning rate; phase 3 (sparse retraining) from the config.
config = task_sft_config(k=0.05, full=PhaseConfig.from_training_arguments(args),
                         sparse=PhaseConfig(steps=30, learning_rate=3e-3))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", TrainerOverrideWarning)
    result = SparseFineTuner(trainer, config, "runs/task-sft", progress=False).fit()
print("fit() said:", *[str(w.message) for w in caught])   # names each TrainingArguments field it set
warnings.filterwarnings("ignore", category=TrainerOverrideWarning)   # heard once: quiet from now on
print(result.diffs, f"kept {result.kept_bytes:,} bytes")

# The Trainer is as you gave it: your arguments, no optimizer, the model at θ0.
assert trainer.args.output_dir == "runs/yours" and trainer.args.learning_rate == 3e-3
assert trainer.optimizer is None and trainer.lr_scheduler is None
assert all(torch.equal(p, theta0[n]) for n, p in model.named_parameters())
assert not any(Path("runs/yours").iterdir())      # your output_dir (made by the Trainer): nothing written there

# Save, load, apply; a diff loaded again from the same file reverts by content, bit-exactly.
result.diffs["deft-x"].save("task-deftx.safetensors")
SparseDiff.load("task-deftx.safetensors").apply(model)
SparseDiff.load("task-deftx.safetensors").revert(model)
assert all(torch.equal(p, theta0[n]) for n, p in model.named_parameters())

# The run's identity: the same run resumes (nothing retrained), a changed K is refused.
again = SparseFineTuner(trainer, config, "runs/task-sft", progress=False).fit()
assert again.seconds == {} and again.diffs["lt-sft"].k == result.diffs["lt-sft"].k
try:
    SparseFineTuner(trainer, task_sft_config(k=0.01, full=config.full, sparse=config.sparse), "runs/task-sft").fit()
    raise AssertionError("a changed K must be refused")
except IdentityMismatchError as refused:
    print("refused:", *refused.changes, sep="\n  ")
smaller = SparseFineTuner(trainer, task_sft_config(k=0.01, full=config.full, sparse=config.sparse),
                          "runs/task-sft", overwrite=True, progress=False).fit()
assert smaller.diffs["lt-sft"].nnz < result.diffs["lt-sft"].nnz
trainer.train()                                   # your own training still works afterwards
assert trainer.state.global_step == 30
