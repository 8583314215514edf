"""Phase 3 of a sparse fine-tuning: reset to θ0 and train only the K selected entries.

The backward pass stays dense (autograd computes the full gradient of each parameter
that has selected entries), but nothing else is:

* :class:`MaskedAdamW` keeps fp32 master values and Adam moments for the selected
  entries only (O(K) state), and updates them with :func:`deftx.ops.masked_step.run_masked_adamw_step_`
  (the step without per-call argument checks: everything is checked once when it is built),
  which never reads or writes an entry outside the selection — so weight decay or the
  L1 pull cannot move a frozen entry, and untouched entries stay bit-identical to θ0.
  Dense parameters (the task head) are the special case "every entry selected".
* :class:`SelectedGradients` zeroes the non-selected gradient entries right after each
  backward, so gradient clipping and the logged gradient norm see the gradient of the
  sparse model, as in the reference (which multiplied gradients by a dense mask).

Both work on the entries a rank holds: a DTensor parameter (FSDP2's ``Shard(0)``) is
selected by flat indices into its local shard, and its state is O(local K).

The L1 pull of this phase is applied inside the step (after clipping; its per-entry
magnitude ``l1 / N`` is orders of magnitude below any clipping threshold).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from deftx.models.parameters import named_parameter_map
from deftx.ops.dispatch import common_device
from deftx.ops.library import is_traced
from deftx.ops.masked_step import PreparedMaskedStep, plan_masked_step, run_masked_adamw_step_
from deftx.ops.settings import AdamWSettings, MaskedStepTensors
from deftx.ops.validation import check_float_dtype, check_indices, move_indices
from deftx.train.config import PhaseConfig
from deftx.train.finetune import GradientAdjustment, l1_gradient_scale, phase_arguments
from deftx.train.params import local_tensor

_STATE_KEYS = ("indices", "master", "exp_avg", "exp_avg_sq", "base")


def full_indices(param: torch.Tensor) -> torch.Tensor:
    """Every flat index of ``param`` (a dense parameter as a full selection)."""
    return torch.arange(param.numel(), dtype=torch.int64, device=param.device)


def _step_tensors(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict[str, Any]],
                  l1: bool) -> MaskedStepTensors:
    """The step's tensors: ``params`` and ``grads`` with the optimizer state of each (bases
    only with an L1 pull)."""
    return MaskedStepTensors(params, grads, [s["indices"] for s in states], [s["master"] for s in states],
                             [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                             [s["base"] for s in states] if l1 else None)


def by_steps_taken(params: Sequence[torch.Tensor], state: Mapping[torch.Tensor, Mapping[str, Any]]
                   ) -> list[tuple[int, list[torch.Tensor]]]:
    """``params`` split by the steps each has taken (``state[p]["step"]``, a host int), fewest
    first, in their order within each part: one part while every parameter has had a gradient
    at every step."""
    parts: dict[int, list[torch.Tensor]] = {}
    for param in params:
        parts.setdefault(state[param]["step"], []).append(param)
    return sorted(parts.items(), key=lambda part: part[0])


class MaskedAdamW(torch.optim.Optimizer):
    """AdamW on selected entries only, with O(K) fp32 state.

    Args:
        params: parameter groups; each group dict holds ``"params"`` and ``"indices"`` (one
            int64 sorted unique flat-index tensor per parameter, into its local shard for a
            DTensor; use :func:`full_indices` for a dense parameter), and optionally
            ``"weight_decay"``.
        lr, betas, eps, weight_decay: AdamW settings, with ``torch.optim.AdamW``'s meaning and
            defaults (``weight_decay=1e-2``, decoupled).
        l1: per-entry L1 gradient magnitude toward the values the entries had when the
            optimizer was built (θ0 in phase 3); 0 disables it.
        backend: the ``deftx.ops`` backend for the step (None: ``$DEFTX_BACKEND`` / auto).

    The state (``indices``, ``master``, ``exp_avg``, ``exp_avg_sq``, ``base``, ``step``) is
    created eagerly from the parameters' current values, for a group added later
    (:meth:`add_param_group`, same keys) when it is added. ``step`` is each parameter's own count
    of the steps it had a gradient in, as in ``torch.optim.AdamW``; a group whose parameters
    have different counts steps them in one call per count. ``state_dict`` /
    ``load_state_dict`` round-trip it without dtype casts (PyTorch's default loader casts
    floating state to the parameter dtype, which would truncate fp32 masters of bf16
    parameters), so a resumed run continues bit for bit.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        l1: float = 0.0,
        backend: str | None = None,
    ) -> None:
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay), ("l1", l1)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"MaskedAdamW: {name} must be finite and >= 0, got {value}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"MaskedAdamW: betas must be in [0, 1), got {betas}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "l1": l1}
        self._backend = backend
        self._sharded = False
        self._prepared: dict[tuple[int, int], tuple[tuple[Any, ...], PreparedMaskedStep]] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (``"params"``, ``"indices"`` and optional settings, as in the constructor) and
        create its state from the parameters' current values.

        Raises:
            ValueError: no ``"indices"``, or not one index tensor per parameter; indices that are
                not 1-D int64, sorted, unique (IndexError: out of range); a non-contiguous parameter.
            TypeError: a parameter that is not fp32 / bf16 / fp16.
        """
        group = dict(param_group)
        params = [group["params"]] if isinstance(group["params"], torch.Tensor) else list(group["params"])
        indices = list(group.pop("indices", ()))
        if len(indices) != len(params):
            raise ValueError("MaskedAdamW: every group needs one index tensor per parameter (\"indices\": int64 "
                             "flat indices; full_indices(p) selects every entry of p)")
        first = sum(len(g["params"]) for g in self.param_groups)
        for t, (param, idx) in enumerate(zip(params, indices, strict=True), start=first):
            check_float_dtype(param, f"MaskedAdamW: parameter {t}")
            if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64 or idx.dim() != 1:
                shown = f"{idx.dtype} {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__
                raise ValueError(f"MaskedAdamW: indices must be 1-D int64 tensors, got {shown} for parameter {t}")
            if not local_tensor(param).is_contiguous():
                raise ValueError("MaskedAdamW: parameters must be contiguous")
        known = [p for g in self.param_groups for p in g["params"]]
        common_device([local_tensor(param) for param in [*known, *params]], "MaskedAdamW")
        selections = [move_indices(idx, param.device) for param, idx in zip(params, indices, strict=True)]
        self._check_selections(params, selections, first)
        super().add_param_group({**group, "params": params})
        self._sharded = self._sharded or any(isinstance(param, DTensor) for param in params)
        for param, selection in zip(params, selections, strict=True):
            self._init_state(param, selection)

    @staticmethod
    def _check_selections(params: Sequence[torch.Tensor], selections: Sequence[torch.Tensor], first: int = 0) -> None:
        """Check every selection here, once (one host read), so that no step reads anything back;
        ``first`` numbers the parameters in messages."""
        sizes = [local_tensor(p).numel() for p in params]
        check_indices(selections, sizes, lambda i: f"MaskedAdamW: indices of parameter {first + i}")

    @torch.no_grad()
    def _init_state(self, param: torch.Tensor, indices: torch.Tensor) -> None:
        master = local_tensor(param).reshape(-1)[indices].float()
        self.state[param] = {
            "step": 0,
            "indices": indices,
            "master": master,
            "exp_avg": torch.zeros_like(master),
            "exp_avg_sq": torch.zeros_like(master),
            "base": master.clone(),
        }

    def selected_entries(self) -> int:
        """Total number of entries the optimizer updates."""
        return sum(int(s["indices"].numel()) for s in self.state.values())

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One AdamW step on the selected entries of every parameter that has a gradient (and selected
        entries on this rank)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for number, group in enumerate(self.param_groups):
            live = [p for p in group["params"] if p.grad is not None and self.state[p]["indices"].numel()]
            for part, (taken, params) in enumerate(by_steps_taken(live, self.state)):
                self._step_part((number, part), group, params, taken + 1)
        return loss

    def _step_part(self, key: tuple[int, int], group: dict[str, Any], live: list[torch.Tensor], step: int) -> None:
        """Step ``live`` (parameters of ``group`` with gradients, each about to take its ``step``-th
        step) in one masked AdamW step; ``key`` names the part for the planned-step cache."""
        states = [self.state[p] for p in live]
        for state in states:
            state["step"] = step
        beta1, beta2 = group["betas"]
        settings = AdamWSettings(step, group["lr"], beta1, beta2, group["eps"], group["weight_decay"], group["l1"])
        if self._sharded or is_traced(()):
            tensors = _step_tensors([local_tensor(p) for p in live], [local_tensor(p.grad) for p in live], states,
                                    bool(group["l1"]))
            run_masked_adamw_step_(tensors, settings, backend=self._backend)
        else:
            self._prepared_step(key, live, states, bool(group["l1"])).step([p.grad for p in live], settings)

    def _prepared_step(self, part: tuple[int, int], live: list[torch.Tensor], states: list[dict[str, Any]],
                       l1: bool) -> PreparedMaskedStep:
        """The step of ``part`` (group number, part number) planned over its parameters (planned
        again when that set changes, or after :meth:`load_state_dict` replaced the state); nothing
        is checked again: the optimizer checked its tensors when it was built (or loaded)."""
        key = (*map(id, live), l1)
        known = self._prepared.get(part)
        if known is None or known[0] != key:
            planned = plan_masked_step(_step_tensors([p.detach() for p in live], [], states, l1),
                                       backend=self._backend)
            known = self._prepared[part] = (key, planned)
        return known[1]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` exactly (no dtype casts); indices must match."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(saved_groups, self.param_groups, strict=True)
        ):
            raise ValueError("MaskedAdamW.load_state_dict: parameter groups do not match")
        saved_state = state_dict["state"]
        for saved_group, group in zip(saved_groups, self.param_groups, strict=True):
            for key, value in saved_group.items():
                if key != "params":
                    group[key] = value
            for param_id, param in zip(saved_group["params"], group["params"], strict=True):
                self._load_param_state(param, saved_state[param_id])
        params = [p for group in self.param_groups for p in group["params"]]
        self._check_selections(params, [self.state[p]["indices"] for p in params])
        self._prepared.clear()

    @torch.no_grad()
    def _load_param_state(self, param: torch.Tensor, saved: Mapping[str, Any]) -> None:
        state = self.state[param]
        if not torch.equal(saved["indices"].to(state["indices"].device), state["indices"]):
            raise ValueError(
                "MaskedAdamW.load_state_dict: the saved selection differs from this optimizer's "
                "(resuming with a different mask?)"
            )
        for key in _STATE_KEYS:
            state[key] = saved[key].to(device=param.device, dtype=state[key].dtype).clone()
        state["step"] = int(saved["step"])


def keep_selected_(param: torch.Tensor, indices: torch.Tensor) -> None:
    """Zero every entry of ``param.grad`` (this rank's) but the flat ``indices``."""
    if param.grad is None:
        return
    flat = local_tensor(param.grad).view(-1)
    kept = flat[indices]
    flat.zero_()
    flat[indices] = kept


class SelectedGradients(GradientAdjustment):
    """Keeps only the selected entries of each parameter's gradient (a :class:`GradientAdjustment`).

    Gathers the K_t selected gradient values, zeroes the gradient and writes them back (no
    dense mask is stored).

    Args:
        model: the model.
        indices: name -> int64 sorted flat indices of the selected entries (into the local
            shard of a DTensor parameter).
    """

    def __init__(self, model: nn.Module, indices: Mapping[str, torch.Tensor]) -> None:
        params = named_parameter_map(model)
        missing = set(indices) - set(params)
        if missing:
            raise KeyError(f"SelectedGradients: the model has no parameters {sorted(missing)[:3]}")
        super().__init__([(params[name], partial(keep_selected_, indices=idx.to(local_tensor(params[name]).device)))
                          for name, idx in indices.items()])


def by_weight_decay(names: Iterable[str], decayed: Collection[str],
                    weight_decay: float) -> list[tuple[list[str], float]]:
    """``names`` (order kept) as optimizer groups: those in ``decayed`` at ``weight_decay``, then the
    rest at 0.0 (biases and norms, as a ``transformers.Trainer`` spares them); empty groups left out."""
    ordered, chosen = list(names), set(decayed)
    groups = ([n for n in ordered if n in chosen], weight_decay), ([n for n in ordered if n not in chosen], 0.0)
    return [(members, decay) for members, decay in groups if members]


def by_decay_and_pull(names: Iterable[str], decayed: Collection[str], weight_decay: float, dense: Collection[str],
                      l1: float) -> list[tuple[list[str], float, float]]:
    """``names`` as optimizer groups ``(members, weight decay, L1 pull)``: each group of :func:`by_weight_decay`
    with its sparse members pulled at ``l1`` and its ``dense`` ones (the head) at 0.0, in a group of their own
    when ``l1`` is not 0 (the penalty is ``l1 * Σ_eligible |θ − θ0| / N``: dense parameters are not pulled)."""
    groups = []
    for members, decay in by_weight_decay(names, decayed, weight_decay):
        pulls: dict[float, list[str]] = {}
        for name in members:
            pulls.setdefault(0.0 if name in dense else l1, []).append(name)
        groups += [(part, decay, pull) for pull, part in pulls.items()]
    return groups


def build_masked_optimizer(
    trainer,
    indices: Mapping[str, torch.Tensor],
    dense_names: Sequence[str],
    *,
    l1_scale: float = 0.0,
    backend: str | None = None,
) -> MaskedAdamW:
    """A :class:`MaskedAdamW` configured like the trainer's own AdamW would be.

    Betas and epsilon come from the Trainer's ``optimizer_cls_and_kwargs`` where its kwargs
    name them (phase 1's optimizer has them), else from ``trainer.args``; weight decay from
    ``trainer.args`` (a Trainer sets it per parameter group, over the kwargs'). Parameters the trainer
    would not decay (biases, LayerNorms: ``trainer.get_decay_parameter_names``) get
    no weight decay. The L1 pull is on the sparse parameters only (:func:`by_decay_and_pull`), as
    in phase 1. Sparse parameters with no selected entry are left out.

    Args:
        trainer: the ``transformers.Trainer``.
        indices: name -> selected flat indices of each sparse parameter.
        dense_names: parameters trained on every entry (the head).
        l1_scale: per-entry L1 gradient magnitude (``l1 / N``) of the sparse parameters.
    """
    params = named_parameter_map(trainer.model)
    dense = set(dense_names)
    # Model order, so the optimizer's state_dict layout (and a resume) never depends on
    # the order of the caller's mapping.
    selected = {name: full_indices(param) if name in dense else indices[name] for name, param in params.items()
                if name in dense or (name in indices and indices[name].numel())}
    args = trainer.args
    groups = [
        {"params": [params[n] for n in names], "indices": [selected[n] for n in names], "weight_decay": decay, "l1": l1}
        for names, decay, l1 in by_decay_and_pull(selected, trainer.get_decay_parameter_names(trainer.model),
                                                  args.weight_decay, dense, l1_scale)
    ]
    chosen = getattr(trainer, "optimizer_cls_and_kwargs", None)
    kwargs = chosen[1] if chosen is not None else {}
    return MaskedAdamW(
        groups, lr=args.learning_rate, betas=tuple(kwargs.get("betas", (args.adam_beta1, args.adam_beta2))),
        eps=kwargs.get("eps", args.adam_epsilon), weight_decay=args.weight_decay, l1=l1_scale, backend=backend,
    )


def run_sparse_retraining(
    trainer,
    phase: PhaseConfig,
    indices: Mapping[str, torch.Tensor],
    dense_names: Sequence[str],
    output_dir: str,
    resume_from_checkpoint: str | None = None,
    backend: str | None = None,
):
    """Phase 3: train only the selected entries (and the dense head) from the current θ0.

    The model must already be at θ0. Sparse parameters without selected entries are
    frozen for the phase (their ``requires_grad`` is restored afterwards).

    Returns:
        The ``TrainOutput`` of ``trainer.train``.
    """
    model = trainer.model
    params = named_parameter_map(model)
    idle = [name for name, idx in indices.items() if idx.numel() == 0 and params[name].requires_grad]
    for name in idle:
        params[name].requires_grad_(False)
    try:
        with phase_arguments(trainer, phase, output_dir):
            trainer.optimizer = build_masked_optimizer(
                trainer, indices, dense_names,
                l1_scale=l1_gradient_scale(phase.l1, model), backend=backend,
            )
            trainer.lr_scheduler = None
            live = {name: idx for name, idx in indices.items() if idx.numel()}
            with SelectedGradients(model, live):
                return trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    finally:
        for name in idle:
            params[name].requires_grad_(True)
        trainer.optimizer = None
        trainer.lr_scheduler = None
