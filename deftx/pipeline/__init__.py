"""deftx.pipeline: ``deftx pipeline CONFIG`` and ``deftx ablate CONFIG``, from one config file to result tables.

- :mod:`~deftx.pipeline.config`: the config file (every key, its default, its validation).
- :mod:`~deftx.pipeline.workspace`: one run's resolved model, data, device and folders.
- :mod:`~deftx.pipeline.head`: the MLM head warm-up every language SFT trains under.
- :mod:`~deftx.pipeline.steps`: language SFTs, task SFTs and the full fine-tuning baseline, each
  step identified by the very inputs it is called with (:mod:`deftx.train.identity`) and shared
  between runs through a :class:`~deftx.train.store.StepStore`.
- :mod:`~deftx.pipeline.run`: every step of a config, seed by seed, and its zero-shot evaluation
  (:func:`deftx.eval.zero_shot.score_compositions`).
- :mod:`~deftx.pipeline.outputs`: results.md, the CSVs, the plot, timings and disk use.
- :mod:`~deftx.pipeline.plan`: ``deftx pipeline --dry-run``.
- :mod:`~deftx.pipeline.ablation`: ``deftx ablate``, variants × seeds on the valid splits.

Imports go one way: config <- workspace <- head, steps <- run <- ablation; nothing here is
imported by :mod:`deftx.eval` or :mod:`deftx.train`.
"""
