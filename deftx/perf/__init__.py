"""deftx's performance tooling: benchmarks (``deftx bench``) and kernel profiles (``deftx profile``).

Shared by both commands, the pytest-benchmark suite in ``benchmarks/`` and the GPU check:

* :mod:`deftx.perf.shapes` — parameter shape sets (XLM-R base, mBERT, LLaMA-7B, ...,
  custom JSON) and ``--scale``; :mod:`deftx.perf.targets` — the GPUs' datasheet figures.
* :mod:`deftx.perf.cases` — per op: synthetic inputs (:mod:`deftx.perf.synthetic`), the
  implementations (deftx per backend, baselines), cost models.
* :mod:`deftx.perf.timing`, :mod:`deftx.perf.memory` (+ :mod:`deftx.perf.memory_probe`),
  :mod:`deftx.perf.counters`, :mod:`deftx.perf.overhead` — how time, peak extra memory,
  launches and host syncs are measured.
* :mod:`deftx.perf.roofs` — the device's roofs measured in the run; :mod:`deftx.perf.roofline`
  — each op's time predicted from its bytes and FLOPs on a datasheet target;
  :mod:`deftx.perf.predicted` — the two side by side.
* :mod:`deftx.perf.suite` (the benchmark suite), :mod:`deftx.perf.scaling` (the size / K
  study), :mod:`deftx.perf.anchor` (the selection anchor table), :mod:`deftx.perf.report`
  (tables, JSON, plots).
* :mod:`deftx.perf.static` — kernels compiled for sm_80 / sm_90 with no GPU: registers,
  shared memory, SASS, the design checks and occupancy; :mod:`deftx.perf.static_report`
  writes the static report (JSON + markdown, PREDICTED).
* :mod:`deftx.perf.trace` — torch.profiler traces of the ops and of a training step,
  summarised per kernel.
"""
