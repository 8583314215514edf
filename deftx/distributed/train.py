"""LT-SFT / DeFT-X two-phase sparse fine-tuning under ``torchrun``, with DDP or FSDP2.

One code path for CPU/gloo and GPU/NCCL (the backend and device follow
``torch.cuda.is_available()``):

1. phase 1: full fine-tuning θ0 → θ1 of the eligible parameters and the head (dense AdamW;
   under FSDP2 its state is sharded like the parameters);
2. selection: scores per parameter as ``Shard(0)`` DTensors — FSDP2's own shards, or, under
   DDP, each rank's row block of the replicated tensors (a view, no communication) — then
   the sharded global top-k (:mod:`deftx.distributed.topk`). LT-SFT ranks ``|θ1 − θ0|``, computed
   inside the selection chunk by chunk (never stored);
   DeFT-X scores ``|Δ̂|`` from the sharded randomized SVD (:mod:`deftx.distributed.rsvd`).
   The selection equals the single-process selection on the same θ1 (exactly for LT-SFT;
   for DeFT-X the scores agree to ~1e-6 relative, see :mod:`deftx.distributed.rsvd`);
3. phase 3: reset to θ0 and train only the selected entries with
   :class:`ShardedMaskedAdamW` (:func:`deftx.ops.masked_adamw_step_` on each rank's local
   shard with local indices; O(K / ranks) state per rank under FSDP2);
4. save: :func:`deftx.distributed.compose.gather_sparse_diff` writes one ordinary
   SparseDiff from rank 0 (only the sparse pieces travel, plus the dense head).

This is a minimal loop (no gradient clipping, schedulers or L1 pull, which the
single-process pipeline in :mod:`deftx.train` adds on top of a ``transformers.Trainer``);
it reuses that pipeline's parameter groups and DeFT-X settings
(:mod:`deftx.train.params`, :class:`deftx.train.config.DenoiseConfig`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from deftx.distributed import comm
from deftx.distributed.compose import flat_range, gather_sparse_diff, local_tensor, reshard_fsdp
from deftx.distributed.rsvd import denoised_magnitudes_sharded
from deftx.distributed.topk import topk_mask_dtensor
from deftx.ops import masked_adamw_step_
from deftx.sft import SparseDiff
from deftx.train.config import DEFAULT_ELIGIBLE, DenoiseConfig, resolve_k
from deftx.train.params import eligible_parameter_names, parameter_groups
from deftx.train.select import Difference

Strategy = Literal["ddp", "fsdp"]
Batch = Mapping[str, torch.Tensor]


def init_distributed() -> tuple[DeviceMesh, torch.device]:
    """Join the ``torchrun`` world: NCCL on CUDA (one GPU per local rank), else gloo on CPU.

    Returns the 1-D device mesh over all ranks and this rank's device.
    """
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return init_device_mesh(device.type, (dist.get_world_size(),)), device


def wrap_model(model: nn.Module, strategy: Strategy, mesh: DeviceMesh) -> nn.Module:
    """DDP, or FSDP2 with one unit per transformer layer plus the root (parameters become Shard(0) DTensors)."""
    if strategy == "ddp":
        device = next(model.parameters()).device
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp":
        for module in model.modules():
            if isinstance(module, nn.ModuleList):
                for layer in module:
                    fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose ``named_parameters`` carry the model's own names."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@dataclass
class SFTSettings:
    """A two-phase run: K (count, or fraction of the eligible entries), phase lengths and rates.

    ``denoise`` None is LT-SFT; a :class:`DenoiseConfig` (randomized method, no residual
    add-back) is DeFT-X.
    """

    k: float
    full_steps: int = 10
    sparse_steps: int = 10
    full_lr: float = 1e-3
    sparse_lr: float = 1e-3
    weight_decay: float = 0.0
    denoise: DenoiseConfig | None = None
    eligible: tuple[str, ...] = DEFAULT_ELIGIBLE
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.denoise is not None and (self.denoise.method != "randomized" or self.denoise.add_back_residual):
            raise ValueError("sharded DeFT-X supports the randomized method without residual add-back")
        if self.full_steps < 0 or self.sparse_steps < 0:
            raise ValueError("phase lengths must be >= 0")


def snapshot(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Detached copies of the named parameters (DTensors stay DTensors: each rank copies its shard)."""
    reshard_fsdp(unwrap(model))
    params = dict(unwrap(model).named_parameters())
    with torch.no_grad():
        return {name: params[name].detach().clone() for name in names}


@torch.no_grad()
def restore_(model: nn.Module, values: Mapping[str, torch.Tensor]) -> None:
    """Copy ``values`` into the parameters in place, shard by shard (bit-exact)."""
    reshard_fsdp(unwrap(model))
    params = dict(unwrap(model).named_parameters())
    for name, value in values.items():
        local_tensor(params[name]).copy_(local_tensor(value))


def as_row_shards(tensor: torch.Tensor, mesh: DeviceMesh) -> DTensor:
    """A Shard(0) DTensor of ``tensor``: itself if sharded, else this rank's row block (no communication)."""
    if isinstance(tensor, DTensor):
        return tensor
    return distribute_tensor(tensor.detach(), mesh, [Shard(0)], src_data_rank=None)


def selection_scores(
    theta1: Mapping[str, torch.Tensor],
    theta0: Mapping[str, torch.Tensor],
    groups: Mapping[str, str],
    denoise: DenoiseConfig | None,
    mesh: DeviceMesh,
) -> dict[str, DTensor | Difference]:
    """Per parameter, what the selection ranks, as Shard(0) DTensors: DeFT-X's ``|Δ̂|`` for
    2-D matrices, otherwise the (θ1, θ0) :class:`~deftx.train.select.Difference` (LT-SFT's
    ``|θ1 − θ0|``, computed inside the sharded selection, never stored)."""
    scores = {}
    for name in theta1:
        w1, w0 = as_row_shards(theta1[name], mesh), as_row_shards(theta0[name], mesh)
        if denoise is not None and w1.dim() == 2 and groups[name] in denoise.groups:
            scores[name] = denoised_magnitudes_sharded(
                w1,
                w0,
                rank=denoise.rank,
                energy=denoise.energy,
                oversample=denoise.oversample,
                n_iter=denoise.n_iter,
                seed=denoise.seed,
            )
        else:
            scores[name] = Difference(w1, w0)
    return scores


def select_sharded(scores: Mapping[str, DTensor | Difference], k: int) -> dict[str, torch.Tensor]:
    """Global top-k over all scores: per name, the global flat indices in this rank's shard."""
    names = list(scores)
    ranked = [scores[n] for n in names]
    values = [s.theta1 if isinstance(s, Difference) else s for s in ranked]
    bases = [s.theta0 if isinstance(s, Difference) else None for s in ranked]
    return dict(zip(names, topk_mask_dtensor(values, k, output="indices", base=bases), strict=True))


def all_gather_selection(selection: Mapping[str, torch.Tensor], group: dist.ProcessGroup) -> dict[str, torch.Tensor]:
    """Every rank's sorted index blocks of every name, concatenated in rank order, on every rank.

    One all-reduce of the buffer sizes and one all-gather of ``[counts per name | indices]``
    (about k·8 bytes per rank), whatever the number of parameters.
    """
    names = list(selection)
    device = next(iter(selection.values())).device
    counts = torch.tensor([selection[n].numel() for n in names], dtype=torch.int64, device=device)
    local = torch.cat([counts, *[selection[n].to(torch.int64) for n in names]])
    sizes = comm.per_rank_values(local.numel(), group, "selection sizes", device)
    padded = local.new_full((int(sizes.max()),), -1)
    padded[: local.numel()] = local
    parts = comm.all_gather_equal(padded, group, "selection indices")
    blocks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for part in parts:
        offset = len(names)
        for name, count in zip(names, part[: len(names)].tolist(), strict=True):
            blocks[name].append(part[offset : offset + count])
            offset += count
    return {n: torch.cat(blocks[n]) for n in names}


class ShardedMaskedAdamW(torch.optim.Optimizer):
    """AdamW on selected entries only, on each rank's local shard (DTensor) or full tensor (DDP).

    Args:
        params: the parameters (DTensors or plain tensors).
        indices: per parameter, int64 sorted flat indices *into its local tensor*.
        lr, betas, eps, weight_decay: AdamW settings.
        backend: the ``deftx.ops`` backend of the step.

    State per parameter (fp32, O(local K)): master copy, moments. The gradients are the
    averaged gradients DDP / FSDP2 leave in ``.grad`` (FSDP2: the local shard of a DTensor).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        indices: Iterable[torch.Tensor],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        backend: str | None = None,
    ) -> None:
        params, indices = list(params), list(indices)
        if len(params) != len(indices):
            raise ValueError(f"ShardedMaskedAdamW: {len(params)} parameters for {len(indices)} index tensors")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self._backend = backend
        with torch.no_grad():
            for param, idx in zip(params, indices, strict=True):
                local = local_tensor(param)
                idx = idx.to(local.device, torch.int64)
                master = local.reshape(-1)[idx].float()
                self.state[param] = {
                    "step": 0,
                    "indices": idx,
                    "master": master,
                    "exp_avg": torch.zeros_like(master),
                    "exp_avg_sq": torch.zeros_like(master),
                }

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One masked AdamW step on every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            live = [p for p in group["params"] if p.grad is not None and self.state[p]["indices"].numel()]
            if not live:
                continue
            states = [self.state[p] for p in live]
            for state in states:
                state["step"] += 1
            if len({s["step"] for s in states}) != 1:
                raise RuntimeError("ShardedMaskedAdamW: parameters of one group are at different steps")
            beta1, beta2 = group["betas"]
            masked_adamw_step_(
                [local_tensor(p) for p in live],
                [local_tensor(p.grad).contiguous() for p in live],
                [s["indices"] for s in states],
                [s["master"] for s in states],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                None,
                step=states[0]["step"],
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                backend=self._backend,
            )
        return loss


def train_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch_for_step: Callable[[int], Batch], steps: int
) -> list[float]:
    """``steps`` optimizer steps on ``model(**batch).loss``; returns the local losses."""
    losses = []
    model.train()
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch_for_step(step)).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@dataclass
class SFTResult:
    """What a run produced on this rank."""

    selection: dict[str, torch.Tensor]
    """Per eligible name: the global flat indices of the selection in this rank's shard
    (under DDP: all of them)."""
    diff: SparseDiff | None
    """The SparseDiff (rank 0 only)."""
    k: int
    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    communication: dict[str, comm.CommLedger] = field(default_factory=dict)
    theta0: dict[str, torch.Tensor] = field(default_factory=dict)
    theta1: dict[str, torch.Tensor] = field(default_factory=dict)


def _local_indices(model: nn.Module, selection: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    params = dict(unwrap(model).named_parameters())
    return [idx - flat_range(params[name])[0] for name, idx in selection.items()]


def freeze_for_sft(model: nn.Module, eligible_groups: Iterable[str]) -> tuple[list[str], list[str]]:
    """Make only the eligible parameters and the head trainable (before wrapping); returns both name lists."""
    groups = parameter_groups(model)
    eligible = eligible_parameter_names(model, eligible_groups)
    head = [n for n, g in groups.items() if g == "head"]
    for name, param in model.named_parameters():
        param.requires_grad_(name in eligible or name in head)
    return eligible, head


def run_sparse_finetuning(
    model: nn.Module,
    strategy: Strategy,
    settings: SFTSettings,
    batch_for_step: Callable[[int], Batch],
    mesh: DeviceMesh,
    *,
    base_model: str | None = None,
    method: str | None = None,
) -> tuple[nn.Module, SFTResult]:
    """Phase 1, selection, phase 3 and the SparseDiff of ``model`` wrapped with DDP or FSDP2.

    ``model``: the plain model on this rank's device (same initial weights on every rank).
    ``batch_for_step(step)`` returns this rank's micro-batch (keyword arguments of the
    model, with labels). Collective: every rank calls it. The head (parameters outside the
    transformer body) is trained densely and shipped as dense tensors; LayerNorms and other
    non-eligible parameters stay frozen.

    Returns:
        The wrapped model (at θ0 + φ) and this rank's :class:`SFTResult`.
    """
    groups = parameter_groups(model)
    eligible, head = freeze_for_sft(model, settings.eligible)
    model = wrap_model(model, strategy, mesh)
    params = dict(unwrap(model).named_parameters())
    k = resolve_k(settings.k, sum(params[n].numel() for n in eligible))
    result = SFTResult({}, None, k)
    theta0 = snapshot(model, [*eligible, *head])
    start = time.perf_counter()
    full_optimizer = torch.optim.AdamW(
        [params[n] for n in [*eligible, *head]], lr=settings.full_lr, weight_decay=settings.weight_decay
    )
    result.losses["full"] = train_steps(model, full_optimizer, batch_for_step, settings.full_steps)
    del full_optimizer
    theta1 = snapshot(model, [*eligible, *head])
    result.seconds["full"] = time.perf_counter() - start

    start = time.perf_counter()
    with comm.count_communication() as ledger:
        scores = selection_scores(
            {n: theta1[n] for n in eligible}, {n: theta0[n] for n in eligible}, groups, settings.denoise, mesh
        )
        selection = select_sharded(scores, k)
        del scores
        if not isinstance(params[eligible[0]], DTensor):
            selection = all_gather_selection(selection, mesh.get_group())
    result.selection, result.communication["select"] = selection, ledger
    result.seconds["select"] = time.perf_counter() - start

    start = time.perf_counter()
    restore_(model, theta0)
    sparse_optimizer = ShardedMaskedAdamW(
        [params[n] for n in [*eligible, *head]],
        [
            *_local_indices(model, selection),
            *[torch.arange(local_tensor(params[n]).numel(), device=local_tensor(params[n]).device) for n in head],
        ],
        lr=settings.sparse_lr,
        weight_decay=settings.weight_decay,
        backend=settings.backend,
    )
    result.losses["sparse"] = train_steps(model, sparse_optimizer, batch_for_step, settings.sparse_steps)
    result.seconds["sparse"] = time.perf_counter() - start

    tuned = snapshot(model, [*eligible, *head])
    with comm.count_communication() as ledger:
        result.diff = gather_sparse_diff(
            theta0,
            tuned,
            selection,
            {n: tuned[n] for n in head},
            base_model=base_model,
            method=method or ("deft-x" if settings.denoise else "lt-sft"),
            k=k,
            settings={
                "full_steps": settings.full_steps,
                "sparse_steps": settings.sparse_steps,
                "world_size": mesh.size(),
            },
        )
    result.communication["save"] = ledger
    result.theta0, result.theta1 = theta0, theta1
    return model, result


def full_state(values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full tensors of (possibly sharded) values — all-gathers every DTensor; for checks on small models only."""
    return {n: v.full_tensor() if isinstance(v, DTensor) else v for n, v in values.items()}


def full_selection(result: SFTResult, group: dist.ProcessGroup) -> dict[str, torch.Tensor]:
    """The selection's global indices per name on every rank (for checks against a single process)."""
    sharded = [n for n in result.selection if isinstance(result.theta0[n], DTensor)]
    gathered = all_gather_selection({n: result.selection[n] for n in sharded}, group) if sharded else {}
    return {n: gathered.get(n, idx) for n, idx in result.selection.items()}
