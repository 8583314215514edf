"""deftx's performance tooling: benchmarks (``deftx bench``) and kernel profiles (``deftx profile``).

Shared by both commands, the pytest-benchmark suite in ``benchmarks/`` and the GPU check:

* :mod:`deftx.perf.shapes` — parameter shape sets, every model's defined once (XLM-R base,
  mBERT, LLaMA-7B, ..., custom JSON) and ``--scale``; :mod:`deftx.perf.workload` — a shape
  set in one dtype with the op settings (what the profile runs and prices);
  :mod:`deftx.perf.targets` — the GPUs' datasheet figures.
* :mod:`deftx.perf.cases` — per op: synthetic inputs (:mod:`deftx.perf.synthetic`), the
  implementations (deftx per backend, baselines), cost models.
* :mod:`deftx.perf.timing`, :mod:`deftx.perf.memory` (+ :mod:`deftx.perf.memory_probe`),
  :mod:`deftx.perf.counters`, :mod:`deftx.perf.overhead` — how time, peak extra memory,
  launches and host syncs are measured.
* :mod:`deftx.perf.roofline` — the device's roofs measured in the run, and each op's time
  predicted from its bytes and FLOPs on a datasheet target; :mod:`deftx.perf.predicted` —
  the prediction beside the benchmark's measurements.
* :mod:`deftx.perf.suite` (the benchmark suite), :mod:`deftx.perf.scaling` (the size / K
  study), :mod:`deftx.perf.anchor` (the selection anchor table), :mod:`deftx.perf.report`
  (tables, JSON, plots of every perf document, the static report's markdown included).
* :mod:`deftx.perf.static` — kernels compiled for sm_80 / sm_90 with no GPU: registers,
  shared memory, SASS, the design checks and occupancy, gathered with the roofline into the
  static report (:mod:`deftx.perf.static.analysis`; JSON + markdown, PREDICTED).
* :mod:`deftx.perf.trace` — torch.profiler traces of the ops and of a training step,
  summarised per kernel.
"""
