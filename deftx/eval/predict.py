"""Batched inference of a sequence classifier over tokenised examples."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from deftx.train.task import RightPadding


@torch.no_grad()
def predict_labels(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[dict],
    *,
    batch_size: int = 64,
    progress: bool = False,
    description: str = "predict",
) -> torch.Tensor:
    """Arg-max class of each example, (N,) int64 on the CPU.

    Args:
        model: a sequence classifier returning ``logits`` (B, C); run in eval mode.
        tokenizer: for padding, on the right whatever its ``padding_side``: a model that numbers positions
            from the first token (BERT's absolute positions) reads a left-padded text at other positions.
        examples: tokenised rows (``input_ids``, ``attention_mask``, ``token_type_ids`` where made;
            ``labels`` ignored).
        batch_size: examples per forward pass (sorted by length to limit padding).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    predictions = torch.empty(len(examples), dtype=torch.int64)
    pad = RightPadding(tokenizer)
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=description, disable=not progress, leave=False):
            rows = order[start : start + batch_size]
            batch = pad([{k: v for k, v in examples[i].items() if k != "labels"} for i in rows])
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            predictions[rows] = logits.argmax(-1).cpu()
    finally:
        model.train(was_training)
    return predictions
