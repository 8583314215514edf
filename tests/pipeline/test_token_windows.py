"""A token window longer than the model accepts is a config error before any work (it was a RuntimeError in the
middle of training): the model's limit from its config.json, the windows of a config."""

from __future__ import annotations

import json

import pytest

from deftx.pipeline.config import ConfigError, parse_config
from deftx.pipeline.workspace import check_local_token_windows, check_token_windows, model_token_limit, token_windows


@pytest.mark.parametrize(("model_config", "limit"), [
    ({"model_type": "bert", "max_position_embeddings": 512}, 512),
    ({"model_type": "xlm-roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
    ({"model_type": "roberta", "max_position_embeddings": 130}, 128),
    ({"model_type": "deberta-v2", "max_position_embeddings": 512, "position_biased_input": False}, None),
    ({"model_type": "bert"}, None),
    ({"max_position_embeddings": True}, None),
])
def test_model_token_limit(model_config, limit):
    assert model_token_limit(model_config) == limit


def test_token_windows_name_each_key():
    config = parse_config({"targets": ["madurese"], "training": {"max_length": 64}, "mlm_head": {"seq_len": 32}})
    assert token_windows(config) == {"training.max_length": 64, "mlm_head.seq_len": 32}
    config = parse_config({"targets": ["madurese"], "language_sft": {"max_length": 96}})
    assert token_windows(config)["language_sft.max_length"] == 96


def test_check_token_windows(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 128}))
    fits = parse_config({"targets": ["madurese"], "model": str(tmp_path), "training": {"max_length": 128}})
    check_token_windows(fits, tmp_path)
    check_local_token_windows(fits)
    too_long = parse_config({"targets": ["madurese"], "model": str(tmp_path), "language_sft": {"max_length": 129}})
    for check in (lambda: check_token_windows(too_long, tmp_path), lambda: check_local_token_windows(too_long)):
        with pytest.raises(ConfigError, match=r"^config language_sft\.max_length: 129 tokens, but model .* accepts "
                                              r"at most 128 \(from max_position_embeddings in its config\.json\)$"):
            check()


def test_a_dry_run_checks_no_model_it_would_have_to_fetch(tmp_path):
    """A Hub id (or an absent folder) is not downloaded by a dry run: nothing to check there."""
    config = parse_config({"targets": ["madurese"], "model": str(tmp_path / "absent"),
                           "training": {"max_length": 4096}})
    check_local_token_windows(config)
