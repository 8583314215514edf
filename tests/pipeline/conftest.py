"""Fixtures of the pipeline tests: the evaluation tests' (one torch thread, the tiny e5-vocabulary BERT)."""

from tests.eval.conftest import e5_dir, one_thread, tiny_model_dir  # noqa: F401  (fixtures, reused)
