"""A NusaX target or source that the data root lacks (a misspelt name) is refused when the workspace opens,
before the MLM head or any SFT is trained and before any output folder is made."""

from __future__ import annotations

import pytest
import yaml

from deftx.cli import main
from deftx.pipeline.config import parse_config
from deftx.pipeline.workspace import check_nusax_languages


def data_root(tmp_path, languages=("indonesian", "madurese", "buginese")):
    for language in languages:
        (tmp_path / "data" / "nusax" / "datasets" / "sentiment" / language).mkdir(parents=True)
    return tmp_path / "data"


def test_every_target_and_source_needs_its_folder(tmp_path):
    root = data_root(tmp_path)
    check_nusax_languages(parse_config({"targets": ["madurese", "buginese"], "sources": ["indonesian"]}), root)
    with pytest.raises(ValueError, match=r"^config targets/sources: maduresee, javanese not found in the NusaX data "
                                         r"under .* \(languages there: buginese, indonesian, madurese\)$"):
        check_nusax_languages(parse_config({"targets": ["maduresee", "buginese"], "sources": ["javanese"]}), root)


def test_the_pipeline_stops_before_making_its_folders(tmp_path, tiny_model_dir, capsys):
    config = {"name": "typo", "model": str(tiny_model_dir), "data_dir": str(data_root(tmp_path)),
              "output_dir": str(tmp_path / "run"), "targets": ["maduresee"], "methods": {"lt-sft": None}}
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(config))
    assert main(["pipeline", str(tmp_path / "typo.yaml")]) == 2
    assert "maduresee not found in the NusaX data" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
