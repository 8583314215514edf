"""deftx.eval: zero-shot evaluation of composed SFTs, result tables and plots, the pipeline.

- :mod:`~deftx.eval.metrics`: accuracy, macro-F1, confusion matrix.
- :mod:`~deftx.eval.predict`: batched arg-max inference of a sequence classifier.
- :mod:`~deftx.eval.zero_shot`: score θ0 + φ_task + s·φ_language, reverted bit-exactly after.
- :mod:`~deftx.eval.report`: seed aggregation (mean ± sd), markdown / CSV tables, bar plot.
- :mod:`~deftx.eval.config` and :mod:`~deftx.eval.pipeline`: ``deftx pipeline CONFIG``.
- :mod:`~deftx.eval.ablation`: ``deftx ablate CONFIG``, variants × seeds on the valid splits,
  phase 1 shared between variants by a content hash.
"""
