"""Triton kernels of deftx, one op per module, imported as ``deftx.kernels``.

The op modules (one per op of the registry :data:`deftx.ops.registry.OPS` with a Triton
backend, named as the op: ``topk``, ``scatter``, ``rsvd``, ``masked_step``), their shared
helpers (``_common``) and specialisation lists (``_<op>_specs``) live in the repository's
top-level ``kernels/`` folder. That folder has no ``__init__.py`` on
purpose: a regular package named ``kernels`` at the repository root would shadow the
third-party ``kernels`` distribution (Hugging Face's Hub kernel loader, which
``transformers`` imports) whenever the root is on ``sys.path`` (``python -m pytest``,
scripts run from the checkout). Installed from a wheel, the op modules are copied
beside this file (``setup.py``); run from a checkout or an editable install, this
package adds the checkout's ``kernels/`` folder to its ``__path__``.

Each kernel module holds its ``@triton.jit`` kernels and their launchers, and exposes the
specialisations it is compiled for (``SPECIALIZATIONS``, built by its ``_<op>_specs`` module);
its cost model is pure Python in :mod:`deftx.ops.cost`. Nothing here imports :mod:`deftx.ops`
at run time (the ops dispatch to the kernels, not the reverse). This package adds what every
tool needs:

* :class:`KernelSpec` — one compiled specialisation; the op registry lists every op module's
  (:func:`deftx.ops.registry.kernel_specializations`) for the static compile test and
  ``deftx profile --static``.
* :func:`kernel_module` — the module to launch for a device: the ordinary
  (compiled) module for CUDA tensors, or a copy whose kernels run under the Triton
  interpreter for CPU tensors, so every kernel can run anywhere. It also works
  around interpreter defects (Triton 3.6 and 3.9): interpreted kernels could not call
  ``@jit`` helpers of other modules (``tl.sum``, ``kernels/_common.py``), and Triton's own
  device call leaves the language patched; Triton 3.6's scalar ``__index__`` fails on
  NumPy >= 2.4.
* :func:`upload` — the launchers' one host-to-device copy. A launcher plans on the
  host with Python integers (addresses, sizes, offsets: never a read of device data)
  and moves each plan with one upload, so every torch op it runs is device work: the
  tests count a launcher's launches and host syncs on CPU tensors
  (:mod:`deftx.perf.counters`) and get the GPU's counts.
"""

from __future__ import annotations

import contextvars
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch


def _source_tree_kernels() -> list[str]:
    """The checkout's top-level ``kernels/`` folder, when the op modules are not installed here.

    Returns ``[]`` in an installed wheel (the op modules sit beside this file), else
    ``["<checkout>/kernels"]``.
    """
    here = Path(__file__).resolve().parent
    if (here / "_common.py").exists():
        return []
    checkout_kernels = here.parent.parent / "kernels"
    if not (checkout_kernels / "_common.py").exists():
        raise ImportError(f"deftx.kernels: the op modules are neither in {here} nor in {checkout_kernels}")
    return [str(checkout_kernels)]


__path__ = [*__path__, *_source_tree_kernels()]


@dataclass(frozen=True)
class KernelSpec:
    """One compiled specialisation of a ``@triton.jit`` kernel.

    Attributes:
        name: unique, human-readable name (``"topk_histogram_fp32"``).
        kernel: the ``triton.jit`` function.
        signature: argument name -> Triton type string (``"*fp32"``, ``"i32"``,
            ``"constexpr"``), in argument order, as ``triton.compiler.ASTSource`` wants.
        constexprs: values of the constexpr arguments.
        num_warps, num_stages: launch options it is compiled with.
        fp_fusion: whether the compiler may contract ``a * b + c`` into one fused multiply-add
            (Triton's ``enable_fp_fusion``; the launch must pass the same value).
        promises: design promises checked in the SASS, from
            ``{"no_float_atomics", "block_local_histogram", "vectorized_loads",
            "tensor_cores"}``.
    """

    name: str
    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    fp_fusion: bool = True
    promises: frozenset[str] = frozenset()


def upload(values: Sequence[int], device: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``values`` as a 1-D integer tensor on ``device``: one copy, and the host does not wait.

    On CUDA the host buffer is pinned and copied asynchronously (a copy from pageable memory
    makes torch wait for the stream first); the caching host allocator keeps the buffer until
    the copy has run. Elsewhere it is one ordinary copy, so the op count is the same.
    """
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        host = host.pin_memory()
    out = torch.empty(host.shape, dtype=dtype, device=device)
    out.copy_(host, non_blocking=True)
    return out


_INTERPRETED: dict[str, ModuleType] = {}
_INSIDE_INTERPRETED_RUN: contextvars.ContextVar[bool] = contextvars.ContextVar("deftx_interpreted_run", default=False)


def _interpreted_jit_call(original_call):
    """``JITFunction.__call__`` that, inside an interpreted launch, runs the callee interpreted too.

    Triton's own ``@jit`` helpers (``tl.sum``, ``tl.cumsum``, ``tl.zeros_like``...) and those of
    ``kernels/_common.py`` were decorated when their module was imported, as compiled
    ``JITFunction`` objects; an interpreted kernel that calls them would otherwise fail with
    "Cannot call @triton.jit'd outside of the scope of a kernel". Outside interpreted launches
    the original error is kept.

    The callee's language modules are patched for the interpreter only for the call and restored
    after it: Triton's own device call leaves them patched, which for a helper of another module
    (``triton.language.standard`` sees ``triton.language.core``, which the kernel does not) would
    break every later compilation in the process.
    """
    from triton.runtime import interpreter

    cache: dict[int, interpreter.InterpretedFunction] = {}

    def call(self, *args, **kwargs):
        if not _INSIDE_INTERPRETED_RUN.get():
            return original_call(self, *args, **kwargs)
        fn = cache.setdefault(id(self.fn), interpreter.InterpretedFunction(self.fn))
        scope = interpreter._patch_lang(fn.fn)
        try:
            return fn.rewrite()(*args, **kwargs)
        finally:
            scope.restore()

    return call


def _mark_interpreted_runs(module: ModuleType) -> None:
    """Flag every launch of the module's interpreted kernels (see :func:`_interpreted_jit_call`)."""
    from triton.runtime.interpreter import InterpretedFunction

    for value in vars(module).values():
        if isinstance(value, InterpretedFunction):
            run = value.run

            def flagged_run(*args, _run=run, **kwargs):
                token = _INSIDE_INTERPRETED_RUN.set(True)
                try:
                    return _run(*args, **kwargs)
                finally:
                    _INSIDE_INTERPRETED_RUN.reset(token)

            value.run = flagged_run


def _scalar_index(tensor) -> int:
    """``operator.index`` of an interpreted scalar tensor: its one element as a Python int.

    The interpreter holds a scalar as a one-element array of any rank; ``.item()`` reads it
    on every NumPy version.
    """
    return int(tensor.handle.data.item())


def _index_by_item(patch_lang_tensor):
    """The interpreter's ``_patch_lang_tensor`` with ``tensor.__index__`` replaced by
    :func:`_scalar_index`.

    Triton 3.6 defines ``__index__`` as ``int(self.handle.data)``, which NumPy >= 2.4 rejects
    for arrays of rank > 0 ("only 0-dimensional arrays can be converted to Python scalars"):
    every ``range()`` over a program id or a loaded bound fails. Triton 3.9 squeezes the array
    first; reading the element with ``.item()`` is right for both.
    """

    def patch(tensor, scope):
        patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", _scalar_index)

    patch._deftx_patched = True
    return patch


def _patch_interpreter() -> None:
    """Install the interpreter fixes of this module (idempotent): interpreted kernels may call
    ``@jit`` helpers (:func:`_interpreted_jit_call`) and index with scalar tensors on any NumPy
    (:func:`_index_by_item`)."""
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction

    if not getattr(JITFunction.__call__, "_deftx_patched", False):
        patched = _interpreted_jit_call(JITFunction.__call__)
        patched._deftx_patched = True
        JITFunction.__call__ = patched
    if not getattr(interpreter._patch_lang_tensor, "_deftx_patched", False):
        interpreter._patch_lang_tensor = _index_by_item(interpreter._patch_lang_tensor)


def _load_interpreted_copy(name: str, module: ModuleType) -> ModuleType:
    import triton.knobs as knobs

    qualified = f"{__name__}._interpreted_{name}"
    spec = importlib.util.spec_from_file_location(qualified, module.__file__)
    copy = importlib.util.module_from_spec(spec)
    with knobs.runtime.scope():
        knobs.runtime.interpret = True
        sys.modules[qualified] = copy
        spec.loader.exec_module(copy)
    _mark_interpreted_runs(copy)
    return copy


def kernel_module(name: str, *, interpret: bool) -> ModuleType:
    """The kernel module ``name`` whose launchers run on GPU, or under the interpreter.

    Triton decides at decoration time whether a kernel is compiled or interpreted,
    so the interpreted variant is a second copy of the module loaded with the
    interpreter switched on (unless ``TRITON_INTERPRET=1`` was set before triton was
    imported, in which case the module itself is interpreted). Use ``interpret=True``
    for CPU tensors.
    """
    module = importlib.import_module(f"{__name__}.{name}")
    if not interpret:
        return module
    if name not in _INTERPRETED:
        import triton.knobs as knobs

        _patch_interpreter()

        _INTERPRETED[name] = module if knobs.runtime.interpret else _load_interpreted_copy(name, module)
    return _INTERPRETED[name]
