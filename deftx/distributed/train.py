"""LT-SFT / DeFT-X two-phase sparse fine-tuning under ``torchrun``, with DDP or FSDP2.

The phases are the single-process path's (:mod:`deftx.train`); this module is the adapter
that runs them on sharded parameters, with one code path for CPU/gloo and GPU/NCCL (the
backend and device follow ``torch.cuda.is_available()``):

* parameters: DDP replicas, or FSDP2 ``Shard(0)`` DTensors; snapshots and resets are
  :func:`deftx.train.params.snapshot` / :func:`~deftx.train.params.load_values_` on each
  rank's shard (after putting FSDP2's units back in their sharded state);
* phase 1 (:mod:`deftx.train.finetune`): dense AdamW (state sharded like the parameters
  under FSDP2) with the :class:`~deftx.train.finetune.L1Pull` toward θ0;
* selection (:mod:`deftx.train.denoise`, :mod:`deftx.train.select`): the same scores on
  ``Shard(0)`` DTensors — FSDP2's own shards, or, under DDP, each rank's row block of the
  replicas (a view, no communication) — with DeFT-X's ``|Δ̂|`` from the sharded randomized
  SVD (:func:`deftx.distributed.rsvd.matrix_scores_sharded`), ranked by the sharded global
  top-k that :func:`deftx.ops.topk_mask` dispatches DTensors to. The selection equals the
  single-process selection on the same θ1 (exactly for LT-SFT; for DeFT-X the scores agree
  to ~1e-6 relative, see :mod:`deftx.distributed.rsvd`); DDP's ranks then all-gather it;
* phase 3 (:mod:`deftx.train.retrain`): reset to θ0, :class:`~deftx.train.retrain.MaskedAdamW`
  on each rank's local shard with local indices (O(K / ranks) state per rank under FSDP2),
  the unselected gradient entries zeroed by :class:`~deftx.train.retrain.SelectedGradients`;
* save: :func:`deftx.distributed.compose.gather_sparse_diff` writes one ordinary
  SparseDiff from rank 0 (only the sparse pieces travel, plus the dense head).

Each phase's steps are taken as a ``transformers.Trainer`` takes them (:func:`train_phase`):
the phase's gradient adjustment (L1 pull / selected entries) after backward, clipping to
``max_grad_norm``, the step, then transformers' learning-rate schedule; the batches come from
the caller's ``batch_for_step``. FSDP2's shards are not autograd leaves that accumulate their
own gradients, so the adjustments are applied explicitly rather than from gradient hooks.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from transformers import get_scheduler

from deftx.distributed import comm
from deftx.distributed.compose import flat_range, gather_sparse_diff, reshard_fsdp
from deftx.distributed.rsvd import matrix_scores_sharded
from deftx.sft import SparseDiff
from deftx.train import params
from deftx.train.config import DEFAULT_ELIGIBLE, DenoiseConfig, PhaseConfig, resolve_k, to_plain
from deftx.train.denoise import selection_scores as denoise_scores
from deftx.train.finetune import L1Pull, l1_gradient_scale
from deftx.train.retrain import MaskedAdamW, SelectedGradients, by_decay_and_pull, by_weight_decay, full_indices
from deftx.train.select import Score, select_top_k

Strategy = Literal["ddp", "fsdp"]
Batch = Mapping[str, torch.Tensor]


def init_distributed() -> tuple[DeviceMesh, torch.device]:
    """Join the ``torchrun`` world: NCCL on CUDA (one GPU per local rank), else gloo on CPU.

    Returns the 1-D device mesh over all ranks and this rank's device.

    Raises:
        RuntimeError: no process group and no ``torchrun`` environment (``RANK``, ``WORLD_SIZE``).
    """
    if not dist.is_initialized() and not {"RANK", "WORLD_SIZE"} <= os.environ.keys():
        raise RuntimeError(
            "not started by torchrun (RANK and WORLD_SIZE are unset): run it as "
            "`torchrun --nproc-per-node N <script> ...` (N = 1 for a single process)"
        )
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return init_device_mesh(device.type, (dist.get_world_size(),)), device


def exit_distributed(code: int) -> NoReturn:
    """End a ``torchrun`` rank with exit status ``code``: leave the process group, flush, ``os._exit``.

    A rank that simply returns can abort (SIGABRT, exit status -6) after its work has
    succeeded: gloo's worker threads (``pt_gloo_runloop``) outlive ``destroy_process_group()``,
    and one may drop the last reference to a finished collective after the main thread has
    begun Python's interpreter teardown. The tensors it releases own Python objects, so the
    worker must take the GIL; a thread that asks for it during finalization is ended inside a
    ``noexcept`` destructor, and the process calls ``std::terminate``. ``os._exit`` skips the
    teardown (as ``multiprocessing`` ends its forked children). Logging and the standard
    streams are flushed first; ``atexit`` handlers do not run. Without a process group this
    is ``sys.exit(code)``.
    """
    if not dist.is_initialized():
        sys.exit(code)
    dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def wrap_model(model: nn.Module, strategy: Strategy, mesh: DeviceMesh) -> nn.Module:
    """DDP over the mesh's ranks, or FSDP2 with one unit per transformer layer plus the root (parameters
    become Shard(0) DTensors).

    Raises:
        ValueError: another strategy, or FSDP2 on a mesh out of rank order
            (:func:`~deftx.distributed.comm.check_fsdp_mesh`).
    """
    if strategy == "ddp":
        device = next(model.parameters()).device
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                   process_group=mesh.get_group())
    if strategy == "fsdp":
        comm.check_fsdp_mesh(mesh)
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
    """A two-phase run: K (count, or fraction of the eligible entries), the phases, and what a
    ``TrainingArguments`` holds for the single-process path (defaults: transformers').

    ``full`` and ``sparse`` are the single-process path's :class:`~deftx.train.config.PhaseConfig`
    (length in steps, learning rate, L1 pull toward θ0). Gradients are clipped to
    ``max_grad_norm`` (None: no clipping) and the learning rate follows
    ``transformers.get_scheduler(lr_scheduler_type)`` with ``warmup_steps``, per phase, as in a
    ``transformers.Trainer``. ``weight_decay`` applies to the trained parameters a Trainer decays:
    all but biases and norms (:func:`deftx.train.params.decay_parameter_names`). ``denoise`` None
    is LT-SFT; a :class:`DenoiseConfig` (randomized method, no residual add-back) is DeFT-X.
    """

    k: float
    full: PhaseConfig
    sparse: PhaseConfig
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    denoise: DenoiseConfig | None = None
    eligible: tuple[str, ...] = DEFAULT_ELIGIBLE
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.denoise is not None and (self.denoise.method != "randomized" or self.denoise.add_back_residual):
            raise ValueError("sharded DeFT-X supports the randomized method without residual add-back")
        if self.full.steps is None or self.sparse.steps is None:
            raise ValueError("a sharded run's phases are counted in steps (the batches come from batch_for_step)")


def snapshot(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """:func:`deftx.train.params.snapshot` of the wrapped model (DTensors stay DTensors: each rank copies its shard)."""
    reshard_fsdp(unwrap(model))
    return params.snapshot(unwrap(model), names)


def restore_(model: nn.Module, values: Mapping[str, torch.Tensor]) -> None:
    """:func:`deftx.train.params.load_values_` on the sharded parameters, shard by shard (bit-exact)."""
    reshard_fsdp(unwrap(model))
    params.load_values_(unwrap(model), values)


def as_row_shards(tensor: torch.Tensor, mesh: DeviceMesh) -> DTensor:
    """A Shard(0) DTensor of ``tensor``: itself if sharded, else this rank's row block (no communication)."""
    if isinstance(tensor, DTensor):
        return tensor
    return distribute_tensor(tensor.detach(), mesh, [Shard(0)], src_data_rank=None)


def refuse_diverged(theta1: Mapping[str, torch.Tensor], group: dist.ProcessGroup) -> None:
    """Raise on every rank when any rank's θ1 (its FSDP2 shards, or DDP's replicas) holds a NaN or Inf,
    as :class:`~deftx.train.sparse_finetuner.SparseFineTuner` refuses a diverged phase 1: the
    selection would rank an Inf difference first. One all-reduce of a count per parameter.

    Raises:
        ValueError: naming the first parameter, in ``theta1``'s order, that holds one on some rank.
    """
    names = list(theta1)
    local = [params.local_tensor(theta1[name]) for name in names]
    device = local[0].device if local else torch.device("cpu")
    counts = torch.tensor([int((~torch.isfinite(t)).sum()) for t in local], dtype=torch.int64, device=device)
    counts = comm.all_reduce_sum(counts, group, "phase 1 NaN/Inf check")
    for name, count in zip(names, counts.tolist(), strict=True):
        if count:
            raise ValueError(f"phase 1 diverged: parameter {name!r} holds NaN/Inf value(s) after full fine-tuning "
                             "(lower the learning rate)")


def selection_scores(
    theta1: Mapping[str, torch.Tensor],
    theta0: Mapping[str, torch.Tensor],
    groups: Mapping[str, str],
    denoise: DenoiseConfig | None,
    mesh: DeviceMesh,
) -> dict[str, Score]:
    """:func:`deftx.train.denoise.selection_scores` on row shards: DeFT-X's ``|Δ̂|`` from the sharded
    randomized SVD, every other parameter's (θ1, θ0) :class:`~deftx.train.select.Difference`, as
    Shard(0) DTensors — FSDP2's own shards, or each rank's row block of DDP's replicas."""
    scores, _ = denoise_scores(
        {n: as_row_shards(t, mesh) for n, t in theta1.items()},
        {n: as_row_shards(t, mesh) for n, t in theta0.items()},
        groups, denoise, progress=False, score_matrices=matrix_scores_sharded,
    )
    return scores


def all_gather_selection(selection: Mapping[str, torch.Tensor], group: dist.ProcessGroup,
                         order: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Every rank's sorted index blocks of every name, concatenated in row order, on every rank.

    ``order``: the group ranks holding the row blocks, first rows first (:func:`~deftx.distributed.comm.mesh_order`
    of the mesh the blocks were cut by; default the group's rank order).

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
    for part in (parts[r] for r in (order if order is not None else range(len(parts)))):
        offset = len(names)
        for name, count in zip(names, part[: len(names)].tolist(), strict=True):
            blocks[name].append(part[offset : offset + count])
            offset += count
    return {n: torch.cat(blocks[n]) for n in names}


def train_phase(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_for_step: Callable[[int], Batch],
    settings: SFTSettings,
    steps: int,
    adjust_gradients: Callable[[], None],
) -> list[float]:
    """``steps`` optimizer steps on ``model(**batch).loss`` as a ``transformers.Trainer`` takes them:
    backward, ``adjust_gradients`` (the phase's L1 pull or selected-entries mask), clipping to
    ``settings.max_grad_norm``, the step, the scheduler's step. Returns the local losses."""
    scheduler = get_scheduler(settings.lr_scheduler_type, optimizer, num_warmup_steps=settings.warmup_steps,
                              num_training_steps=steps)
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    losses = []
    model.train()
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch_for_step(step)).loss
        loss.backward()
        adjust_gradients()
        if settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trained, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    return losses


@dataclass
class SFTResult:
    """What a run produced on this rank."""

    selection: dict[str, torch.Tensor]
    """Per eligible name: the global flat indices of the selection in this rank's shard
    (under DDP: all of them)."""
    diff: SparseDiff | None
    """The SparseDiff (on the mesh's group rank 0 only)."""
    k: int
    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    communication: dict[str, comm.CommLedger] = field(default_factory=dict)
    theta0: dict[str, torch.Tensor] = field(default_factory=dict)
    theta1: dict[str, torch.Tensor] = field(default_factory=dict)


def local_indices(
    model: nn.Module, selection: Mapping[str, torch.Tensor], dense: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Per name, the selected flat indices into this rank's tensor (every entry of a ``dense`` one)."""
    named = params.named_parameter_map(unwrap(model))
    local = {name: idx - flat_range(named[name])[0] for name, idx in selection.items()}
    return {**local, **{name: full_indices(params.local_tensor(named[name])) for name in dense}}


def freeze_for_sft(model: nn.Module, eligible_groups: Iterable[str]) -> tuple[list[str], list[str]]:
    """Make only the eligible parameters and the head trainable (before wrapping); returns both name lists."""
    groups = params.parameter_groups(model)
    eligible = params.eligible_parameter_names(model, eligible_groups)
    head = [n for n, g in groups.items() if g == "head"]
    for name, param in params.named_parameter_map(model).items():
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
    model, with labels). Collective: every rank of ``mesh`` calls it. The head (parameters outside the
    transformer body) is trained densely and shipped as dense tensors; LayerNorms and other
    non-eligible parameters stay frozen. The phases are the single-process path's
    (:mod:`deftx.train.finetune`, :mod:`deftx.train.select`, :mod:`deftx.train.retrain`) on
    this rank's shards.

    Returns:
        The wrapped model (at θ0 + φ) and this rank's :class:`SFTResult`.
    """
    groups = params.parameter_groups(model)
    eligible, head = freeze_for_sft(model, settings.eligible)
    trained = [*eligible, *head]
    decayed = params.decay_parameter_names(model)
    full_l1, sparse_l1 = (l1_gradient_scale(phase.l1, model) for phase in (settings.full, settings.sparse))
    model = wrap_model(model, strategy, mesh)
    named = params.named_parameter_map(unwrap(model))
    k = resolve_k(settings.k, sum(named[n].numel() for n in eligible))
    result = SFTResult({}, None, k)
    theta0 = snapshot(model, trained)

    start = time.perf_counter()
    decay_groups = by_weight_decay(trained, decayed, settings.weight_decay)
    optimizer = torch.optim.AdamW([{"params": [named[n] for n in names], "weight_decay": decay}
                                   for names, decay in decay_groups], lr=settings.full.learning_rate)
    pull = L1Pull(unwrap(model), {n: theta0[n] for n in eligible}, full_l1)
    result.losses["full"] = train_phase(model, optimizer, batch_for_step, settings, settings.full.steps, pull.apply_)
    del optimizer
    theta1 = snapshot(model, trained)
    refuse_diverged(theta1, mesh.get_group())
    result.seconds["full"] = time.perf_counter() - start

    start = time.perf_counter()
    with comm.count_communication() as ledger:
        scores = selection_scores(
            {n: theta1[n] for n in eligible}, {n: theta0[n] for n in eligible}, groups, settings.denoise, mesh
        )
        selection = select_top_k(scores, k)
        del scores
        if not isinstance(named[eligible[0]], DTensor):
            selection = all_gather_selection(selection, mesh.get_group(), comm.mesh_order(mesh.mesh, mesh.get_group()))
    result.selection, result.communication["select"] = selection, ledger
    result.seconds["select"] = time.perf_counter() - start

    start = time.perf_counter()
    restore_(model, theta0)
    indices = local_indices(model, selection, head)
    optimizer = MaskedAdamW([{"params": [named[n] for n in names], "indices": [indices[n] for n in names],
                              "weight_decay": decay, "l1": l1}
                             for names, decay, l1 in by_decay_and_pull(trained, decayed, settings.weight_decay, head,
                                                                       sparse_l1)],
                            lr=settings.sparse.learning_rate, l1=sparse_l1, backend=settings.backend)
    keep = SelectedGradients(unwrap(model), {n: indices[n] for n in eligible})
    result.losses["sparse"] = train_phase(model, optimizer, batch_for_step, settings, settings.sparse.steps,
                                          keep.apply_)
    result.seconds["sparse"] = time.perf_counter() - start

    tuned = snapshot(model, trained)
    with comm.count_communication() as ledger:
        result.diff = gather_sparse_diff(
            theta0,
            tuned,
            selection,
            {n: tuned[n] for n in head},
            base_model=base_model,
            method=method or ("deft-x" if settings.denoise else "lt-sft"),
            group=mesh.get_group(),
            k=k,
            settings={"full": to_plain(settings.full), "sparse": to_plain(settings.sparse),
                      "world_size": mesh.size()},
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
    if not sharded:
        return dict(result.selection)
    order = comm.mesh_order(result.theta0[sharded[0]].device_mesh.mesh, group)
    gathered = all_gather_selection({n: result.selection[n] for n in sharded}, group, order)
    return {n: gathered.get(n, idx) for n, idx in result.selection.items()}
