"""``deftx gpu-check``: the one prepared command for a first (or any) run on a lent GPU.

One call on the GPU machine installs deftx onto that machine's own torch without a
network, prints the versions and the GPU, runs the CUDA tests, measures the ceilings
(copy bandwidth, matmul rate), a histogram-pass micro-benchmark and the benchmarks
against the dense baselines at full size (XLM-R base fp32, Llama-2-7B bf16), runs the
sparse fine-tuning loop on CUDA, and profiles every kernel with ``ncu`` and
``compute-sanitizer``. Every stage has a time budget (all of them together fit the
8 minutes the issue allows), runs in its own process killed at its budget, and is
selectable from the command line, so a second run can redo only what failed.

Modules:

* :mod:`deftx.gpucheck.plan` — the stages, their budgets, the selection.
* :mod:`deftx.gpucheck.context` — what every stage process is told (devices, sizes, folders, deadline).
* :mod:`deftx.gpucheck.runner` — runs the planned stages, each in a subprocess under its cap.
* :mod:`deftx.gpucheck.outputs` — the output folder: at most 8 files, bundled logs.
* :mod:`deftx.gpucheck.summary` — the summary (JSON + markdown) and the issue's goals.
* :mod:`deftx.gpucheck.stages` — one module per stage.
* :mod:`deftx.gpucheck.kernel_cases` — one call of each kernel, the target of ncu and the sanitizer.
"""
