"""Kernel profiling without and with a GPU (``deftx profile``).

Static (no GPU needed):

* :mod:`~deftx.profile.compile` compiles every declared kernel specialisation for
  sm_80 / sm_90 and reads registers, local memory, shared memory and SASS from the cubin;
* :mod:`~deftx.profile.sass` classifies SASS instructions (memory widths, atomics, MMA);
* :mod:`~deftx.profile.checks` verifies the kernels' design promises in the SASS;
* :mod:`~deftx.profile.occupancy` turns resources into theoretical warps per SM;
* :mod:`~deftx.profile.roofline` predicts each op's time on a target from its bytes and
  FLOPs models (:mod:`~deftx.profile.shapes` holds the model shape sets);
* :mod:`~deftx.profile.report` writes the static report (JSON + markdown, PREDICTED).

Runtime: :mod:`~deftx.profile.trace` records torch.profiler traces of the ops and of a
training step and summarises them per kernel.
"""
