"""Static analysis of the compiled kernels (``deftx profile --static``; no GPU needed).

* :mod:`~deftx.perf.static.compile` compiles every declared kernel specialisation for
  sm_80 / sm_90 and reads registers, local memory, shared memory and SASS from the cubin;
* :mod:`~deftx.perf.static.sass` classifies SASS instructions (memory widths, atomics, MMA);
* :mod:`~deftx.perf.static.checks` verifies the kernels' design promises in the SASS;
* :mod:`~deftx.perf.static.occupancy` turns resources into theoretical warps per SM;
* :mod:`~deftx.perf.static.analysis` builds the static report of every specialisation, with
  the roofline prediction of a workload (:mod:`deftx.perf.report` renders it).
"""
