"""Bad input to the training, evaluation and profiling commands: a clear message naming the problem, exit code 2,
no traceback, bounded work (a YAML alias bomb is refused in milliseconds)."""

from __future__ import annotations

import time

import pytest
import torch
import yaml

from deftx.cli import main
from deftx.sft import ParamInfo, SparseDiff


def alias_bomb(levels: int = 9) -> str:
    """A YAML flow list whose last item expands to 9**levels strings (a billion laughs), built from anchors."""
    anchors = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    anchors += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "[" + ", ".join(anchors) + "]"


@pytest.fixture
def paths(tmp_path):
    """A model folder (config.json only), a data root, a valid SFT, a garbage file, a base config."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}')
    bad_model = tmp_path / "bad-model"
    bad_model.mkdir()
    (bad_model / "config.json").write_text('{"model_type": "bert", "hidden_size": ')
    data = tmp_path / "data"
    data.mkdir()
    sft = tmp_path / "ok.safetensors"
    SparseDiff({"w": torch.tensor([0])}, {"w": torch.ones(1)}, {"w": ParamInfo((3,), torch.float32)}).save(sft)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 40)
    return {"tmp": tmp_path, "model": model, "bad_model": bad_model, "data": data, "sft": sft, "garbage": garbage}


def base_config(paths) -> dict:
    return {"targets": ["madurese"], "model": str(paths["model"]), "data_dir": str(paths["data"]),
            "output_dir": str(paths["tmp"] / "run")}


def write_config(paths, text_or_overrides, name="config.yaml"):
    path = paths["tmp"] / name
    if isinstance(text_or_overrides, str):
        path.write_text(text_or_overrides)
    else:
        path.write_text(yaml.safe_dump({**base_config(paths), **text_or_overrides}))
    return str(path)


CONFIG_CASES = [
    ("malformed YAML", "targets: [madurese\n", "cannot parse"),
    ("malformed YAML's place", "targets: [madurese]\nseeds: [0\nname: x: y\n",
     r"cannot parse: line 3, column \d+: .*\(while parsing a flow sequence from line 2, column 8\)$"),
    ("malformed JSON's place", "{\"targets\": [\"madurese\"],\n \"seeds\" [0]}", r"cannot parse: line 2, column 10: "),
    ("not a mapping", "- just\n- a list\n", "expected a mapping"),
    ("unknown key", {"colour": "red"}, r"unknown keys \['colour'\]"),
    ("seeds of the wrong type", {"seeds": "zero"}, "seeds"),
    ("batch size a string", {"training": {"batch_size": "16"}}, "batch_size"),
    ("seed a string", {"training": {"seed": "x"}}, "seed"),
    ("infinite steps", {"language_sft": {"full": {"steps": float("inf")}}}, "language_sft.full: .*steps"),
    ("infinite epochs", {"task_sft": {"full": {"epochs": float("inf")}}}, "task_sft.full: .*epochs"),
    ("NaN l1", {"task_sft": {"sparse": {"l1": float("nan")}}}, "task_sft.sparse: .*l1"),
    ("infinite learning rate", {"full_finetune": {"learning_rate": float("inf")}}, "full_finetune: .*learning_rate"),
    ("infinite k", {"language_sft": {"k": float("inf")}}, "language_sft.k"),
    ("infinite rank", {"methods": {"deft-x": {"rank": float("inf")}}}, "methods.deft-x: .*rank"),
    ("negative oversample", {"methods": {"deft-x": {"oversample": -1}}}, "methods.deft-x: .*oversample"),
    ("NaN weight decay", {"training": {"weight_decay": float("nan")}}, "training: .*weight_decay"),
    ("infinite head learning rate", {"mlm_head": {"learning_rate": float("inf")}}, "mlm_head: .*learning_rate"),
    ("bool eval batch", {"eval_batch_size": True}, "eval_batch_size"),
    ("americasnli examples -1", {"americasnli": {"train_languages": ["aym"], "test_languages": ["bzd"],
                                                 "max_train_examples": -1}}, "max_train_examples"),
    ("missing data root", {"data_dir": "/nonexistent/deftx-data"}, "does not exist"),
    ("second null method", {"methods": {"lt-sft": None, "magnitude": None}},
     r"methods\.magnitude: an empty entry \(null\) is the magnitude .*lt-sft already"),
    ("empty YAML method entry", "targets: [madurese]\nmethods: {lt-sft: null, deft-x-e50: }\n",
     r"methods\.deft-x-e50: .*empty entry \(null\).*deft-x-e50: \{energy: 0\.9\}"),
    ("lt-sft with denoising settings", {"methods": {"lt-sft": {"energy": 0.9}}}, r"methods\.lt-sft: .*lt-sft: null"),
    ("training seed", {"training": {"seed": 5}}, r"training\.seed: .*top-level `seeds:` list"),
    ("duplicate key", "targets: [madurese]\nseeds: [0]\nseeds: [1]\n",
     r"duplicate key 'seeds' on line 3 \(first on line 2\)"),
    ("duplicate nested key", "targets: [madurese]\ntraining:\n  batch_size: 8\n  batch_size: 16\n",
     r"duplicate key 'training\.batch_size' on line 4"),
    ("seed twice", {"seeds": [0, 1, 0]}, r"config seeds: 0 listed more than once.*got \[0, 1, 0\]"),
    ("source twice", {"sources": ["indonesian", "indonesian"]}, r"config sources: 'indonesian' listed more than once"),
    ("target twice", {"targets": ["madurese", "buginese", "madurese"]}, r"config targets: 'madurese' listed more"),
    ("unknown language-SFT group", {"language_sft": {"eligible": ["bogus"]}},
     r"language_sft\.eligible: unknown parameter groups \['bogus'\]; known: \['word_embeddings', "),
    ("unknown task-SFT group", {"task_sft": {"eligible": ["ffn", "bogus"]}}, r"task_sft\.eligible: unknown .*'bogus'"),
    ("head as a sparse group", {"task_sft": {"eligible": ["head"]}}, r"task_sft\.eligible: 'head' is trained densely"),
    ("no eligible group", {"language_sft": {"eligible": []}}, r"language_sft\.eligible: expected at least one"),
    ("eligible group twice", {"language_sft": {"eligible": ["ffn", "ffn"]}}, r"eligible: 'ffn' listed more"),
    ("unknown americasnli training language", {"americasnli": {"train_languages": ["xxx"], "test_languages": ["bzd"]}},
     r"americasnli\.train_languages: unknown AmericasNLI language 'xxx'; expected one of aym, "),
    ("unknown americasnli test language", {"americasnli": {"train_languages": ["aym"], "test_languages": ["BZD"]}},
     r"americasnli\.test_languages: unknown AmericasNLI language 'BZD'"),
    ("americasnli test language twice", {"americasnli": {"train_languages": ["aym"], "test_languages": ["bzd", "bzd"]}},
     r"americasnli\.test_languages: 'bzd' listed more than once"),
    ("americasnli language both trained and tested",
     {"americasnli": {"train_languages": ["aym", "bzd"], "test_languages": ["bzd"]}},
     r"americasnli: \['bzd'\] are both training and test languages"),
]


def run_cli(argv, capsys):
    """(exit code, stderr) of ``deftx argv``; argparse errors exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def assert_clear_error(command, code, err, match):
    import re

    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"deftx {command}: error:"), err
    assert re.search(match, last), last


@pytest.mark.parametrize("command", ["pipeline", "train-lang", "train-task"])
@pytest.mark.parametrize(("raw", "match"), [pytest.param(r, m, id=i) for i, r, m in CONFIG_CASES])
def test_bad_pipeline_configs(paths, capsys, command, raw, match):
    extra = {"train-lang": ["--language", "madurese"], "train-task": ["--source", "indonesian"]}.get(command, [])
    code, err = run_cli([command, write_config(paths, raw), *extra], capsys)
    assert_clear_error(command, code, err, match)


@pytest.mark.parametrize("where", ["name", "targets"])
def test_a_yaml_alias_bomb_is_refused_in_bounded_time(paths, capsys, where):
    text = yaml.safe_dump({k: v for k, v in base_config(paths).items() if k != where}) + f"{where}: {alias_bomb()}\n"
    run_cli(["pipeline", write_config(paths, {"colour": "red"}, "warm-up.yaml")], capsys)  # the imports, once
    start = time.perf_counter()
    code, err = run_cli(["pipeline", write_config(paths, text)], capsys)
    assert time.perf_counter() - start < 5.0
    assert_clear_error("pipeline", code, err, where)
    assert len(err) < 1000


def test_a_recursive_alias_is_refused(paths, capsys):
    code, err = run_cli(["pipeline", write_config(paths, "targets: &a [madurese, *a]\n")], capsys)
    assert_clear_error("pipeline", code, err, "contains itself")


ABLATION_CASES = [
    ("seeds a nested list", {"seeds": [[1]]}, "seeds"),
    ("unknown key", {"colour": "red"}, "unknown keys"),
    ("infinite steps in a variant", {"variants": {"v": {"language_sft.full.steps": float("inf")}}},
     "variant 'v'.*steps"),
    ("recursive variant", "variants: &a {v: {x: *a}}\n", "contains itself"),
    ("duplicate variant", "variants:\n  v: {}\n  v: {seeds: [1]}\n", r"duplicate key 'variants\.v' on line \d+"),
    ("training seed in a variant", {"variants": {"v": {"training.seed": 5}}}, r"variant 'v'.*training\.seed"),
    ("null method in a variant", {"variants": {"v": {"methods": {"lt-sft": None, "mag": None}}}},
     r"variant 'v'.*methods\.mag: an empty entry \(null\)"),
    ("unknown group in a variant", {"variants": {"v": {"task_sft.eligible": ["bogus"]}}},
     r"variant 'v'.*task_sft\.eligible: unknown parameter groups \['bogus'\]"),
    ("a source twice in a variant", {"variants": {"v": {"sources": ["indonesian", "indonesian"]}}},
     r"variant 'v'.*config sources: 'indonesian' listed more than once"),
]


@pytest.mark.parametrize(("raw", "match"), [pytest.param(r, m, id=i) for i, r, m in ABLATION_CASES])
def test_bad_ablation_configs(paths, capsys, raw, match):
    base = {"base": {**base_config(paths), "eval_split": "valid", "language_text_splits": ["train"]},
            "variants": {"v": {}}, "output_dir": str(paths["tmp"] / "ablation")}
    if isinstance(raw, str):
        text = yaml.safe_dump({k: v for k, v in base.items() if k != "variants"}) + raw
    else:
        text = yaml.safe_dump({**base, **raw})
    code, err = run_cli(["ablate", write_config(paths, text, "ablation.yaml"), "--dry-run"], capsys)
    assert_clear_error("ablate", code, err, match)


def test_missing_config_files(paths, capsys):
    for command in ("pipeline", "ablate"):
        code, err = run_cli([command, str(paths["tmp"] / "absent.yaml")], capsys)
        assert_clear_error(command, code, err, "does not exist")


@pytest.mark.parametrize("command", ["pipeline", "ablate", "train-lang", "heldout-mlm"])
def test_a_config_that_is_not_a_text_file(paths, capsys, command):
    """A folder is named as one; a file that is not UTF-8 names the file (not a bare codec error)."""
    extra = ["--language", "madurese"] if command == "train-lang" else []
    folder = paths["tmp"] / "configs.yaml"
    folder.mkdir()
    code, err = run_cli([command, str(folder), *extra], capsys)
    assert_clear_error(command, code, err, f"config file {folder} is a folder; expected a .yaml, .yml or .json file")
    latin1 = paths["tmp"] / "latin1.yaml"
    latin1.write_bytes("targets: [madurese]\nname: caf\u00e9\n".encode("latin-1"))
    code, err = run_cli([command, str(latin1), *extra], capsys)
    assert_clear_error(command, code, err,
                       f"config {latin1}: not UTF-8 text \\(byte 0xe9 at offset 29\\); save it as UTF-8")


@pytest.mark.parametrize(("command", "extra"), [("pipeline", ["--dry-run"]), ("pipeline", []),
                                                ("heldout-mlm", [])])
def test_seeds_given_twice_on_the_command_line(paths, capsys, command, extra):
    """--seeds 0 0 would run seed 0 twice and write each of its rows twice: refused before any work."""
    code, err = run_cli([command, write_config(paths, {}), "--seeds", "0", "1", "0", *extra], capsys)
    assert_clear_error(command, code, err, r"--seeds: 0 listed more than once.*got \[0, 1, 0\]")
    assert not (paths["tmp"] / "run").exists()


def test_heldout_scales_given_twice(paths, capsys):
    code, err = run_cli(["heldout-mlm", write_config(paths, {}), "--scales", "1", "1.0"], capsys)
    assert_clear_error("heldout-mlm", code, err, r"--scales: 1\.0 listed more than once")


@pytest.mark.parametrize(("flag", "languages", "match"), [
    ([], ["klingon"], r"unknown NusaX language 'klingon': not one of the config's targets and sources \(madurese, "
                      r"indonesian\) nor of the known NusaX languages \(acehnese, "),
    ([], ["madurese", "klingon", "vulcan"], r"unknown NusaX languages \['klingon', 'vulcan'\]"),
    (["--americasnlp"], ["klingon"], r"unknown AmericasNLI language code 'klingon': .*test languages \(none\).*aym"),
])
def test_heldout_of_an_unknown_language(paths, capsys, flag, languages, match):
    """Not a train-lang suggestion: no language SFT of a language the corpus lacks can be trained."""
    (paths["tmp"] / "run").mkdir()
    code, err = run_cli(["heldout-mlm", write_config(paths, {}), *flag, "--languages", *languages], capsys)
    assert_clear_error("heldout-mlm", code, err, match)
    assert "train-lang" not in err


WINDOW_CASES = [
    ({"training": {"max_length": 400}}, r"config training\.max_length: 400 tokens, but model '.*model' accepts at "
                                         r"most 130 \(from max_position_embeddings in its config\.json\)$"),
    ({"language_sft": {"max_length": 131}}, r"config language_sft\.max_length: 131 tokens, .* at most 130 "),
    ({"mlm_head": {"seq_len": 256}}, r"config mlm_head\.seq_len: 256 tokens, .* at most 130 "),
]
WINDOW_COMMANDS = [("pipeline", ["--dry-run"]), ("pipeline", []), ("train-lang", ["--language", "madurese"]),
                   ("train-task", ["--source", "indonesian"]), ("heldout-mlm", [])]


@pytest.mark.parametrize(("command", "extra"), WINDOW_COMMANDS)
@pytest.mark.parametrize(("overrides", "match"), WINDOW_CASES)
def test_a_token_window_longer_than_the_model_accepts(paths, capsys, command, extra, overrides, match):
    """Refused before any training or folder is written (it was a RuntimeError mid-training, a run folder left)."""
    (paths["model"] / "config.json").write_text('{"model_type": "bert", "max_position_embeddings": 130}')
    output = paths["tmp"] / "run"
    if command == "heldout-mlm":
        output.mkdir()
    code, err = run_cli([command, write_config(paths, overrides), *extra], capsys)
    assert_clear_error(command, code, err, match)
    assert not output.exists() or not any(output.iterdir())


@pytest.mark.parametrize("extra", [["--dry-run"], []])
def test_an_ablation_variant_longer_than_the_model_accepts(paths, capsys, extra):
    (paths["model"] / "config.json").write_text('{"model_type": "bert", "max_position_embeddings": 130}')
    ablation = {"base": base_config(paths), "output_dir": str(paths["tmp"] / "ablation"),
                "variants": {"ok": {}, "long": {"training.max_length": 200}}}
    code, err = run_cli(["ablate", write_config(paths, yaml.safe_dump(ablation), "ablation.yaml"), *extra], capsys)
    assert_clear_error("ablate", code, err, r"variant 'long': config training\.max_length: 200 tokens, .* at most 130")
    assert not (paths["tmp"] / "ablation").exists()


def test_an_unknown_ablation_variant_in_a_dry_run(paths, capsys):
    ablation = {"base": base_config(paths), "output_dir": str(paths["tmp"] / "ablation"), "variants": {"v": {}}}
    path = write_config(paths, yaml.safe_dump(ablation), "ablation.yaml")
    code, err = run_cli(["ablate", path, "--dry-run", "--variants", "v", "nope"], capsys)
    assert_clear_error("ablate", code, err, r"--variants: unknown variants \['nope'\]; known: \['v'\]")


COMMAND_CASES = [
    ("compose", ["--model", "{model}", "--sft", "{tmp}/absent.safetensors"], "absent.safetensors"),
    ("compose", ["--model", "{model}", "--sft", "{garbage}"], "corrupt or truncated"),
    ("compose", ["--model", "{bad_model}", "--sft", "{sft}"], "not a valid JSON file"),
    ("compose", ["--model", "{tmp}/no-model", "--sft", "{sft}"], "no-model' does not exist locally"),
    ("compose", ["--sft", "{sft}", "--scale", "nan"], "--scale: expected a finite number"),
    ("compose", ["--sft", "{sft}", "--scale", "inf"], "--scale: expected a finite number"),
    ("compose", ["--sft", "{sft}", "--num-labels", "0"], "--num-labels: expected an integer >= 1"),
    ("compose", ["--sft", "{sft}", "--sft", "{sft}", "--scale", "1"], "2 --sft files but 1 --scale"),
    ("evaluate", ["--task-sft", "{tmp}/absent.safetensors"], "absent.safetensors"),
    ("evaluate", ["--task-sft", "{sft}", "--scale", "nan"], "--scale: expected a finite number"),
    ("evaluate", ["--task-sft", "{sft}", "--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    ("evaluate", ["--task-sft", "{sft}", "--lang-sft", "madurese={tmp}/absent"], "does not exist"),
    ("evaluate", ["--task-sft", "{sft}", "--model", "{model}", "--data-dir", "{tmp}/no-data"],
     "no-data does not exist"),
    ("pipeline", ["{tmp}/absent.yaml", "--seeds", "-1"], "--seeds: expected an integer >= 0"),
    ("train-lang", ["{tmp}/absent.yaml", "--language", "madurese", "--seed", "-3"], "--seed: expected"),
    ("profile", ["--static", "--shapes", "{tmp}/absent.json"], "unknown shape set"),
]


@pytest.mark.parametrize(("command", "argv", "match"), COMMAND_CASES)
def test_bad_command_arguments(paths, capsys, command, argv, match):
    argv = [arg.format(**paths) for arg in argv]
    code, err = run_cli([command, *argv], capsys)
    assert_clear_error(command, code, err, match)


@pytest.mark.parametrize(("command", "extra"), [("pipeline", []), ("train-lang", ["--language", "madurese"])])
@pytest.mark.parametrize(("arguments", "match"), [
    ({"dataloader_num_workers": 2, "dataloader_persistent_workers": True}, "dataloader_persistent_workers"),
    ({"dataloader_num_workers": 2, "dataloader_in_order": False}, "dataloader_in_order false"),
])
def test_loader_workers_the_mlm_masks_cannot_follow(paths, capsys, command, extra, arguments, match):
    """Refused when the workspace opens, before the head warm-up (it was refused minutes in, when the
    language SFT's tuner was built)."""
    output = paths["tmp"] / "run"
    code, err = run_cli([command, write_config(paths, {"training": arguments}), *extra], capsys)
    assert_clear_error(command, code, err, rf"language SFTs: {match} with dataloader_num_workers > 0")
    assert not output.exists() or not any(output.iterdir())


REPEATED_OPTIONS = [
    ("pipeline", ["{tmp}/c.yaml", "--dry-run", "--seeds", "0", "--seeds", "1"], "--seeds",
     "list all its values after one --seeds"),
    ("ablate", ["{tmp}/c.yaml", "--dry-run", "--results-dir", "a", "--results-dir", "b"], "--results-dir",
     "give it once"),
    ("train-lang", ["{tmp}/c.yaml", "--language", "madurese", "--language", "balinese"], "--language", "give it once"),
    ("train-task", ["{tmp}/c.yaml", "--source", "indonesian", "--source", "english"], "--source", "give it once"),
    ("compose", ["--sft", "{sft}", "--model", "{model}", "--model", "e5-small"], "--model", "give it once"),
    ("evaluate", ["--task-sft", "{sft}", "--languages", "madurese", "--languages", "balinese"], "--languages",
     "list all its values after one --languages"),
    ("paired", ["{tmp}/r.csv", "--metric", "accuracy", "--metric", "macro_f1"], "--metric", "give it once"),
    ("losses", ["{tmp}", "--window", "5", "--window", "10"], "--window", "give it once"),
    ("heldout-mlm", ["{tmp}/c.yaml", "--mask-seed", "0", "--mask-seed", "1"], "--mask-seed", "give it once"),
    ("bench", ["--k", "0.1", "--k", "0.01"], "--k", "give it once"),
    ("profile", ["topk", "--device", "cpu", "--device", "cuda"], "--device", "give it once"),
    ("e5-pack", ["{tmp}/pack", "--folder-mib", "1", "--folder-mib", "2"], "--folder-mib", "give it once"),
    ("gpu-check", ["--dry-run", "--budget", "10", "--budget", "20"], "--budget", "give it once"),
]


@pytest.mark.parametrize(("command", "argv", "option", "how"), REPEATED_OPTIONS, ids=[c[0] for c in REPEATED_OPTIONS])
def test_a_single_valued_option_given_twice_is_a_usage_error(paths, capsys, command, argv, option, how):
    """argparse kept the last value and dropped the first without a word (--seeds 0 --seeds 1 ran seed 1 only,
    --languages madurese --languages balinese scored balinese only)."""
    code, err = run_cli([command, *(arg.format(**paths) for arg in argv)], capsys)
    assert_clear_error(command, code, err, f"argument {option}: given more than once, where only the last would "
                                           f"count: {how}")
    assert not (paths["tmp"] / "run").exists()


def test_the_gpu_check_module_refuses_an_option_given_twice(capsys):
    from deftx.gpucheck.cli import main as gpu_check

    with pytest.raises(SystemExit) as stop:
        gpu_check(["--dry-run", "--work-dir", "a", "--work-dir", "b"])
    assert stop.value.code == 2
    assert "argument --work-dir: given more than once" in capsys.readouterr().err


def test_options_given_once_and_repeatable_options_still_parse():
    from deftx.cli import build_parser
    from deftx.commands._common import parse_arguments

    args = parse_arguments(build_parser(), ["compose", "--sft", "a", "--sft", "b", "--scale", "1", "--scale", "2",
                                            "--model", "m"])
    assert (args.sft, args.scale, args.model) == (["a", "b"], [1.0, 2.0], "m")
    assert not any(name.startswith("_") for name in vars(args)), vars(args)


EMPTY_PATHS = [
    ("pipeline", ["{config}", "--dry-run", "--output-dir", ""], "--output-dir"),
    ("pipeline", ["{config}", "--dry-run", "--data-dir", ""], "--data-dir"),
    ("pipeline", ["{config}", "--dry-run", "--results-dir", ""], "--results-dir"),
    ("ablate", ["{config}", "--dry-run", "--output-dir", ""], "--output-dir"),
    ("train-lang", ["{config}", "--language", "madurese", "--output-dir", ""], "--output-dir"),
    ("evaluate", ["--task-sft", "{sft}", "--data-dir", ""], "--data-dir"),
    ("evaluate", ["--task-sft", "{sft}", "--data", ""], "--data"),
    ("evaluate", ["--task-sft", "{sft}", "--output", ""], "--output"),
    ("compose", ["--sft", "{sft}", "--model", "{model}", "--output", ""], "--output"),
    ("compose", ["--sft", ""], "--sft"),
    ("heldout-mlm", ["{config}", "--csv", ""], "--csv"),
    ("paired", ["{sft}", "--out", ""], "--out"),
    ("losses", ["{tmp}", ""], "folders"),
    ("bench", ["--out", ""], "--out"),
    ("profile", ["topk", "--out", ""], "--out"),
    ("e5-pack", [""], "out"),
    ("gpu-check", ["--dry-run", "--work-dir", ""], "--work-dir"),
]


@pytest.mark.parametrize(("command", "argv", "option"), EMPTY_PATHS, ids=[f"{c[0]} {c[2]}" for c in EMPTY_PATHS])
def test_an_empty_path_is_a_usage_error(paths, capsys, command, argv, option):
    """An empty path (``--output-dir "$UNSET"``) was ignored: the config's output_dir, the default data root,
    no --output at all, or the current folder were used instead, without a word."""
    config = write_config(paths, {})
    code, err = run_cli([command, *(arg.format(config=config, **paths) for arg in argv)], capsys)
    assert_clear_error(command, code, err, f"argument {option}: expected a path or name, got an empty string")
    assert not (paths["tmp"] / "run").exists()


@pytest.mark.parametrize(("make", "message"), [
    (lambda out: out.write_text("x"), "is a file: pack into a new folder"),
    (lambda out: (out.mkdir(), (out / "old").write_text("x")), "is not empty: pack into a new folder"),
])
def test_e5_pack_refuses_a_file_or_a_folder_in_use_before_reading_the_model(tmp_path, capsys, make, message):
    """A file where the folder goes gave a bare "[Errno 20] Not a directory"."""
    out = tmp_path / "pack"
    make(out)
    code, err = run_cli(["e5-pack", str(out)], capsys)
    assert_clear_error("e5-pack", code, err, message)
