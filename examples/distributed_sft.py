"""Two-phase sparse fine-tuning (LT-SFT or DeFT-X) of a tiny BERT under ``torchrun``, with DDP or FSDP2.

    torchrun --nproc_per_node 2 examples/distributed_sft.py --strategy fsdp --method deft-x \\
        --out runs/distributed_sft/deft-x.safetensors --verify

CPU ranks talk over gloo, GPU ranks over NCCL (one GPU per rank), with the same code.
The task is synthetic (label = first token id mod 3) so the run needs no data or
downloads; :func:`deftx.distributed.train.run_sparse_finetuning` takes any
``transformers`` model and any per-rank batch function, and trains with the single-process
path's phases (L1 pull, clipping, transformers' learning-rate schedule). ``--verify`` gathers θ0, θ1
and the result (fine for a tiny model, never for a large one) and checks the sharded
selection against the single-process one and the saved file against the trained model.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.distributed as dist
from transformers import BertConfig, BertForSequenceClassification

from deftx.distributed.compose import reshard_fsdp
from deftx.distributed.train import (
    SFTSettings,
    exit_distributed,
    full_selection,
    full_state,
    init_distributed,
    run_sparse_finetuning,
    unwrap,
)
from deftx.sft import SparseDiff, apply_diffs
from deftx.train.config import DenoiseConfig, PhaseConfig
from deftx.train.denoise import selection_scores
from deftx.train.params import parameter_groups
from deftx.train.select import select_top_k

VOCAB, LENGTH, LABELS = 512, 16, 3


def tiny_bert(seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=LENGTH,
        num_labels=LABELS,
    )
    return BertForSequenceClassification(config)


def synthetic_batch(seed: int, size: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (size, LENGTH), generator=gen)
    return {"input_ids": ids, "labels": ids[:, 0] % LABELS}


def batches_for_rank(rank: int, world: int, batch_size: int, device: torch.device):
    """Step -> this rank's slice of the global batch (the same global batches on every rank)."""

    def batch(step: int) -> dict[str, torch.Tensor]:
        full = synthetic_batch(10_000 + step, batch_size * world)
        return {key: value[rank::world].to(device) for key, value in full.items()}

    return batch


@torch.no_grad()
def accuracy(model: torch.nn.Module, rank: int, world: int, device: torch.device) -> float:
    """Held-out accuracy over all ranks (each rank scores its slice; one all_reduce)."""
    model.eval()
    held_out = synthetic_batch(7, 256)
    logits = model(input_ids=held_out["input_ids"][rank::world].to(device)).logits
    reshard_fsdp(model)
    counts = torch.tensor(
        [(logits.argmax(-1).cpu() == held_out["labels"][rank::world]).sum(), logits.shape[0]],
        dtype=torch.float64,
        device=device,
    )
    dist.all_reduce(counts)
    return float(counts[0] / counts[1])


def loss_ends(losses: list[float], window: int = 10) -> tuple[int, float, float]:
    """``(w, first, last)``: the mean loss of a phase's first and last ``w`` steps, ``w`` being ``window``
    or half the phase when it is shorter (separate windows; one step where the phase has one)."""
    steps = max(1, min(window, len(losses) // 2))
    head, tail = losses[:steps], losses[-steps:]
    return steps, sum(head) / len(head), sum(tail) / len(tail)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), default="fsdp")
    parser.add_argument("--method", choices=("lt-sft", "deft-x"), default="deft-x")
    parser.add_argument("--k", type=float, default=0.2, help="entries to select: a count, or a fraction (< 1)")
    parser.add_argument("--full-steps", type=int, default=60)
    parser.add_argument("--sparse-steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--l1", type=float, default=0.0, help="L1 pull toward θ0 in both phases (see deftx.train)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: none)")
    parser.add_argument("--lr-scheduler-type", default="linear", help="transformers' learning-rate schedule")
    parser.add_argument("--batch-size", type=int, default=16, help="per rank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/distributed_sft/sft.safetensors")
    parser.add_argument("--verify", action="store_true", help="check against one process (gathers the tiny model)")
    return parser.parse_args(argv)


def verify(args, model, result, device, rank, world, mesh, denoise) -> None:
    """Single-process checks on gathered states (collective; prints on rank 0)."""
    selection = full_selection(result, mesh.get_group())
    theta0, theta1 = full_state(result.theta0), full_state(result.theta1)
    tuned = full_state({n: p.detach() for n, p in unwrap(model).named_parameters() if n in result.theta0})
    if rank != 0:
        return
    names = list(selection)
    scores, _ = selection_scores(
        {n: theta1[n] for n in names},
        {n: theta0[n] for n in names},
        parameter_groups(tiny_bert(args.seed)),
        denoise,
        progress=False,
    )
    expected = select_top_k(scores, result.k)
    shared = sum(int(torch.isin(selection[n].cpu(), expected[n].cpu()).sum()) for n in names)
    identical = all(torch.equal(selection[n].cpu(), expected[n].cpu()) for n in names)
    print(f"selection vs single process on the same θ1: {shared}/{result.k} shared, identical: {identical}")
    loaded = SparseDiff.load(args.out)
    fresh = tiny_bert(args.seed)
    apply_diffs(fresh, [loaded], check_base=False)
    fresh_params = dict(fresh.named_parameters())
    worst = max(float((fresh_params[n].detach() - tuned[n].cpu()).abs().max()) for n in tuned)
    print(f"θ0 + saved SFT (one process) vs the trained sharded model: max |difference| = {worst:.3g}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    mesh, device = init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    model = tiny_bert(args.seed).to(device)
    before = accuracy(model, rank, world, device)
    denoise = DenoiseConfig(energy=0.9) if args.method == "deft-x" else None
    settings = SFTSettings(
        k=args.k,
        full=PhaseConfig(steps=args.full_steps, learning_rate=args.lr, l1=args.l1),
        sparse=PhaseConfig(steps=args.sparse_steps, learning_rate=args.lr, l1=args.l1),
        max_grad_norm=args.max_grad_norm or None,
        lr_scheduler_type=args.lr_scheduler_type,
        denoise=denoise,
    )
    model, result = run_sparse_finetuning(
        model,
        args.strategy,
        settings,
        batches_for_rank(rank, world, args.batch_size, device),
        mesh,
        base_model="deftx-example/tiny-bert",
    )
    after = accuracy(model, rank, world, device)
    if rank == 0:
        result.diff.save(args.out)
        full, sparse = (loss_ends(result.losses[phase]) for phase in ("full", "sparse"))
        print(f"{world} ranks, {args.strategy}, {args.method}, backend {dist.get_backend()}, K = {result.k}")
        print(
            f"loss, mean of the first / last {full[0]} steps: phase 1 {full[1]:.3f} -> {full[2]:.3f} "
            f"({result.seconds['full']:.1f} s), phase 3 (first / last {sparse[0]}) {sparse[1]:.3f} -> "
            f"{sparse[2]:.3f} ({result.seconds['sparse']:.1f} s)"
        )
        print(f"selection {result.seconds['select']:.2f} s, communication per rank:")
        print(result.communication["select"].report())
        print("save (gather of the sparse pieces to rank 0), communication per rank:")
        print(result.communication["save"].report())
        print(f"held-out accuracy: θ0 {before:.3f}, θ0 + SFT {after:.3f}")
        print(f"saved {args.out}: {result.diff}")
    dist.barrier()
    if args.verify:
        verify(args, model, result, device, rank, world, mesh, denoise)
    return 0


if __name__ == "__main__":
    exit_distributed(main(sys.argv[1:]))
