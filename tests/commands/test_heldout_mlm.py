"""``deftx heldout-mlm`` end to end on a tiny model: train-lang, then the held-out rows and their errors."""

from __future__ import annotations

import contextlib
import csv
import io
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from deftx.cli import main
from deftx.data import americasnlp, default_data_dir, nusax
from deftx.eval.language import heldout_table
from deftx.pipeline import heldout
from deftx.pipeline.config import load_config
from deftx.pipeline.head import head_texts
from deftx.pipeline.heldout import AMERICASNLP, heldout_batches, heldout_texts
from deftx.pipeline.workspace import Workspace
from tests.commands.test_commands import tiny_config


def write_config(tmp_path, model_dir, **overrides) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**tiny_config(tmp_path, model_dir), "methods": {"lt-sft": None},
                                    "language_text_splits": ["train"], "language_scale": [0.5, 1.25],
                                    **overrides}))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, short_heldout_data_dir):
    """A tiny config whose madurese language SFT trained on the MT train split only."""
    tmp = tmp_path_factory.mktemp("heldout")
    config = write_config(tmp, tiny_model_dir, data_dir=str(short_heldout_data_dir))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEFTX_CACHE", str(tmp / "cache"))
        assert main(["train-lang", config, "--language", "madurese"]) == 0
    return tmp, config


def test_rows_for_theta0_and_each_scale_in_table_and_csv(trained, monkeypatch, capsys):
    tmp, config = trained
    monkeypatch.setenv("DEFTX_CACHE", str(tmp / "cache"))
    capsys.readouterr()
    assert main(["heldout-mlm", config, "--csv", str(tmp / "out" / "heldout.csv")]) == 0
    out = capsys.readouterr().out
    assert "held-out text: NusaX MT valid" in out
    with (tmp / "out" / "heldout.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["seed"], r["language"], r["method"], r["scale"]) for r in rows] == [
        ("0", "madurese", "θ0", "0.0"), ("0", "madurese", "lt-sft", "0.5"), ("0", "madurese", "lt-sft", "1.0"),
        ("0", "madurese", "lt-sft", "1.25")]
    assert float(rows[0]["loss_change"]) == 0.0
    masked = int(rows[0]["masked_tokens"])
    assert all(int(r["masked_tokens"]) == masked for r in rows), "one set of masks for every row"
    ws = Workspace.open(load_config(config))
    assert masked == sum(int((b["labels"] != -100).sum()) for b in heldout_batches(ws, "madurese")) > 0
    for row in rows[1:]:
        change = (float(rows[0]["loss"]) - float(row["loss"])) / float(rows[0]["loss"])
        assert float(row["loss_change"]) == pytest.approx(change)
        assert f"| 0 | madurese | lt-sft | {float(row['scale']):g} | {float(row['loss']):.4f} |" in out


def test_another_mask_seed_scores_other_tokens_of_the_same_text(trained, monkeypatch, capsys):
    """--mask-seed 1 masks other positions of the same sentences; its rows are scored on those masks, and the
    default is the masks of seed 0 (those of the pipeline's heldout.csv)."""
    tmp, config = trained
    monkeypatch.setenv("DEFTX_CACHE", str(tmp / "cache"))
    ws = Workspace.open(load_config(config))
    default, other = heldout_batches(ws, "madurese"), heldout_batches(ws, "madurese", mask_seed=1)

    def text(batch):
        return torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])

    assert all(torch.equal(text(a), text(b)) for a, b in zip(default, other, strict=True)), "the same text"
    assert not all(torch.equal(a["labels"], b["labels"]) for a, b in zip(default, other, strict=True))
    rows = {}
    for seed_args in ([], ["--mask-seed", "0"], ["--mask-seed", "1"]):
        path = tmp / f"masks{''.join(seed_args)}.csv"
        assert main(["heldout-mlm", config, "--scales", "1", "--csv", str(path), *seed_args]) == 0
        with path.open() as handle:
            rows[tuple(seed_args)] = list(csv.DictReader(handle))
    assert "masks of seed 1" in capsys.readouterr().out
    assert rows[()] == rows[("--mask-seed", "0")]
    assert rows[("--mask-seed", "1")] != rows[()]
    masked = sum(int((b["labels"] != -100).sum()) for b in other)
    assert [int(r["masked_tokens"]) for r in rows[("--mask-seed", "1")]] == [masked, masked]


def test_the_heldout_text_is_the_valid_split_the_sft_did_not_train_on(trained):
    _, config = trained
    ws = Workspace.open(load_config(config))
    valid = nusax.load_mt_text(ws.data_dir, "madurese", ["valid"])
    train = set(nusax.load_mt_text(ws.data_dir, "madurese", ["train"]))
    assert valid and not set(valid) & train
    batches = heldout_batches(ws, "madurese")
    assert sum(b["input_ids"].shape[0] for b in batches) >= len(valid)


@pytest.mark.parametrize(("args", "message"), [
    (["--languages", "buginese"], "no language SFT of buginese for seed 0"),
    (["--seeds", "3"], "no NusaX MT language SFT under"),
    (["--output-dir", "{tmp}/absent"], "does not exist: nothing trained there to score"),
])
def test_missing_sfts_are_one_clear_error(trained, monkeypatch, capsys, args, message):
    tmp, config = trained
    monkeypatch.setenv("DEFTX_CACHE", str(tmp / "cache"))
    assert main(["heldout-mlm", config, *(a.format(tmp=tmp) for a in args)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("deftx heldout-mlm: error:")
    assert not (tmp / "absent").exists(), "a read-only command makes no folder"


def test_sfts_trained_on_every_split_but_test_leave_no_heldout_text(tmp_path, tiny_model_dir, capsys):
    config = write_config(tmp_path, tiny_model_dir, language_text_splits=["train", "valid"])
    (tmp_path / "run").mkdir()
    assert main(["heldout-mlm", config]) == 2
    assert "no held-out text to score language SFTs on" in capsys.readouterr().err


def test_a_variant_of_an_ablation_config_is_scored_in_its_own_run_folder(tmp_path, tiny_model_dir, monkeypatch,
                                                                          capsys, short_heldout_data_dir):
    """``deftx ablate`` trains two variants of different language K; --variant picks the folder of one."""
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    base = {key: value for key, value in tiny_config(tmp_path, tiny_model_dir).items()
            if key not in ("name", "output_dir", "results_dir", "seeds", "americasnli")}
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny-ablation", "output_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
        "seeds": [0], "base": {**base, "targets": ["madurese"], "methods": {"lt-sft": None},
                               "data_dir": str(short_heldout_data_dir)},
        "variants": {"small-k": {"language_sft.k": 0.005}, "large-k": {"language_sft.k": 0.02}}}))
    assert main(["ablate", str(path), "--quiet"]) == 0
    rows = {}
    for variant in ("small-k", "large-k"):
        assert main(["heldout-mlm", str(path), "--variant", variant, "--languages", "madurese", "--scales", "1",
                     "--csv", str(tmp_path / f"{variant}.csv")]) == 0
        with (tmp_path / f"{variant}.csv").open() as handle:
            rows[variant] = list(csv.DictReader(handle))
    assert [r["method"] for r in rows["small-k"]] == ["θ0", "lt-sft"]
    assert rows["small-k"][0]["loss"] == rows["large-k"][0]["loss"], "θ0 and the masks are the same"
    assert rows["small-k"][1]["loss"] != rows["large-k"][1]["loss"], "each variant's own SFT"
    capsys.readouterr()
    assert main(["heldout-mlm", str(path), "--variant", "absent"]) == 2
    assert "--variant 'absent' is not a variant of" in capsys.readouterr().err

    heldout = read_rows(tmp_path / "results" / "heldout.csv")
    assert {(r["variant"], r["language"]) for r in heldout} == {
        (variant, language) for variant in ("small-k", "large-k") for language in ("madurese", "indonesian")}
    for variant in ("small-k", "large-k"):
        ours = {key: {k: v for k, v in row.items() if k not in ("variant", "variant_hash")}
                for key, row in keyed([r for r in heldout if r["variant"] == variant]).items()}
        command = keyed(rows[variant])
        assert {key: ours[key] for key in command} == command, "the ablation's rows are the command's"
    report = (tmp_path / "results" / "results.md").read_text()
    assert "### Held-out masked-LM check of the language SFTs (`heldout.csv`)" in report
    targets_only = [r for r in heldout if r["language"] == "madurese"]
    assert "\n".join(heldout_table(targets_only, "variant", "loss_change")) in report

    (tmp_path / "results" / "heldout.csv").unlink()
    assert main(["ablate", str(path), "--quiet", "--no-heldout"]) == 0
    assert not (tmp_path / "results" / "heldout.csv").exists()
    assert "Held-out masked-LM check" not in (tmp_path / "results" / "results.md").read_text()
    capsys.readouterr()
    assert main(["ablate", str(path), "--quiet"]) == 0
    assert capsys.readouterr().out.count("held-out rows added to heldout.csv") == 2, "no retraining, only scoring"
    assert read_rows(tmp_path / "results" / "heldout.csv") == heldout


def read_rows(path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def keyed(rows: list[dict[str, str]]) -> dict[tuple[str, ...], dict[str, str]]:
    return {(r["seed"], r["language"], r["method"], r["scale"]): r for r in rows}


def test_the_pipeline_scores_its_language_sfts_seed_by_seed_as_the_command_does(tmp_path, tiny_model_dir,
                                                                                monkeypatch, short_heldout_data_dir):
    """Seed 0, then seed 1 into the same results folder: heldout.csv keeps seed 0's rows and equals what
    ``deftx heldout-mlm`` computes; results.md's tables cover both seeds (the table's arithmetic is
    tested in tests/eval/test_language_heldout.py)."""
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    config = write_config(tmp_path, tiny_model_dir, targets=["madurese"], americasnli=None,
                          methods={"plain": None, "denoised": {"rank": 2}}, data_dir=str(short_heldout_data_dir))
    assert main(["pipeline", config, "--quiet"]) == 0
    assert main(["pipeline", config, "--quiet", "--seeds", "1"]) == 0
    rows = read_rows(tmp_path / "results" / "heldout.csv")
    assert [tuple(r) for r in rows[:1]] == [("seed", "language", "method", "scale", "loss", "loss_change",
                                             "accuracy", "masked_tokens")]
    assert [(r["seed"], r["language"], r["method"], r["scale"]) for r in rows if r["seed"] == "0"] == [
        ("0", language, method, scale) for language in ("madurese", "indonesian")
        for method, scale in (("θ0", "0.0"), *((m, s) for m in ("denoised", "plain") for s in ("0.5", "1.0", "1.25")))]
    assert {r["seed"] for r in rows} == {"0", "1"}
    assert main(["heldout-mlm", config, "--seeds", "0", "1", "--csv", str(tmp_path / "command.csv")]) == 0
    assert keyed(rows) == keyed(read_rows(tmp_path / "command.csv"))

    report = (tmp_path / "results" / "results.md").read_text()
    assert "Held-out masked-LM check (`heldout.csv`)" in report and "NusaX MT valid text" in report
    for metric in ("loss_change", "accuracy"):
        table = heldout_table(rows, "language", metric, [("denoised", "plain")])
        assert table[0].endswith("| denoised − plain ×0.5 | denoised − plain ×1 | denoised − plain ×1.25 |")
        assert "\n".join(table) in report
        assert all(re.search(r"\(2(; [0-2] > 0)?\)$", cell) for line in table[2:]
                   for cell in line.strip("| ").split(" | ")[1:]), "every cell over both seeds: seed 0's rows are kept"

    assert main(["pipeline", config, "--quiet", "--seeds", "1", "--no-heldout"]) == 0
    assert {r["seed"] for r in read_rows(tmp_path / "results" / "heldout.csv")} == {"0"}, (
        "seed 1 ran without the check; seed 0's rows are kept")


def test_a_pipeline_without_heldout_text_says_so_and_writes_no_heldout_csv(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    config = write_config(tmp_path, tiny_model_dir, targets=["madurese"], americasnli=None, baseline=False,
                          language_text_splits=["train", "valid"])
    assert main(["pipeline", config, "--quiet"]) == 0
    assert not (tmp_path / "results" / "heldout.csv").exists()
    assert "Held-out masked-LM check: none — the language SFTs trained on every NusaX MT split but test" in (
        tmp_path / "results" / "results.md").read_text()


def test_missing_heldout_text_fails_the_pipeline_before_any_training(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """A data root without the MT valid split: the check could not run after training, so the run stops first."""
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    shutil.copytree(default_data_dir() / "nusax", data / "nusax")
    (data / "nusax" / "datasets" / "mt" / "valid.csv").unlink()
    config = write_config(tmp_path, tiny_model_dir, targets=["madurese"], americasnli=None, data_dir=str(data))
    assert main(["pipeline", config, "--quiet"]) == 2
    assert "mt/valid.csv does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run" / "seed-0").exists(), "nothing trained"
    assert main(["pipeline", config, "--quiet", "--no-heldout", "--dry-run"]) == 0


@pytest.fixture(scope="module")
def trained_anli(tmp_path_factory, tiny_model_dir, short_heldout_data_dir):
    """A tiny config whose bzd AmericasNLI language SFT trained on AmericasNLP 2021 train text only."""
    tmp = tmp_path_factory.mktemp("heldout-anli")
    config = write_config(tmp, tiny_model_dir, americasnlp_text_splits=["train"],
                          data_dir=str(short_heldout_data_dir))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEFTX_CACHE", str(tmp / "cache"))
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(["train-lang", config, "--americasnlp", "--language", "bzd"]) == 0
    return tmp, config, out.getvalue()


def test_americasnli_sfts_train_on_americasnlp_train_and_are_scored_on_its_dev_text(trained_anli, monkeypatch,
                                                                                     capsys):
    tmp, config, log = trained_anli
    monkeypatch.setenv("DEFTX_CACHE", str(tmp / "cache"))
    ws = Workspace.open(load_config(config))
    train = americasnlp.load_text(ws.data_dir, "bzd", ["train"])
    dev = americasnlp.load_text(ws.data_dir, "bzd", ["dev"])
    assert f"language SFT bzd: {len(train)} sentences" in log, "trained on the train split only"
    assert heldout_texts(ws, "bzd", AMERICASNLP) == dev and set(dev) - set(train)

    assert main(["heldout-mlm", config, "--americasnlp", "--scales", "1", "--csv", str(tmp / "anli.csv")]) == 0
    assert "held-out text: AmericasNLP 2021 dev, masks of seed 0" in capsys.readouterr().out
    rows = read_rows(tmp / "anli.csv")
    assert [(r["seed"], r["language"], r["method"], r["scale"]) for r in rows] == [
        ("0", "bzd", "θ0", "0.0"), ("0", "bzd", "lt-sft", "1.0")]
    masked = sum(int((b["labels"] != -100).sum()) for b in heldout_batches(ws, "bzd", corpus=AMERICASNLP))
    assert [int(r["masked_tokens"]) for r in rows] == [masked, masked] and masked > 0
    assert rows[1]["loss"] != rows[0]["loss"], "the SFT is added"


@pytest.mark.parametrize(("args", "overrides", "message"), [
    (["--americasnlp", "--languages", "tar"], {},
     "train it first: deftx train-lang CONFIG --americasnlp --language tar"),
    ([], {}, "no NusaX MT language SFT under"),
    (["--americasnlp"], {"americasnlp_text_splits": ["train", "dev"]},
     "americasnlp_text_splits ['train', 'dev'] covers every AmericasNLP 2021 split but test"),
    (["--americasnlp", "--variant", "x"], {}, "--variant and --americasnlp exclude each other"),
])
def test_americasnli_heldout_errors_are_clear(trained_anli, tmp_path, monkeypatch, capsys, args, overrides,
                                              message):
    tmp, config, _ = trained_anli
    monkeypatch.setenv("DEFTX_CACHE", str(tmp / "cache"))
    if overrides:
        settings = yaml.safe_load(Path(config).read_text())
        config = str(tmp_path / "other.yaml")
        (tmp_path / "other.yaml").write_text(yaml.safe_dump({**settings, **overrides}))
    assert main(["heldout-mlm", config, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("deftx heldout-mlm: error:")


def test_the_mlm_heads_americasnlp_text_follows_americasnlp_text_splits(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir, americasnlp_text_splits=["train"],
                          mlm_head={"steps": 2, "batch_size": 8, "seq_len": 32, "texts": ["americasnlp"]})
    ws = Workspace.open(load_config(config))
    texts = head_texts(ws)["americasnlp"]
    assert texts == [text for code in americasnlp.FOLDERS for text in americasnlp.load_text(ws.data_dir, code, "train")]
    with_dev = Workspace.open(load_config(write_config(tmp_path, tiny_model_dir, mlm_head={"texts": ["americasnlp"]})))
    assert len(head_texts(with_dev)["americasnlp"]) > len(texts)


def test_the_pipeline_scores_its_americasnli_language_sfts_as_the_command_does(tmp_path, tiny_model_dir,
                                                                               monkeypatch, short_heldout_data_dir):
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    config = write_config(tmp_path, tiny_model_dir, targets=[], baseline=False, americasnlp_text_splits=["train"],
                          data_dir=str(short_heldout_data_dir))
    assert main(["pipeline", config, "--quiet"]) == 0
    rows = read_rows(tmp_path / "results" / "heldout.csv")
    assert {(r["language"], r["method"]) for r in rows} == {("bzd", "θ0"), ("bzd", "lt-sft")}
    assert main(["heldout-mlm", config, "--americasnlp", "--csv", str(tmp_path / "command.csv")]) == 0
    assert keyed(rows) == keyed(read_rows(tmp_path / "command.csv"))
    report = (tmp_path / "results" / "results.md").read_text()
    assert "Held-out masked-LM check (`heldout.csv`)" in report and "AmericasNLP 2021 dev text" in report
    assert "\n".join(heldout_table(rows, "language", "loss_change", [])) in report


def test_a_pipeline_scoring_both_corpora_builds_the_theta0_mlm_model_once(tmp_path, tiny_model_dir, monkeypatch,
                                                                           short_heldout_data_dir):
    """NusaX targets and AmericasNLI test languages both with held-out text: one θ0 MLM model scores both,
    and heldout.csv holds each corpus's rows as ``deftx heldout-mlm`` computes them."""
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    built = []
    build = heldout.build_mlm_model

    def counted_build(*args, **kwargs):
        built.append(args)
        return build(*args, **kwargs)

    monkeypatch.setattr(heldout, "build_mlm_model", counted_build)
    config = write_config(tmp_path, tiny_model_dir, targets=["madurese"], baseline=False,
                          americasnlp_text_splits=["train"], language_scale=1.0, data_dir=str(short_heldout_data_dir))
    assert main(["pipeline", config, "--quiet"]) == 0
    assert len(built) == 1, f"θ0's MLM model built {len(built)} times"
    rows = read_rows(tmp_path / "results" / "heldout.csv")
    assert {r["language"] for r in rows} == {"madurese", "indonesian", "bzd"}
    assert main(["heldout-mlm", config, "--csv", str(tmp_path / "nusax.csv")]) == 0
    assert main(["heldout-mlm", config, "--americasnlp", "--csv", str(tmp_path / "anli.csv")]) == 0
    assert keyed(rows) == keyed(read_rows(tmp_path / "nusax.csv") + read_rows(tmp_path / "anli.csv"))


@pytest.mark.parametrize(("scale", "why"), [("0", "scale 0 is θ0 itself, always a row"),
                                            ("-1", "a negative scale subtracts the SFT")])
def test_scales_not_above_zero_are_refused_at_argparse(tmp_path, capsys, scale, why):
    with pytest.raises(SystemExit) as raised:
        main(["heldout-mlm", str(tmp_path / "config.yaml"), "--scales", "1", scale])
    assert raised.value.code == 2
    assert f"argument --scales: expected a scale > 0, got '{scale}' ({why}" in capsys.readouterr().err


def test_scoring_on_cuda_is_not_refused_for_several_visible_gpus(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """heldout-mlm trains through no Trainer (no DataParallel): device cuda on a machine of 2 visible GPUs goes
    on to the run's SFTs (here none, for seed 3), where the pipeline's training commands refuse it."""
    config = write_config(tmp_path, tiny_model_dir, device="cuda")
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "a GPU")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["heldout-mlm", config, "--seeds", "3"]) == 2
    err = capsys.readouterr().err
    assert "no NusaX MT language SFT under" in err and "visible GPUs" not in err, err
    assert main(["train-lang", config, "--language", "madurese"]) == 2
    assert "2 visible GPUs" in capsys.readouterr().err, "a training command is still refused"


def test_held_out_scoring_defaults_to_the_languages_of_the_scorers_corpus():
    """heldout_seed without a language list took the NusaX languages whatever the corpus: an AmericasNLP
    scorer would look for NusaX folders among the AmericasNLI language SFTs (and score none)."""
    from deftx.pipeline.config import AMERICASNLP, NUSAX, parse_config
    from deftx.pipeline.run import heldout_languages

    config = parse_config({"targets": ["balinese"], "sources": ["indonesian"],
                           "americasnli": {"train_languages": ["gn"], "test_languages": ["bzd", "cni"]}})
    assert heldout_languages(config, NUSAX) == ("balinese", "indonesian")
    assert heldout_languages(config, AMERICASNLP) == ("bzd", "cni")
    assert heldout_languages(parse_config({"targets": ["balinese"]}), AMERICASNLP) == ()
