"""deftx's benchmark suite: the ops against their torch baselines, and the scaling study.

Shared by ``deftx bench`` (:mod:`deftx.commands.bench`) and the pytest-benchmark suite
in ``benchmarks/``:

* :mod:`deftx.bench.shapes` — parameter shape sets (XLM-R base, mBERT, LLaMA-7B, ...,
  custom JSON) and ``--scale``.
* :mod:`deftx.bench.cases` — per op: synthetic inputs, the implementations (deftx per
  backend, baselines), cost models.
* :mod:`deftx.bench.timing`, :mod:`deftx.bench.memory`, :mod:`deftx.bench.roofline` —
  how time, peak extra memory and the roofs are measured.
* :mod:`deftx.bench.runner` (the suite), :mod:`deftx.bench.scaling` (the study),
  :mod:`deftx.bench.report` (tables, JSON, plots).
"""
