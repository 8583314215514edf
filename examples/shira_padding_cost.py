"""What SHiRA's uniform r costs: padding of an LT-SFT-sized selection on multilingual-e5-small's Linear weights.

    python examples/shira_padding_cost.py

K = 5.1% of the encoder's Linear weights (the task-SFT share), selected as the top-K of random
scores: uniform (entries spread in proportion to each matrix's size, the best case for one r)
and with a per-matrix scale drawn from LogNormal(0, 0.25) (entries concentrate in some
matrices, as trained SFTs' do). Prints, per case, r, the padding entries and bytes, and the
SHiRA entries' bytes beside the same entries in a SparseDiff. Needs the e5 packages (no download).
"""

from __future__ import annotations

import json

import torch
from transformers import AutoConfig, BertForSequenceClassification

from deftx.models.e5 import ensure_e5_small
from deftx.ops import topk_mask
from deftx.sft import ParamInfo, SparseDiff
from deftx.sft.peft import SHIRA_ENTRY_BYTES, SPARSE_DIFF_ENTRY_BYTES, plan_shira

K_SHARE = 0.051
CASES = (("uniform scores", None), ("per-matrix scale ~ LogNormal(0, 0.25)", 0.25))


def selection(model: torch.nn.Module, names: list[str], k: int, spread: float | None) -> SparseDiff:
    """A SparseDiff holding the top-k of random scores over ``names`` (values are irrelevant here)."""
    generator = torch.Generator().manual_seed(0)
    scores = []
    for name in names:
        score = torch.rand(model.get_parameter(name).shape, generator=generator)
        scores.append(score if spread is None else score * torch.exp(torch.randn((), generator=generator) * spread))
    chosen = topk_mask(scores, k, output="indices")
    indices = dict(zip(names, chosen, strict=True))
    return SparseDiff(indices, {n: torch.ones(i.numel()) for n, i in indices.items()},
                      {n: ParamInfo(tuple(model.get_parameter(n).shape), torch.float32) for n in names})


def main() -> None:
    model = BertForSequenceClassification(AutoConfig.from_pretrained(str(ensure_e5_small()), num_labels=3))
    names = [n for n, p in model.named_parameters() if n.startswith("bert.encoder") and p.dim() == 2]
    k = round(K_SHARE * sum(model.get_parameter(n).numel() for n in names))
    for label, spread in CASES:
        plan = plan_shira(selection(model, names, k, spread), model, check_base=False)
        print(json.dumps({
            "case": label, "k": k, "matrices with entries": len(plan.shira), "r": plan.r,
            "padding entries": plan.padding, "padding bytes": plan.padding * SHIRA_ENTRY_BYTES,
            "padding / entries": round(plan.padding / plan.entries, 3),
            "SHiRA bytes": (plan.entries + plan.padding) * SHIRA_ENTRY_BYTES,
            "SparseDiff bytes": plan.entries * SPARSE_DIFF_ENTRY_BYTES,
        }))


if __name__ == "__main__":
    main()
