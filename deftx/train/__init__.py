"""deftx.train: sparse fine-tuning (LT-SFT, DeFT-X) inside a ``transformers.Trainer``.

One module per pipeline step: :mod:`~deftx.train.finetune` (phase 1, full fine-tuning
with an optional L1 pull), :mod:`~deftx.train.denoise` (DeFT-X scores),
:mod:`~deftx.train.select` (global top-K), :mod:`~deftx.train.retrain` (sparse
retraining with O(K) optimizer state), strung together by
:class:`~deftx.train.sparse_finetuner.SparseFineTuner` (its contract with your Trainer:
:mod:`~deftx.train.trainer_contract`; its run identity and step store:
:mod:`~deftx.train.identity`, :mod:`~deftx.train.store`). :mod:`~deftx.train.language`
and :mod:`~deftx.train.task` build language SFTs (masked LM) and task SFTs (sequence
classification) on NusaX-style data; :mod:`~deftx.train.head_warm_up` warms up the MLM head the
language SFTs train under (batches: :mod:`~deftx.train.masking`).
"""

from deftx.train.config import (
    DenoiseConfig,
    PhaseConfig,
    SparseFineTuningConfig,
    language_sft_config,
    task_sft_config,
)
from deftx.train.identity import IdentityMismatchError
from deftx.train.retrain import MaskedAdamW
from deftx.train.sparse_finetuner import SparseFineTuner, SparseFineTuningResult
from deftx.train.trainer_contract import TrainerOverrideWarning

__all__ = [
    "DenoiseConfig",
    "IdentityMismatchError",
    "MaskedAdamW",
    "PhaseConfig",
    "SparseFineTuner",
    "SparseFineTuningConfig",
    "SparseFineTuningResult",
    "TrainerOverrideWarning",
    "language_sft_config",
    "task_sft_config",
]
