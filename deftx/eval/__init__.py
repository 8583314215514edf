"""deftx.eval: zero-shot evaluation of composed SFTs, result tables, plots and paired statistics.

- :mod:`~deftx.eval.metrics`: accuracy, macro-F1, confusion matrix.
- :mod:`~deftx.eval.predict`: batched arg-max inference of a sequence classifier.
- :mod:`~deftx.eval.zero_shot`: score θ0 + φ_task + s·φ_language, reverted bit-exactly after; the
  evaluation loop over targets × compositions (:func:`~deftx.eval.zero_shot.score_compositions`).
- :mod:`~deftx.eval.report`: seed aggregation (mean ± sd), markdown / CSV tables, bar plot.
- :mod:`~deftx.eval.paired`: paired differences between methods over seeds, bootstrap intervals.

The pipeline that trains what is evaluated here is :mod:`deftx.pipeline`.
"""
