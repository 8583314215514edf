"""MaskedAdamW against torch.optim.AdamW and an fp64 reference; gradient masking; resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deftx.perf.counters import count_device_work
from deftx.train.retrain import MaskedAdamW, SelectedGradients, build_masked_optimizer, by_decay_and_pull, full_indices
from tests.helpers import assert_bitwise_equal, assert_close, tolerance


def gradients(shape, steps, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(dtype) for _ in range(steps)]


def run_masked(param, indices, grads, **hyper):
    optimizer = MaskedAdamW([{"params": [param], "indices": [indices]}], **hyper)
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
    return optimizer


def reference_adamw(values, grads, base, *, lr, betas, eps, weight_decay, l1):
    """The contract's per-entry formula in float64 numpy."""
    master = values.astype(np.float64)
    m = np.zeros_like(master)
    v = np.zeros_like(master)
    for step, g in enumerate(grads, start=1):
        g = g.astype(np.float64) + l1 * np.sign(master - base)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        master = master * (1 - lr * weight_decay)
        master = master - lr * (m / (1 - betas[0] ** step)) / (np.sqrt(v / (1 - betas[1] ** step)) + eps)
    return master


@pytest.mark.parametrize("shape", [(7, 5), (33,), (1, 1)])
def test_full_selection_matches_torch_adamw(shape):
    hyper = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
    grads = gradients(shape, 6)
    torch.manual_seed(0)
    init = torch.randn(shape)
    ours = init.clone().requires_grad_(True)
    run_masked(ours, full_indices(ours), grads, **hyper)
    theirs = init.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([theirs], **hyper)
    for grad in grads:
        theirs.grad = grad.clone()
        optimizer.step()
    assert_close(ours.detach(), theirs.detach(), rtol=tolerance(torch.float32, 16), atol=1e-7)


def test_the_defaults_are_torch_adamws():
    """Built with no settings, it steps as ``torch.optim.AdamW(params)`` does (lr 1e-3, betas (0.9, 0.999),
    eps 1e-8, decoupled weight decay 1e-2)."""
    grads = gradients((7, 5), 6, seed=3)
    init = torch.randn((7, 5), generator=torch.Generator().manual_seed(8))
    ours = init.clone().requires_grad_(True)
    run_masked(ours, full_indices(ours), grads)
    theirs = init.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([theirs])
    for grad in grads:
        theirs.grad = grad.clone()
        optimizer.step()
    assert_close(ours.detach(), theirs.detach(), rtol=tolerance(torch.float32, 16), atol=1e-7)


# Which of three parameters has a gradient at each of 6 steps: the first one in the group
# starts late, the second has one every step, the third skips steps 2 and 5.
INTERMITTENT = [(False, True, True), (False, True, False), (True, True, True),
                (True, True, True), (False, True, False), (True, True, True)]


def step_intermittently(optimizer, params, grads, steps):
    """``steps`` optimizer steps; parameter t gets ``grads[s][t]`` where ``INTERMITTENT[s][t]``, else no gradient."""
    for s in steps:
        for t, param in enumerate(params):
            param.grad = grads[s][t].clone() if INTERMITTENT[s][t] else None
        optimizer.step()


def intermittent_data():
    """Initial values of three parameters and their gradients at each step of ``INTERMITTENT``."""
    generator = torch.Generator().manual_seed(6)
    values = [torch.randn(4 + t, generator=generator) for t in range(3)]
    return values, [[torch.randn(v.shape, generator=generator) for v in values] for _ in INTERMITTENT]


def intermittent_run(make_optimizer, steps=range(6)):
    """(parameters, optimizer) after ``steps`` of the ``INTERMITTENT`` pattern."""
    values, grads = intermittent_data()
    params = [value.clone().requires_grad_() for value in values]
    optimizer = make_optimizer(params)
    step_intermittently(optimizer, params, grads, steps)
    return params, optimizer


HYPER = dict(lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)


def masked_adamw(params):
    return MaskedAdamW([{"params": params, "indices": [full_indices(p) for p in params]}], **HYPER)


def test_each_parameter_counts_its_own_steps_as_torch_adamw_does():
    """A parameter without a gradient neither steps nor advances its step count, so one that has
    a gradient every step keeps its own bias corrections."""
    ours, optimizer = intermittent_run(masked_adamw)
    theirs, reference = intermittent_run(lambda params: torch.optim.AdamW(params, **HYPER))
    for t, (mine, expected) in enumerate(zip(ours, theirs, strict=True)):
        assert optimizer.state[mine]["step"] == int(reference.state[expected]["step"]), f"param {t}"
        assert_close(mine.detach(), expected.detach(), rtol=tolerance(torch.float32, 16), atol=1e-7,
                     what=f"param {t}")


def test_a_resume_restores_each_parameters_step_count():
    """Saved after step 3 (counts 1, 3, 2), loaded into a new optimizer, steps 4-6 land where a
    straight run does, bit for bit."""
    straight, _ = intermittent_run(masked_adamw)
    first, optimizer = intermittent_run(masked_adamw, steps=range(3))
    saved = torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t,
                                         optimizer.state_dict())
    assert [saved["state"][t]["step"] for t in range(3)] == [1, 3, 2]
    resumed = [p.detach().clone().requires_grad_() for p in first]
    loaded = masked_adamw(resumed)
    loaded.load_state_dict(saved)
    assert [loaded.state[p]["step"] for p in resumed] == [1, 3, 2]
    _, grads = intermittent_data()
    step_intermittently(loaded, resumed, grads, range(3, 6))
    for t, (param, expected) in enumerate(zip(resumed, straight, strict=True)):
        assert_bitwise_equal(param.detach(), expected.detach(), what=f"param {t}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("l1", [0.0, 0.5])
def test_partial_selection_touches_only_selected_entries(dtype, l1):
    shape = (9, 6)
    hyper = dict(lr=5e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, l1=l1)
    generator = torch.Generator().manual_seed(4)
    init = torch.randn(shape, generator=generator).to(dtype)
    indices = torch.randperm(54, generator=generator)[:13].sort().values
    grads = gradients(shape, 5, seed=2, dtype=dtype)
    param = init.clone().requires_grad_(True)
    optimizer = run_masked(param, indices, grads, **hyper)
    outside = torch.ones(54, dtype=torch.bool)
    outside[indices] = False
    assert_bitwise_equal(param.detach().flatten()[outside], init.flatten()[outside], what="unselected entries")
    base = init.flatten()[indices].double().numpy()
    expected = reference_adamw(base, [g.flatten()[indices].float().numpy() for g in grads], base,
                               lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, l1=l1)
    state = optimizer.state[param]
    assert state["master"].dtype == torch.float32 and state["exp_avg"].numel() == 13
    assert_close(state["master"], torch.from_numpy(expected), rtol=1e-5, atol=1e-6, what="masters")
    assert_bitwise_equal(param.detach().flatten()[indices], state["master"].to(dtype), what="param = cast(master)")


def test_state_is_order_k():
    param = torch.zeros(1000, requires_grad=True)
    optimizer = MaskedAdamW([{"params": [param], "indices": [torch.tensor([3, 500, 999])]}])
    assert optimizer.selected_entries() == 3
    assert all(t.numel() == 3 for k, t in optimizer.state[param].items() if k != "step")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_resumes_bit_exactly(dtype):
    shape = (8, 5)
    indices = torch.tensor([0, 3, 17, 22, 39])
    grads = gradients(shape, 6, seed=9, dtype=dtype)
    init = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    hyper = dict(lr=1e-2, weight_decay=0.01, l1=0.1)

    straight = init.clone().requires_grad_(True)
    run_masked(straight, indices, grads, **hyper)

    first = init.clone().requires_grad_(True)
    saved = run_masked(first, indices, grads[:3], **hyper).state_dict()
    saved = torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, saved)
    resumed = first.detach().clone().requires_grad_(True)
    optimizer = MaskedAdamW([{"params": [resumed], "indices": [indices]}], **hyper)
    optimizer.load_state_dict(saved)
    assert optimizer.state[resumed]["master"].dtype == torch.float32
    assert optimizer.state[resumed]["indices"].dtype == torch.int64
    for grad in grads[3:]:
        resumed.grad = grad.clone()
        optimizer.step()
    assert_bitwise_equal(resumed.detach(), straight.detach(), what="resumed vs straight")


def test_an_optimizer_that_has_stepped_continues_from_the_state_it_loads():
    """Its planned step held the old state tensors; after load_state_dict it must update the
    loaded ones: rewinding to step 2 and replaying steps 3-4 lands where the first pass did."""
    shape, indices = (8, 5), torch.tensor([1, 4, 17, 30])
    grads = gradients(shape, 4, seed=5, dtype=torch.float32)
    param = torch.randn(shape, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    optimizer = MaskedAdamW([{"params": [param], "indices": [indices]}], lr=1e-2, weight_decay=0.01)
    snapshots = []
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
        snapshots.append((param.detach().clone(), torch.utils._pytree.tree_map(
            lambda t: t.clone() if isinstance(t, torch.Tensor) else t, optimizer.state_dict())))
    with torch.no_grad():
        param.copy_(snapshots[1][0])
    optimizer.load_state_dict(snapshots[1][1])
    for grad in grads[2:]:
        param.grad = grad.clone()
        optimizer.step()
    assert_bitwise_equal(param.detach(), snapshots[3][0], what="replayed vs first pass")
    assert_bitwise_equal(optimizer.state[param]["master"], snapshots[3][1]["state"][0]["master"], what="master")


def test_load_state_dict_rejects_other_selection():
    param = torch.zeros(10, requires_grad=True)
    saved = MaskedAdamW([{"params": [param], "indices": [torch.tensor([1, 2])]}]).state_dict()
    other = MaskedAdamW([{"params": [param], "indices": [torch.tensor([1, 3])]}])
    with pytest.raises(ValueError, match="different mask"):
        other.load_state_dict(saved)


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": -1.0}, "lr must be finite and >= 0, got -1.0"),
    ({"lr": float("inf")}, "lr must be finite and >= 0, got inf"),
    ({"eps": float("nan")}, "eps must be finite and >= 0, got nan"),
    ({"weight_decay": -0.1}, "weight_decay must be finite"),
    ({"betas": (0.9, 1.0)}, "betas"),
])
def test_rejects_bad_hyperparameters(kwargs, match):
    param = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        MaskedAdamW([{"params": [param], "indices": [torch.tensor([0])]}], **kwargs)


def test_rejects_missing_or_bad_indices():
    param = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="one index tensor per parameter"):
        MaskedAdamW([{"params": [param]}])
    with pytest.raises(ValueError, match="int64"):
        MaskedAdamW([{"params": [param], "indices": [torch.tensor([0], dtype=torch.int32)]}])


@pytest.mark.filterwarnings("ignore:deftx. running the Triton kernel")
def test_steps_read_nothing_back_after_construction():
    """The selection is checked when the optimizer is built (and loaded), in one read; a step
    then launches one kernel per parameter dtype and waits for nothing."""
    params = [torch.randn(3 + i, requires_grad=True) for i in range(30)]
    indices = [torch.arange(i % 3, p.numel(), 3) for i, p in enumerate(params)]
    with count_device_work("cpu") as built:
        optimizer = MaskedAdamW([{"params": params, "indices": indices}], lr=1e-2, backend="triton")
    assert built.syncs == {"tolist": 1}
    for p in params:
        p.grad = torch.randn_like(p)
    with count_device_work("cpu") as steps:
        optimizer.step()
        optimizer.step()
    assert steps.sync_count == 0 and steps.triton_launches == {"_masked_adamw_kernel": 2}, steps.summary()
    optimizer.load_state_dict(optimizer.state_dict())
    with count_device_work("cpu") as resumed:
        optimizer.step()
    assert resumed.sync_count == 0, resumed.summary()


@pytest.mark.filterwarnings("ignore:deftx. running the Triton kernel")
def test_parameters_at_different_step_counts_take_one_launch_per_count():
    """Step counts are host ints: parameters that missed a gradient cost one more launch for
    their count, not one per parameter, and no read-back."""
    params = [torch.randn(3 + i, requires_grad=True) for i in range(30)]
    optimizer = MaskedAdamW([{"params": params, "indices": [full_indices(p) for p in params]}], lr=1e-2,
                            backend="triton")
    for i, p in enumerate(params):
        p.grad = torch.randn_like(p) if i % 2 else None
    optimizer.step()
    for p in params:
        p.grad = torch.randn_like(p)
    with count_device_work("cpu") as steps:
        optimizer.step()
    assert steps.sync_count == 0 and steps.triton_launches == {"_masked_adamw_kernel": 2}, steps.summary()
    assert [optimizer.state[p]["step"] for p in params[:2]] == [1, 2]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.filterwarnings("ignore:deftx. running the Triton kernel")
def test_steps_skip_the_per_call_checks_and_the_dispatcher(monkeypatch, backend):
    """Everything a step needs is checked when the optimizer is built; a step then neither
    re-checks its tensors nor goes through the custom op's dispatcher in eager mode, and it
    gives the public op's result bit for bit."""
    import deftx.ops.masked_step as public
    from deftx.ops import library

    gen = torch.Generator().manual_seed(4)
    params = [torch.randn(5 + i, generator=gen).requires_grad_() for i in range(6)]
    twins = [p.detach().clone() for p in params]
    indices = [torch.arange(i % 2, p.numel(), 2) for i, p in enumerate(params)]
    optimizer = MaskedAdamW([{"params": params, "indices": indices}], lr=1e-2, weight_decay=0.0, backend=backend)
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()

    def checked_per_step(*args, **kwargs):
        raise AssertionError("a step re-checked its arguments")

    def dispatched(*args, **kwargs):
        raise AssertionError("an eager step went through the custom op")

    versions = [p._version for p in params]
    with monkeypatch.context() as patch:
        for name in ("check_disjoint", "check_indices", "check_state_tensors", "check_float_dtype"):
            patch.setattr(public, name, checked_per_step)
        patch.setattr(library, "_masked_adamw_step_op", dispatched)
        optimizer.step()
    assert all(p._version > v for p, v in zip(params, versions, strict=True)), "autograd must see the update"

    masters = [twin[idx].float() for twin, idx in zip(twins, indices, strict=True)]
    moments = [[torch.zeros_like(m) for m in masters] for _ in range(2)]
    public.masked_adamw_step_(twins, grads, indices, masters, *moments, step=1, lr=1e-2, backend=backend)
    for t, (param, twin) in enumerate(zip(params, twins, strict=True)):
        assert_bitwise_equal(param.detach(), twin, what=f"param {t}")


def test_rejects_parameters_it_cannot_step():
    with pytest.raises(TypeError, match="parameter 0"):
        MaskedAdamW([{"params": [torch.zeros(3, dtype=torch.float64, requires_grad=True)],
                      "indices": [torch.tensor([0])]}])


def test_rejects_out_of_range_indices_before_reading_them():
    param = torch.zeros(4, requires_grad=True)
    with pytest.raises(IndexError, match=r"parameter 1: index range \[2, 4\] is outside \[0, 4\)"):
        MaskedAdamW([{"params": [torch.zeros(2, requires_grad=True), param],
                      "indices": [torch.tensor([0]), torch.tensor([2, 4])]}])


def test_a_group_added_later_steps_as_torch_adamws_does():
    """``add_param_group`` (unfreezing a layer mid-training) creates the group's state: it steps like
    the same group added to torch.optim.AdamW, and its unselected entries stay as they were."""
    values, grads = intermittent_data()
    ours = [value.clone().requires_grad_() for value in values]
    theirs = [value.clone().requires_grad_() for value in values]
    optimizer = MaskedAdamW([{"params": ours[:1], "indices": [full_indices(ours[0])]}], **HYPER)
    reference = torch.optim.AdamW(theirs[:1], **HYPER)
    optimizer.add_param_group({"params": ours[1:2], "indices": [full_indices(ours[1])], "lr": 0.05})
    reference.add_param_group({"params": theirs[1:2], "lr": 0.05})
    optimizer.add_param_group({"params": ours[2], "indices": [torch.tensor([0, 3])]})
    for step in grads:
        for params in (ours, theirs):
            for param, grad in zip(params, step, strict=True):
                param.grad = grad.clone()
        optimizer.step()
        reference.step()
    for t in range(2):
        assert_close(ours[t].detach(), theirs[t].detach(), rtol=tolerance(torch.float32, 16), atol=1e-7,
                     what=f"param {t}")
    assert optimizer.state[ours[2]]["step"] == len(grads)
    assert_bitwise_equal(ours[2].detach()[[1, 2, 4, 5]], values[2][[1, 2, 4, 5]], what="unselected entries")
    assert not torch.equal(ours[2].detach()[[0, 3]], values[2][[0, 3]])


def test_a_group_without_indices_is_refused_when_it_is_added():
    param = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="one index tensor per parameter"):
        MaskedAdamW([param])
    optimizer = MaskedAdamW([{"params": [param], "indices": [torch.tensor([0])]}])
    with pytest.raises(ValueError, match="one index tensor per parameter"):
        optimizer.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})
    with pytest.raises(IndexError, match=r"parameter 1: index range \[2, 2\] is outside \[0, 2\)"):
        optimizer.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "indices": [torch.tensor([2])]})
    assert len(optimizer.param_groups) == 1, "a refused group is not added"


def test_selected_gradients_zero_the_rest():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    x = torch.randn(3, 6)
    model(x).sum().backward()
    plain = model.weight.grad.clone()
    model.zero_grad()
    indices = torch.tensor([1, 7, 23])
    with SelectedGradients(model, {"weight": indices}):
        model(x).sum().backward()
    expected = torch.zeros(24)
    expected[indices] = plain.flatten()[indices]
    assert_bitwise_equal(model.weight.grad.flatten(), expected)
    assert model.bias.grad is not None and bool((model.bias.grad != 0).all())


def test_build_masked_optimizer_groups(make_trainer):
    trainer = make_trainer()
    names = dict(trainer.model.named_parameters())
    query = "bert.encoder.layer.0.attention.self.query.weight"
    query_bias = "bert.encoder.layer.0.attention.self.query.bias"
    indices = {query: torch.tensor([0, 5]), query_bias: torch.tensor([1]),
               "bert.encoder.layer.0.output.dense.weight": torch.empty(0, dtype=torch.int64)}
    optimizer = build_masked_optimizer(trainer, indices, ["classifier.weight", "classifier.bias"])
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays[id(names[query])] == trainer.args.weight_decay > 0
    assert decays[id(names[query_bias])] == 0.0 and decays[id(names["classifier.bias"])] == 0.0
    assert id(names["bert.encoder.layer.0.output.dense.weight"]) not in decays
    assert optimizer.selected_entries() == 3 + names["classifier.weight"].numel() + 3


def test_the_masked_optimizer_takes_the_betas_and_epsilon_of_your_optimizer_kwargs(make_trainer):
    """Phase 1 builds ``optimizer_cls_and_kwargs``' AdamW with its betas and eps; phase 3's MaskedAdamW takes
    the same ones (the TrainingArguments' adam_* where the kwargs name none)."""
    trainer = make_trainer()
    query = {"bert.encoder.layer.0.attention.self.query.weight": torch.tensor([0, 5])}
    trainer.optimizer_cls_and_kwargs = (torch.optim.AdamW, {"lr": 0.1, "betas": (0.8, 0.98), "eps": 1e-6})
    chosen = build_masked_optimizer(trainer, query, []).defaults
    assert (chosen["betas"], chosen["eps"]) == ((0.8, 0.98), 1e-6)
    trainer.optimizer_cls_and_kwargs = (torch.optim.AdamW, {"eps": 1e-6})
    partly = build_masked_optimizer(trainer, query, []).defaults
    assert (partly["betas"], partly["eps"]) == ((trainer.args.adam_beta1, trainer.args.adam_beta2), 1e-6)


def test_the_l1_pull_of_the_sparse_phase_leaves_the_dense_head_alone(make_trainer):
    """The penalty is ``l1 * Σ_eligible |θ − θ0| / N`` (the reference's ``maskable_params`` only): the densely
    trained head is not pulled toward its initial values, in phase 3 as in phase 1 (:class:`L1Pull` anchors the
    eligible parameters only). Reference: torch AdamW on the head with the same gradients and weight decay."""
    trainer = make_trainer()
    names = dict(trainer.model.named_parameters())
    head = ["classifier.weight", "classifier.bias"]
    query = "bert.encoder.layer.0.attention.self.query.weight"
    optimizer = build_masked_optimizer(trainer, {query: torch.tensor([0, 5])}, head, l1_scale=0.5)
    decayed = set(trainer.get_decay_parameter_names(trainer.model))
    copies = {n: names[n].detach().clone().requires_grad_(True) for n in head}
    reference = torch.optim.AdamW(
        [{"params": [copies[n]], "weight_decay": trainer.args.weight_decay if n in decayed else 0.0} for n in head],
        lr=trainer.args.learning_rate,
        betas=(trainer.args.adam_beta1, trainer.args.adam_beta2),
        eps=trainer.args.adam_epsilon,
    )
    for step in range(4):
        for n in head:
            grad = gradients(names[n].shape, 1, seed=step)[0] * (step % 2)  # zero at even steps: the pull alone
            names[n].grad, copies[n].grad = grad.clone(), grad.clone()
        names[query].grad = torch.zeros_like(names[query])
        optimizer.step()
        reference.step()
    for n in head:
        assert_close(names[n].detach(), copies[n].detach(), rtol=tolerance(torch.float32, 16), atol=1e-7, what=n)


def test_the_groups_split_off_the_dense_parameters_only_where_there_is_a_pull():
    """Without an L1 pull the groups are :func:`by_weight_decay`'s (an optimizer state saved before resumes);
    with one, the dense parameters of each group sit in a group of their own at l1 0."""
    names, decayed, dense = ["w", "b", "head.w", "head.b"], {"w", "head.w"}, {"head.w", "head.b"}
    unpulled = [(["w", "head.w"], 0.1, 0.0), (["b", "head.b"], 0.0, 0.0)]
    assert by_decay_and_pull(names, decayed, 0.1, dense, 0.0) == unpulled
    pulled = [(["w"], 0.1, 0.5), (["head.w"], 0.1, 0.0), (["b"], 0.0, 0.5), (["head.b"], 0.0, 0.0)]
    assert by_decay_and_pull(names, decayed, 0.1, dense, 0.5) == pulled
