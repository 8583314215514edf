"""Helpers shared by the kernel modules: dtype maps, the address-table pointer, the table cache.

Not an op module (not in ``deftx.ops.registry.TRITON_OPS``). The interpreted copy of an op
module (``kernel_module(..., interpret=True)``) imports this compiled module like the original
does: its ``@triton.jit`` helpers run interpreted inside an interpreted launch (see
``deftx.kernels._interpreted_jit_call``), and :func:`interpreting` is evaluated by each op
module at its own import, so the copy sees the interpreter switched on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import torch
import triton
import triton.language as tl
from triton import knobs

Value = TypeVar("Value")

TL_DTYPES: dict[torch.dtype, tl.dtype] = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16,
                                          torch.float16: tl.float16}
"""The Triton element type of each float dtype the kernels take."""

DTYPE_NAMES: dict[torch.dtype, str] = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
"""Short names of the float dtypes: the Triton signature type (``"*" + name``) and spec names."""


def interpreting() -> tl.constexpr:
    """Whether kernels defined now run under the Triton interpreter, as a constexpr for kernels
    to branch on (the interpreter's casts and dots differ from the compiled ones).

    Call it at module level: the interpreted copy of a module is imported with the interpreter on.
    """
    return tl.constexpr(bool(knobs.runtime.interpret))


@triton.jit
def table_pointer(table, index, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Entry ``index`` of an int64 address table as a ``DTYPE`` pointer (16-byte aligned if ALIGNED)."""
    pointer = tl.load(table + index).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        pointer = tl.multiple_of(pointer, 16)
    return pointer


class TableCache(Generic[Value]):
    """The launchers' tables on the device, by content (addresses, sizes): a step over the same
    tensors uploads nothing. The oldest entry goes when ``size`` are held."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._tables: dict[tuple, Value] = {}

    def get(self, key: tuple, build: Callable[[], Value]) -> Value:
        """``build()`` on a miss (then kept), else the table built before for ``key``."""
        value = self._tables.get(key)
        if value is None:
            value = build()
            if len(self._tables) >= self.size:
                self._tables.pop(next(iter(self._tables)))
            self._tables[key] = value
        return value
