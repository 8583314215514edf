"""The op registry, the settings contracts and the subclass hook: one place names each op."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import deftx.ops as ops
from deftx.ops import backend_report, topk_mask
from deftx.ops.extensions import register_subclass_handler, subclass_handler
from deftx.ops.registry import BACKENDS, OPS, op_entry
from deftx.ops.settings import AdamWSettings


@pytest.mark.parametrize("name", list(OPS))
def test_every_entry_names_existing_functions_backends_and_cost_model(name):
    entry = OPS[name]
    assert entry.name == name and set(entry.backends) <= set(BACKENDS)
    assert all(callable(f) for f in entry.public_functions())
    assert set(entry.functions) <= set(ops.__all__)
    for backend in entry.backends:
        if backend != "triton":
            assert entry.backend_module(backend).__name__.endswith(f".{name}")
    assert entry.cost_model().__name__ == f"deftx.ops.cost.{name}"
    assert hasattr(entry.cost_model(), "bytes_moved") and hasattr(entry.cost_model(), "baseline_bytes_moved")


def test_unknown_op_and_missing_backend_are_named():
    with pytest.raises(KeyError, match="known: topk, scatter, rsvd, masked_step"):
        op_entry("step")
    with pytest.raises(KeyError, match="no 'native' backend"):
        OPS["rsvd"].backend_module("native")


def test_doctor_report_covers_the_registry():
    assert {row["op"] for row in backend_report()} == set(OPS)


def test_registry_settings_and_cost_models_import_without_triton():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # any import of triton now fails
        from deftx.ops.registry import OPS
        for entry in OPS.values():
            entry.cost_model()
            entry.settings_class()
        assert not any(name.startswith("triton") for name in sys.modules if sys.modules[name])
        assert not any(name.startswith("deftx.kernels.") and name != "deftx.kernels._topk_plan" for name in sys.modules)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_adamw_settings_derive_the_scalars_once():
    settings = AdamWSettings(3, 1e-3, beta1=0.8, weight_decay=0.1, l1=0.5)
    names = ("beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "decay", "lr", "bias1", "bias2", "eps", "l1")
    scalars = dict(zip(names, settings.scalars(), strict=True))
    assert scalars == {
        "beta1": 0.8, "one_minus_beta1": 1.0 - 0.8, "beta2": 0.999, "one_minus_beta2": 1.0 - 0.999,
        "decay": 1.0 - 1e-3 * 0.1, "lr": 1e-3, "bias1": 1.0 - 0.8**3, "bias2": 1.0 - 0.999**3, "eps": 1e-8,
        "l1": 0.5,
    }  # fmt: skip
    assert settings.has_l1 and not AdamWSettings(1, 0.1).has_l1
    assert AdamWSettings.from_op(settings.step, settings.hyperparameters()) == settings
    assert isinstance(AdamWSettings(1, 1).lr, float)
    for bad in (0, True, 1.0):
        with pytest.raises(ValueError, match="step must be an int >= 1"):
            AdamWSettings(bad, 0.1)


class _Marked(torch.Tensor):
    """A tensor subclass with no behaviour of its own, to route on."""


def test_a_registered_subclass_handler_takes_the_call(monkeypatch):
    monkeypatch.setattr("deftx.ops.extensions._HANDLERS", {})
    calls = []
    register_subclass_handler("topk", _Marked, lambda items, k, **options: calls.append((len(items), k, options)))
    marked = torch.ones(3).as_subclass(_Marked)
    topk_mask([torch.ones(2), marked], 2)
    assert calls == [(2, 2, {"output": "mask", "base": [None, None]})]
    assert subclass_handler("topk", [torch.ones(2), None]) is None
    assert subclass_handler("scatter", [marked]) is None
