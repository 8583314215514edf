"""Backend selection: auto, explicit, environment variable, and clear errors."""

from __future__ import annotations

import pytest
import torch

from deftx.ops import BackendUnavailableError, backend_report, masked_adamw_step_, topk_mask
from deftx.ops.dispatch import auto_backend, requested_backend, resolve, unavailable_reason
from deftx.ops.registry import OPS


def test_requested_backend_from_argument_and_environment(monkeypatch):
    monkeypatch.delenv("DEFTX_BACKEND", raising=False)
    assert requested_backend(None) == "auto"
    monkeypatch.setenv("DEFTX_BACKEND", "Torch")
    assert requested_backend(None) == "torch"
    assert requested_backend("native") == "native"
    monkeypatch.setenv("DEFTX_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"\$DEFTX_BACKEND is 'cuda'"):
        requested_backend(None)


def test_native_on_cuda_and_for_unimplemented_ops_raise():
    with pytest.raises(BackendUnavailableError, match="native backend runs on CPU"):
        resolve("topk", torch.device("cuda"), "native")
    with pytest.raises(BackendUnavailableError, match="does not implement 'rsvd'"):
        resolve("rsvd", torch.device("cpu"), "native")


def test_auto_prefers_triton_on_cuda_and_never_the_interpreter_on_cpu():
    assert auto_backend("topk", "cuda")[0] == "triton"
    assert auto_backend("rsvd", "cpu")[0] == "torch"
    assert auto_backend("topk", "cpu")[0] in ("native", "torch")


@pytest.mark.parametrize("op", ["topk", "scatter", "masked_step"])
def test_auto_on_cpu_uses_the_native_library_where_it_implements_the_op(op):
    assert "native" in OPS[op].backends
    built = unavailable_reason(op, "native", "cpu") is None
    assert auto_backend(op, "cpu")[0] == ("native" if built else "torch")


def test_auto_runs_the_native_masked_step_on_cpu(monkeypatch):
    reason = unavailable_reason("masked_step", "native", "cpu")
    if reason is not None:
        pytest.skip(reason)
    import deftx.ops.native.masked_step as native_masked_step

    calls = []
    real = native_masked_step.masked_adamw_step_
    monkeypatch.setattr(native_masked_step, "masked_adamw_step_", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.delenv("DEFTX_BACKEND", raising=False)
    params, masters = [torch.zeros(3)], [torch.zeros(1)]
    masked_adamw_step_(
        params, [torch.ones(3)], [torch.tensor([1])], masters, [torch.zeros(1)], [torch.zeros(1)], step=1, lr=0.1
    )
    assert len(calls) == 1
    assert params[0][1] == masters[0][0] < 0


def test_environment_variable_reaches_the_ops(monkeypatch):
    monkeypatch.setenv("DEFTX_BACKEND", "bogus")
    with pytest.raises(ValueError, match="DEFTX_BACKEND"):
        topk_mask([torch.ones(2)], 1)


def test_an_environment_backend_without_the_op_gives_way_to_auto_but_an_argument_does_not(monkeypatch):
    """DEFTX_BACKEND=native must not break DeFT-X: the native library has no rSVD, which then runs on
    auto's choice with a warning; top-k still runs natively, and backend="native" for the rSVD raises."""
    from deftx.ops import dispatch, lowrank_factors_batched

    dispatch._warn_once.cache_clear()
    monkeypatch.setenv("DEFTX_BACKEND", "native")
    assert requested_backend(None, "topk") == "native"
    with pytest.warns(UserWarning, match=r"\$DEFTX_BACKEND=native does not implement 'rsvd'; it runs on the auto"):
        assert requested_backend(None, "rsvd") == "auto"
    matrix = torch.randn(12, 9, generator=torch.Generator().manual_seed(0))
    factors = lowrank_factors_batched([matrix], rank=2)[0]
    expected = lowrank_factors_batched([matrix], rank=2, backend="torch")[0]
    assert torch.equal(factors.s, expected.s)
    with pytest.raises(BackendUnavailableError, match="does not implement 'rsvd'"):
        lowrank_factors_batched([matrix], rank=2, backend="native")


def test_backend_report_covers_every_op():
    rows = backend_report()
    assert {r["op"] for r in rows} == {"topk", "scatter", "rsvd", "masked_step"}
    assert all(r["backend"] in ("triton", "native", "torch") and r["why"] for r in rows)


class _Sharded(torch.Tensor):
    """A tensor subclass standing in for DTensor: topk_mask hands it to its registered handler."""


def test_a_subclass_handled_elsewhere_refuses_a_backend_it_does_not_run(monkeypatch):
    """DTensor inputs go to deftx.distributed's sharded top-k (torch ops on the local shards): an
    explicit accelerated backend, or a misspelt one, was dropped without a word."""
    from deftx.ops import extensions

    calls = []
    monkeypatch.setattr(extensions, "_HANDLERS", {"topk": {_Sharded: lambda *a, **kw: calls.append(kw) or []}})
    monkeypatch.delenv("DEFTX_BACKEND", raising=False)
    sharded = torch.Tensor._make_subclass(_Sharded, torch.tensor([1.0, -3.0, 2.0]))
    with pytest.raises(ValueError, match="backend argument is 'bogus'"):
        topk_mask([sharded], 1, backend="bogus")
    for backend in ("native", "triton"):
        with pytest.raises(BackendUnavailableError, match=f"backend '{backend}' cannot run on _Sharded inputs"):
            topk_mask([sharded], 1, backend=backend)
    assert calls == []
    for backend in (None, "auto", "torch"):
        topk_mask([sharded], 1, backend=backend)
    monkeypatch.setenv("DEFTX_BACKEND", "native")  # a preference for every op, not a demand
    topk_mask([sharded], 1)
    assert len(calls) == 4


def test_auto_says_so_when_cuda_tensors_fall_back_to_torch_for_want_of_triton(monkeypatch):
    """A broken Triton install made auto run every CUDA op on the torch reference in silence (the
    same fallback on CPU, for want of the native library, warns)."""
    from deftx.ops import dispatch

    dispatch._warn_once.cache_clear()
    monkeypatch.delenv("DEFTX_BACKEND", raising=False)
    monkeypatch.setattr(dispatch, "triton_unavailable_reason", lambda: "triton cannot be imported (ImportError: x)")
    with pytest.warns(UserWarning, match=r"the Triton backend is unavailable for cuda tensors \(Triton unavailable: "
                                         r"triton cannot be imported \(ImportError: x\)\); using the PyTorch backend"):
        assert resolve("topk", torch.device("cuda")) == "torch"
    monkeypatch.setattr(dispatch, "native_unavailable_reason", lambda op: "native library not built (no compiler)")
    with pytest.warns(UserWarning, match=r"the native backend is unavailable for cpu tensors \(native library not"):
        assert resolve("scatter", torch.device("cpu")) == "torch"


@pytest.mark.parametrize("backend", [1, True, torch.device("cpu")])
def test_a_backend_that_is_not_a_string_is_named_in_a_type_error(backend):
    # it failed inside str.strip: "AttributeError: 'int' object has no attribute 'strip'"
    with pytest.raises(TypeError, match=r"backend must be one of the strings auto, triton, native, torch, got "):
        topk_mask([torch.ones(2)], 1, backend=backend)
