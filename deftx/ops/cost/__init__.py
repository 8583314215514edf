"""Cost models of the ops, one pure-Python module per op (no Triton): HBM bytes moved and FLOPs
of deftx's implementation and of the torch baseline it replaces.

The roofline prediction, the benchmarks' achieved-bandwidth figures and the scaling model all
read these (through :mod:`deftx.ops.registry`); the kernels import the plan constants they
share with the models (the top-k radix plan).
"""

SECTOR_BYTES = 32
"""Bytes of one DRAM sector, the unit a gathered or scattered access moves."""
