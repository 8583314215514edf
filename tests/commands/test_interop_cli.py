"""compose / evaluate for any encoder: classifier from the SFT's metadata, Hub ids, any ecosystem's SFT, --data."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertTokenizer

from deftx.cli import main
from deftx.sft import SparseDiff
from tests.commands.tiny_classifier import LABELS, SENTENCES, WORDS, labelled_classifier, task_sft, write_reviews
from tests.helpers import assert_bitwise_equal
from tests.hub_cache import place_in_hub_cache
from tests.sft.tiny import random_diff

ROOT = Path(__file__).resolve().parents[2]


def test_compose_reads_the_classifier_from_the_sft(tmp_path, plain_bert, capsys):
    diff = task_sft(plain_bert)
    diff.save(tmp_path / "task.safetensors")
    assert main(["compose", "--model", str(plain_bert), "--sft", str(tmp_path / "task.safetensors"),
                 "--output", str(tmp_path / "composed")]) == 0
    printed = capsys.readouterr().out
    assert ("classifier: BertForSequenceClassification, pooling cls, 3 labels (negative, neutral, positive) "
            "[from the SFT's metadata]") in printed
    composed = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "composed"))
    assert composed.config.id2label == dict(enumerate(LABELS))
    expected = labelled_classifier(plain_bert)
    diff.apply(expected)
    for name, param in expected.named_parameters():
        assert_bitwise_equal(composed.get_parameter(name).detach(), param.detach(), what=name)


def test_an_sft_without_metadata_that_changes_the_pooler_gets_the_models_own_head(tmp_path, plain_bert, bert_body,
                                                                                  capsys):
    """The case that failed with "bert.pooler.dense.bias is not in the model (BertMeanPoolClassifier)"."""
    task_sft(plain_bert, info=False).save(tmp_path / "old.safetensors")
    assert main(["compose", "--model", str(bert_body), "--sft", str(tmp_path / "old.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert "classifier: AutoModelForSequenceClassification, pooling cls, 3 labels [no metadata in the SFTs: " \
        "labels from the shipped head's shape, pooling cls because the SFTs change a pooler]" in printed
    assert main(["compose", "--model", str(bert_body), "--sft", str(tmp_path / "old.safetensors"),
                 "--pooling", "mean"]) == 2
    assert "is not in the model" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["compose", "evaluate"])
def test_an_override_contradicting_the_shipped_heads_record_is_refused_up_front(tmp_path, plain_bert, bert_body,
                                                                               capsys, command):
    """--pooling / --num-labels other than what the shipped head was trained with: one line naming the option."""
    task_sft(plain_bert).save(tmp_path / "task.safetensors")
    extra = ["--data", str(tmp_path / "missing.csv")] if command == "evaluate" else []
    for option, value, message in (("--pooling", "mean", "--pooling mean contradicts the task SFT, whose head was "
                                    "trained with cls pooling (in BertForSequenceClassification): leave --pooling out"),
                                   ("--num-labels", "2", "--num-labels 2 contradicts the task SFT, whose head gives 3 "
                                    "classes: leave --num-labels out")):
        argv = [command, "--model", str(bert_body), "--sft" if command == "compose" else "--task-sft",
                str(tmp_path / "task.safetensors"), option, value, *extra]
        assert main(argv) == 2
        assert f"deftx {command}: error: {message}" in capsys.readouterr().err


def test_compose_takes_hub_ids_offline(tmp_path, plain_bert):
    """Offline path only: model and SFT placed in a Hub cache; the command runs with HF_HUB_OFFLINE=1."""
    diff = task_sft(plain_bert)
    diff.save_pretrained(tmp_path / "task")
    cache = tmp_path / "cache"
    place_in_hub_cache(cache, "org/plain-bert", plain_bert)
    place_in_hub_cache(cache, "org/plain-bert-task", tmp_path / "task")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    command = [sys.executable, "-m", "deftx.cli", "compose", "--model", "org/plain-bert",
               "--sft", "org/plain-bert-task"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "[from the SFT's metadata]" in done.stdout and "bit-exactly: True" in done.stdout
    done = subprocess.run([*command[:-1], "org/never-cached"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "could not be reached or found in the Hub cache" in done.stderr


def test_evaluate_on_a_csv_file_scores_like_the_composed_model(tmp_path, plain_bert, capsys):
    diff = task_sft(plain_bert)
    diff.save(tmp_path / "task.safetensors")
    data = tmp_path / "reviews.csv"
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "sentiment"])
        writer.writerows(SENTENCES)
    assert main(["evaluate", "--model", str(plain_bert), "--task-sft", str(tmp_path / "task.safetensors"),
                 "--data", str(data), "--text-column", "sentence", "--label-column", "sentiment"]) == 0
    printed = capsys.readouterr().out
    accuracy = float(re.search(r"reviews: macro-F1 [\d.]+ accuracy ([\d.]+) on 6 examples", printed).group(1))
    model = labelled_classifier(plain_bert)
    diff.apply(model)
    tokenizer = BertTokenizer.from_pretrained(str(plain_bert))
    with torch.no_grad():
        predicted = model(**tokenizer([s for s, _ in SENTENCES], padding=True, return_tensors="pt")).logits.argmax(-1)
    expected = sum(int(p) == LABELS.index(label) for p, (_, label) in zip(predicted, SENTENCES, strict=True)) / 6
    assert accuracy == pytest.approx(100 * expected, abs=0.05)


def test_evaluate_data_takes_class_ids_from_the_classifier_never_from_the_labels_the_file_holds(tmp_path, plain_bert,
                                                                                                capsys):
    """A task SFT recording no label names (trained in a Trainer with LABEL_i names, or imported), scored on a
    file holding two of its three classes: refused until --label-names gives the class order, then scored as
    the composed model scores in plain torch. (The file's sorted labels were taken as the order: 'neutral' 0,
    'positive' 1, so a head favouring class 2, positive, scored 0 instead of 50.)"""
    from deftx.train.architecture import describe_model

    model = labelled_classifier(plain_bert)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))
    info = {key: value for key, value in describe_model(model, head=True).items() if key != "labels"}
    diff = random_diff(model, 200, head=True, info=info)
    diff.save(tmp_path / "task.safetensors")
    rows = [(text, label) for text, label in SENTENCES if label != "negative"]
    data = write_reviews(tmp_path / "reviews.csv", rows)
    command = ["evaluate", "--model", str(plain_bert), "--task-sft", str(tmp_path / "task.safetensors"),
               "--data", str(data)]
    assert main(command) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"deftx evaluate: error: --data {data}: the labels are names (neutral, positive), and the classifier records "
        "none (from the SFT's metadata), so which class id each has is unknown: pass --label-names "
        "NAME0,NAME1,NAME2, its 3 labels in the class-id order it was trained with")
    assert main([*command, "--label-names", ",".join(LABELS)]) == 0
    accuracy = float(re.search(r"reviews: macro-F1 [\d.]+ accuracy ([\d.]+) on 4 examples",
                               capsys.readouterr().out).group(1))
    reference = labelled_classifier(plain_bert)
    diff.apply(reference)
    tokenizer = BertTokenizer.from_pretrained(str(plain_bert))
    with torch.no_grad():
        predicted = reference(**tokenizer([text for text, _ in rows], padding=True,
                                          return_tensors="pt")).logits.argmax(-1)
    expected = sum(int(p) == LABELS.index(label) for p, (_, label) in zip(predicted, rows, strict=True)) / len(rows)
    assert expected == 0.5, "the head favours positive, two of the four rows"
    assert accuracy == pytest.approx(100 * expected, abs=0.05)


@pytest.mark.parametrize(("names", "message"), [
    ("negative,positive", "--label-names names 2 classes, but the classifier has 3 (from the SFT's metadata): "
                          "name every class, in class-id order"),
    ("negative,,positive", "--label-names 'negative,,positive': give each class name once, comma-separated, "
                           "in class-id order"),
    ("positive,neutral,negative", "--label-names positive,neutral,negative differs from the labels the classifier "
                                  "records (negative,neutral,positive; from the SFT's metadata): drop --label-names"),
])
def test_evaluate_refuses_label_names_that_do_not_fit_the_classifier(tmp_path, plain_bert, capsys, names, message):
    task_sft(plain_bert).save(tmp_path / "task.safetensors")
    assert main(["evaluate", "--model", str(plain_bert), "--task-sft", str(tmp_path / "task.safetensors"),
                 "--data", str(write_reviews(tmp_path / "reviews.csv")), "--label-names", names]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"deftx evaluate: error: {message}"


def test_evaluate_refuses_labels_the_classifier_does_not_have(tmp_path, plain_bert, capsys):
    task_sft(plain_bert).save(tmp_path / "task.safetensors")
    (tmp_path / "data.json").write_text('{"text": "a good film", "label": "ecstatic"}\n')
    assert main(["evaluate", "--model", str(plain_bert), "--task-sft", str(tmp_path / "task.safetensors"),
                 "--data", str(tmp_path / "data.json")]) == 2
    assert "labels ['ecstatic'] of the data are not among the classifier's labels" in capsys.readouterr().err


def test_compose_takes_a_composable_sft_folder(tmp_path, plain_bert, capsys):
    from tests.sft.test_composable import write_sft

    diff = task_sft(plain_bert)
    config = {"_name_or_path": str(plain_bert), "architectures": ["BertForSequenceClassification"],
              "id2label": {str(i): name for i, name in enumerate(LABELS)}}
    write_sft(tmp_path / "composable", {n: diff.delta(n) for n in diff.indices}, diff.dense, config)
    assert main(["compose", "--model", str(plain_bert), "--sft", str(tmp_path / "composable"),
                 "--output", str(tmp_path / "composed")]) == 0
    assert "pooling cls, 3 labels (negative, neutral, positive) [from the SFT's metadata]" in capsys.readouterr().out
    composed = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "composed"))
    expected = labelled_classifier(plain_bert)
    diff.apply(expected)
    for name, param in expected.named_parameters():
        assert_bitwise_equal(composed.get_parameter(name).detach(), param.detach(), what=name)


def test_compose_takes_a_composable_language_sft_with_a_task_sft(tmp_path, plain_bert, capsys):
    """A composable-sft language SFT (MLM head in ``abs``, BertForMaskedLM config) used to fail with
    "'cls.predictions.bias' is not in the model" and to claim a 2-label classifier; its MLM head is left out."""
    from tests.sft.test_composable import write_language_sft

    lang_deltas, _ = write_language_sft(tmp_path / "lang", str(plain_bert), vocab=len(WORDS))
    task = task_sft(plain_bert)
    task.save(tmp_path / "task.safetensors")
    assert main(["compose", "--model", str(plain_bert), "--sft", str(tmp_path / "lang"),
                 "--sft", str(tmp_path / "task.safetensors"), "--output", str(tmp_path / "composed")]) == 0
    captured = capsys.readouterr()
    assert "pooling cls, 3 labels (negative, neutral, positive) [from the SFT's metadata]" in captured.out
    assert "bit-exactly: True" in captured.out
    assert "left out the masked-LM head" in captured.err
    composed = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "composed"))
    reference = labelled_classifier(plain_bert)  # plain torch: θ0 + language δ + task δ, the head replaced
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if name in lang_deltas:
                param.add_(lang_deltas[name])
            if name in task.dense:
                param.copy_(task.dense[name])
            elif name in task.indices:
                param.view(-1)[task.indices[name]] += task.values[name]
    for name, param in reference.named_parameters():
        assert_bitwise_equal(composed.get_parameter(name).detach(), param.detach(), what=name)


def test_a_trained_task_sft_records_its_classifier(tmp_path, plain_bert):
    from deftx.train.config import PhaseConfig, SparseFineTuningConfig
    from deftx.train.task import classification_examples, task_sft_tuner
    from deftx.train.trainer_args import TrainingSettings

    tokenizer = BertTokenizer.from_pretrained(str(plain_bert))
    examples = classification_examples(tokenizer, [s for s, _ in SENTENCES],
                                       [LABELS.index(label) for _, label in SENTENCES], 16)
    config = SparseFineTuningConfig(k=50, full=PhaseConfig(steps=1), sparse=PhaseConfig(steps=1),
                                    selections={"lt-sft": None}, train_head=True, ship_head=True)
    settings = TrainingSettings(batch_size=2, progress=False, group_by_length=False, save_steps=10)
    result = task_sft_tuner(plain_bert, tokenizer, examples, config, tmp_path / "run", num_labels=3,
                            settings=settings, pooling="mean", labels=LABELS).fit()
    expected = {"architecture": "BertMeanPoolClassifier", "pooling": "mean", "num_labels": 3, "labels": LABELS}
    assert result.diffs["lt-sft"].info == expected
    assert SparseDiff.load(tmp_path / "run" / "lt-sft" / "sft.safetensors").info == expected


def test_compose_finds_the_base_from_another_working_directory(tmp_path, plain_bert, monkeypatch, capsys):
    """An SFT recorded for the folder ``plain-bert`` fits ``--model runs/plain-bert`` (the README's example
    run from the parent folder), and a model saved composed names its base."""
    folder = tmp_path / "runs" / "plain-bert"
    folder.parent.mkdir()
    folder.symlink_to(plain_bert, target_is_directory=True)
    task_sft(plain_bert, base_model="plain-bert").save(tmp_path / "task.safetensors")
    monkeypatch.chdir(tmp_path)
    assert main(["compose", "--model", "runs/plain-bert", "--sft", "task.safetensors", "--output", "composed"]) == 0
    printed = capsys.readouterr().out
    assert "load it with transformers.BertForSequenceClassification.from_pretrained('composed')" in printed
    composed = AutoModelForSequenceClassification.from_pretrained("composed")
    assert Path(composed.config.deftx_base_model).name == "plain-bert", composed.config.deftx_base_model


def test_an_sft_of_another_base_is_one_error_line_until_no_base_check(tmp_path, plain_bert, capsys):
    task_sft(plain_bert, base_model="org/another-encoder").save(tmp_path / "task.safetensors")
    data = write_reviews(tmp_path / "reviews.csv")
    for command in (["compose"], ["evaluate", "--data", str(data)]):
        sft = ["--sft" if command[0] == "compose" else "--task-sft", str(tmp_path / "task.safetensors")]
        assert main([*command, "--model", str(plain_bert), *sft]) == 2
        last = capsys.readouterr().err.splitlines()[-1]
        assert last.startswith(f"deftx {command[0]}: error: {tmp_path / 'task.safetensors'} was made for base model "
                               "'org/another-encoder', --model is"), last
        assert last.endswith("(--no-base-check applies it anyway)")
        assert main([*command, "--model", str(plain_bert), *sft, "--no-base-check"]) == 0
        capsys.readouterr()


def test_evaluate_data_names_no_source_it_was_not_given(tmp_path, plain_bert, capsys):
    """With --data and no --source the table says so and averages every target; --source names it."""
    task_sft(plain_bert).save(tmp_path / "task.safetensors")
    data = write_reviews(tmp_path / "reviews.csv")
    base = ["evaluate", "--model", str(plain_bert), "--task-sft", str(tmp_path / "task.safetensors"),
            "--data", str(data)]
    assert main([*base, "--output", str(tmp_path / "plain")]) == 0
    table = (tmp_path / "plain" / "evaluate.md").read_text()
    assert "### " + str(data) + " — zero-shot — source: not given — test split" in table, table
    assert "indonesian" not in table
    assert main([*base, "--source", "english", "--output", str(tmp_path / "named")]) == 0
    capsys.readouterr()
    assert "source: english" in (tmp_path / "named" / "evaluate.md").read_text()


def test_compose_refuses_an_output_it_would_not_write_cleanly_before_any_work(tmp_path, plain_bert, capsys):
    task_sft(plain_bert).save(tmp_path / "task.safetensors")
    base = ["compose", "--model", str(plain_bert), "--sft", str(tmp_path / "task.safetensors")]
    (tmp_path / "file").write_text("")
    capsys.readouterr()
    assert main([*base, "--output", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == f"deftx compose: error: --output {tmp_path / 'file'} is a file; it must be a " \
                                      "folder (the composed model is saved into it)\n"
    assert (tmp_path / "file").read_text() == ""
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert main([*base, "--output", str(tmp_path / "full")]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["notes.txt"]
    assert main([*base, "--output", str(tmp_path / "full"), "--overwrite"]) == 0
    assert (tmp_path / "full" / "config.json").is_file() and (tmp_path / "full" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(("extra", "message"), [
    (["--languages", "madurese"], "--languages choose NusaX languages; with --data the data set is scored"),
    (["--data-dir", "x"], "--data-dir choose NusaX languages"),
    (["--scale", "1.5"], "--scale is the language SFT's scale, and no --lang-sft is given"),
    (["--lang-sft", "a=x", "--lang-sft", "a=y"], "--lang-sft gives a twice (x and y): one SFT per language"),
    (["--output", "FILE"], "is a file; it must be a folder"),
])
def test_evaluate_refuses_options_it_would_ignore_before_loading_anything(tmp_path, extra, message, capsys):
    (tmp_path / "FILE").write_text("")
    extra = [str(tmp_path / "FILE") if item == "FILE" else item for item in extra]
    assert main(["evaluate", "--task-sft", str(tmp_path / "absent"), "--data", "d.csv", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(("extra", "message"), [
    (["--target", "x"], "--target describe --data, which is not given"),
    (["--split", "dev"], "--split describe --data"),
    (["--label-names", "a,b,c"], "--label-names describe --data"),
    (["--languages", "madurese", "javanese", "madurese"], "--languages names madurese more than once"),
])
def test_evaluate_on_nusax_refuses_data_options_and_repeats(tmp_path, extra, message, capsys):
    assert main(["evaluate", "--task-sft", str(tmp_path / "absent"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_evaluate_refuses_a_task_sft_without_a_head_on_a_model_without_one(tmp_path, plain_bert, bert_body, capsys):
    """A language SFT passed as --task-sft would be scored through a random head."""
    model = labelled_classifier(plain_bert)
    random_diff(model, 100, body=lambda n: not n.startswith("bert.pooler")).save(tmp_path / "lang.safetensors")
    data = write_reviews(tmp_path / "reviews.csv", label_ids=True)
    command = ["evaluate", "--task-sft", str(tmp_path / "lang.safetensors"), "--data", str(data)]
    assert main([*command, "--model", str(bert_body)]) == 2
    assert "ships no classifier head and --model is not a saved classifier" in capsys.readouterr().err
    assert main([*command, "--model", str(plain_bert)]) == 0, "the model folder's own head is a trained head"


def test_evaluate_refuses_a_token_limit_the_model_does_not_have(tmp_path, plain_bert, capsys):
    """plain_bert has 32 positions: --max-length 40 would fail inside the model's embeddings."""
    task_sft(plain_bert).save(tmp_path / "task.safetensors")
    data = write_reviews(tmp_path / "reviews.csv")
    command = ["evaluate", "--model", str(plain_bert), "--task-sft", str(tmp_path / "task.safetensors"),
               "--data", str(data)]
    assert main([*command, "--max-length", "40"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"deftx evaluate: error: --max-length 40 tokens, but model {str(plain_bert)!r} accepts at most 32 "
        "(from max_position_embeddings in its config.json)")
    assert main([*command, "--max-length", "32"]) == 0


NUSAX_GOLD = ["positive", "positive", "positive", "positive", "neutral", "negative"]


def nusax_test_folder(root: Path) -> Path:
    """A NusaX data root with one test split (javanese): the SENTENCES' texts labelled :data:`NUSAX_GOLD`."""
    folder = root / "nusax" / "datasets" / "sentiment" / "javanese"
    folder.mkdir(parents=True)
    texts = [text for text, _ in SENTENCES]
    rows = "".join(f"{i},{text},{gold}\n" for i, (text, gold) in enumerate(zip(texts, NUSAX_GOLD, strict=True)))
    (folder / "test.csv").write_text("id,text,label\n" + rows)
    return root


def task_sft_with_labels(plain_bert: Path, labels: Sequence[str], *, record_names: bool = True) -> SparseDiff:
    """A task SFT of a cls classifier of ``labels`` (in class-id order) whose head gives class 0 to every text."""
    from deftx.train.architecture import describe_model

    model = AutoModelForSequenceClassification.from_pretrained(
        str(plain_bert), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)}, ignore_mismatched_sizes=True).eval()
    model.config.deftx_pooling = "cls"
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([50.0] + [0.0] * (len(labels) - 1)))
    info = describe_model(model, head=True)
    if not record_names:
        info.pop("labels", None)
    return random_diff(model, 200, head=True, info=info)


def test_evaluate_on_nusax_scores_each_class_by_its_name_in_the_classifiers_order(tmp_path, plain_bert, bert_body,
                                                                                  capsys):
    """A task SFT recording its labels as positive, neutral, negative: its class 0 is positive. (NusaX's labels
    were given NusaX's ids whatever the classifier's order: every 'positive' prediction was scored as
    'negative', 16.7% accuracy where the classifier is right on 4 of 6.)"""
    order = ("positive", "neutral", "negative")
    diff = task_sft_with_labels(plain_bert, order)
    diff.save(tmp_path / "task.safetensors")
    assert main(["evaluate", "--model", str(bert_body), "--task-sft", str(tmp_path / "task.safetensors"),
                 "--data-dir", str(nusax_test_folder(tmp_path / "data"))]) == 0
    f1, accuracy = map(float, re.search(r"javanese: macro-F1 ([\d.]+) accuracy ([\d.]+) on 6 examples",
                                        capsys.readouterr().out).groups())
    reference = AutoModelForSequenceClassification.from_pretrained(str(plain_bert)).eval()
    diff.apply(reference)
    tokenizer = BertTokenizer.from_pretrained(str(plain_bert))
    with torch.no_grad():
        predicted = reference(**tokenizer([text for text, _ in SENTENCES], padding=True,
                                          return_tensors="pt")).logits.argmax(-1)
    names = [order[int(p)] for p in predicted]
    assert names == ["positive"] * 6, "the head gives class 0, positive, to every text"
    right = sum(name == gold for name, gold in zip(names, NUSAX_GOLD, strict=True))
    f1_per_class = [2 * sum(n == g == c for n, g in zip(names, NUSAX_GOLD, strict=True))
                    / (names.count(c) + NUSAX_GOLD.count(c)) for c in order]
    assert accuracy == pytest.approx(100 * right / 6, abs=0.05) and right == 4
    assert f1 == pytest.approx(100 * sum(f1_per_class) / 3, abs=0.05)


@pytest.mark.parametrize(("labels", "record_names", "message"), [
    (("entailment", "neutral", "contradiction"), True,
     "the classifier's labels (entailment, neutral, contradiction) are not NusaX sentiment's (negative, neutral, "
     "positive): its class ids cannot be scored against NusaX labels (from the SFT's metadata)"),
    (("negative", "neutral", "positive", "mixed"), True,
     "the classifier's labels (negative, neutral, positive, mixed) are not NusaX sentiment's"),
    (("negative", "positive"), True, "the classifier's labels (negative, positive) are not NusaX sentiment's"),
    (("LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3"), False,
     "the classifier has 4 labels (from the SFT's metadata), NusaX sentiment 3 (negative, neutral, positive): "
     "it cannot be scored on NusaX"),
])
def test_evaluate_on_nusax_refuses_a_classifier_of_other_labels(tmp_path, plain_bert, bert_body, capsys, labels,
                                                                record_names, message):
    """An NLI head, or a head of more or fewer classes, is no NusaX sentiment classifier: one error line (it was
    scored, 0.0 for the 4-class head, or failed with 'labels must be in [0, 2)')."""
    task_sft_with_labels(plain_bert, labels, record_names=record_names).save(tmp_path / "task.safetensors")
    assert main(["evaluate", "--model", str(bert_body), "--task-sft", str(tmp_path / "task.safetensors"),
                 "--data-dir", str(nusax_test_folder(tmp_path / "data"))]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"deftx evaluate: error: {message}"), last


def test_evaluate_data_rows_name_the_target_given(tmp_path, plain_bert, capsys):
    """--target names the data's language in the rows, also beside a --lang-sft (whose language was written
    instead, --target unused); without --target the --lang-sft's language is the target."""
    task_sft(plain_bert).save(tmp_path / "task.safetensors")
    model = labelled_classifier(plain_bert)
    random_diff(model, 100, seed=3, body=lambda n: not n.startswith("bert.pooler")).save(tmp_path / "lang.safetensors")
    base = ["evaluate", "--model", str(plain_bert), "--task-sft", str(tmp_path / "task.safetensors"),
            "--data", str(write_reviews(tmp_path / "reviews.csv")),
            "--lang-sft", f"jav={tmp_path / 'lang.safetensors'}", "--scale", "0.5"]
    for extra, target in ((["--target", "javanese"], "javanese"), ([], "jav")):
        out = tmp_path / f"out-{target}"
        assert main([*base, *extra, "--output", str(out)]) == 0
        with (out / "evaluate.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [(r["target"], r["language_sft"], r["language_scale"]) for r in rows] == [(target, "True", "0.5")]
    assert "| javanese |" in capsys.readouterr().out


def test_evaluate_refuses_to_replace_an_earlier_evaluation_before_any_work_until_overwrite(tmp_path, plain_bert,
                                                                                          capsys):
    """A second evaluation into one --output replaced the first's evaluate.csv and evaluate.md without a word."""
    task_sft(plain_bert).save(tmp_path / "task.safetensors")
    base = ["evaluate", "--model", str(plain_bert), "--data", str(write_reviews(tmp_path / "reviews.csv")),
            "--output", str(tmp_path / "out")]
    task = ["--task-sft", str(tmp_path / "task.safetensors")]
    assert main([*base, *task, "--target", "first"]) == 0
    first = (tmp_path / "out" / "evaluate.csv").read_text()
    capsys.readouterr()
    assert main([*base, "--target", "second", "--task-sft", str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err == (f"deftx evaluate: error: --output {tmp_path / 'out'} already holds evaluate.csv "
                                       "and evaluate.md of an earlier evaluation: choose another folder, or pass "
                                       "--overwrite to replace them\n")
    assert (tmp_path / "out" / "evaluate.csv").read_text() == first
    assert main([*base, *task, "--target", "second", "--overwrite"]) == 0
    rows = (tmp_path / "out" / "evaluate.csv").read_text()
    assert ",second," in rows and ",first," not in rows
    assert main(["evaluate", "--task-sft", str(tmp_path / "absent"), "--data", "d.csv", "--overwrite"]) == 2
    assert "--overwrite replaces an --output folder's files, and no --output is given" in capsys.readouterr().err


def test_evaluate_says_how_many_texts_fill_the_token_limit(tmp_path, plain_bert, capsys):
    """--max-length cuts longer texts' ends; the line of each target says how many fill the limit."""
    task_sft(plain_bert).save(tmp_path / "task.safetensors")
    command = ["evaluate", "--model", str(plain_bert), "--task-sft", str(tmp_path / "task.safetensors"),
               "--data", str(write_reviews(tmp_path / "reviews.csv"))]
    tokenizer = BertTokenizer.from_pretrained(str(plain_bert))
    lengths = [len(tokenizer(text)["input_ids"]) for text, _ in SENTENCES]
    assert sorted(lengths) == [5, 6, 6, 6, 7, 7]
    for limit, note in ((6, "; 5 at --max-length 6 tokens (longer texts cut)"),
                        (7, "; 2 at --max-length 7 tokens (longer texts cut)"), (8, "")):
        assert main([*command, "--max-length", str(limit)]) == 0
        assert f"on 6 examples (without language SFT{note})\n" in capsys.readouterr().out


def test_evaluate_refuses_a_language_sft_that_ships_a_classifier_head(tmp_path, plain_bert, capsys):
    """A task SFT given as --lang-sft: composed after the task SFT, its head replaced the task SFT's, and the
    rows scored that head without a word."""
    task_sft_with_labels(plain_bert, LABELS).save(tmp_path / "task.safetensors")
    task_sft(plain_bert).save(tmp_path / "other-task.safetensors")
    command = ["evaluate", "--model", str(plain_bert), "--task-sft", str(tmp_path / "task.safetensors"),
               "--data", str(write_reviews(tmp_path / "reviews.csv")),
               "--lang-sft", f"jav={tmp_path / 'other-task.safetensors'}"]
    assert main(command) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"deftx evaluate: error: --lang-sft jav={tmp_path / 'other-task.safetensors'} ships a classifier head "
        "(classifier.bias, classifier.weight), which would replace the task SFT's: is it a task SFT?")


def test_evaluate_rows_record_the_task_sfts_training_seed_else_the_seed_given(tmp_path, plain_bert, capsys):
    """Rows pair by seed in `deftx paired`: they record the seed the task SFT was trained with (before, always 0),
    name language SFTs trained with another, and fall back to --seed for an SFT that records none."""
    task = task_sft(plain_bert)
    task.save(tmp_path / "unseeded.safetensors")
    task.settings["seed"] = 7
    task.save(tmp_path / "task.safetensors")
    lang = random_diff(labelled_classifier(plain_bert), 100, seed=3, body=lambda n: not n.startswith("bert.pooler"))
    lang.settings["seed"] = 4
    lang.save(tmp_path / "lang.safetensors")
    data = str(write_reviews(tmp_path / "reviews.csv"))
    runs = {
        "seeded": (["--task-sft", str(tmp_path / "task.safetensors"),
                    "--lang-sft", f"jav={tmp_path / 'lang.safetensors'}", "--seed", "3"], "7",
                   "rows record seed 7 (the task SFT's training seed); trained with other seeds: jav language SFT 4"),
        "unseeded": (["--task-sft", str(tmp_path / "unseeded.safetensors"), "--seed", "3"], "3",
                     "rows record seed 3 (--seed: the task SFT records no training seed)"),
    }
    for name, (args, seed, line) in runs.items():
        out = tmp_path / name
        assert main(["evaluate", "--model", str(plain_bert), "--data", data, *args, "--output", str(out)]) == 0
        with (out / "evaluate.csv").open(newline="") as handle:
            assert {row["seed"] for row in csv.DictReader(handle)} == {seed}, name
        assert line in capsys.readouterr().out


@pytest.mark.parametrize(("command", "scale", "why"), [
    (["evaluate", "--task-sft", "t", "--lang-sft", "jav=l", "--data", "d.csv"], "0",
     "scale 0 composes no language SFT: leave out --lang-sft"),
    (["evaluate", "--task-sft", "t", "--lang-sft", "jav=l", "--data", "d.csv"], "-1.25",
     "a negative scale subtracts the SFT"),
    (["compose", "--sft", "a", "--scale", "1", "--sft", "b"], "0",
     "scale 0 adds nothing of its SFT: leave that --sft out"),
    (["compose", "--sft", "a", "--scale", "1", "--sft", "b"], "-0.5", "a negative scale subtracts the SFT"),
])
def test_a_scale_not_above_zero_is_refused_at_argparse_as_the_pipeline_refuses_it(capsys, command, scale, why):
    """evaluate and compose took --scale -1.25 (subtracting the language SFT) and 0 (no language SFT, labelled as
    composed with one) where the pipeline's language_scale and heldout-mlm --scales refuse them."""
    with pytest.raises(SystemExit) as raised:
        main([*command, "--scale", scale])
    assert raised.value.code == 2
    assert f"argument --scale: expected a scale > 0, got '{scale}' ({why})" in capsys.readouterr().err


def test_evaluate_refuses_integer_labels_for_a_classifier_with_named_classes_unless_told_they_are_class_ids(
        tmp_path, plain_bert, capsys):
    """A file whose label column holds integers in another order than the classifier's classes (here 0=positive,
    2=negative) was scored with each integer taken as a class id, without a word; the names the classifier
    records cannot tell which order the file's integers follow. --label-ids says they are its class ids."""
    task_sft_with_labels(plain_bert, LABELS).save(tmp_path / "task.safetensors")
    order = ["positive", "neutral", "negative"]
    data = write_reviews(tmp_path / "reviews.csv", [(text, str(order.index(label))) for text, label in SENTENCES])
    command = ["evaluate", "--model", str(plain_bert), "--task-sft", str(tmp_path / "task.safetensors"),
               "--data", str(data)]
    assert main(command) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"deftx evaluate: error: --data {data}: column 'label' holds integers (0, 1, 2), not the names of the "
        "classifier's classes (0=negative, 1=neutral, 2=positive; from the SFT's metadata), so which class each "
        "integer means is unknown: write the names in the file, or pass --label-ids if the integers are these "
        "class ids")
    assert main([*command, "--label-ids"]) == 0
    accuracy = float(re.search(r"reviews: macro-F1 [\d.]+ accuracy ([\d.]+) on 6 examples",
                               capsys.readouterr().out).group(1))
    assert accuracy == pytest.approx(100 * 2 / 6, abs=0.05), "the head gives class 0 to all, two rows hold 0"
    names = write_reviews(tmp_path / "names.csv")
    assert main([*command[:-1], str(names), "--label-ids"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"deftx evaluate: error: --label-ids: column 'label' of --data {names} holds labels that are not class ids "
        "(negative, neutral, positive)")


def test_evaluate_label_ids_describes_data(tmp_path, capsys):
    assert main(["evaluate", "--task-sft", str(tmp_path / "absent"), "--label-ids"]) == 2
    assert "--label-ids describe --data, which is not given" in capsys.readouterr().err


def test_evaluate_data_says_which_classes_it_holds_no_example_of(tmp_path, plain_bert, capsys):
    """Macro-F1 is over all the classifier's classes: on a file without a neutral row, neutral's F1 is 0 (no true
    positive possible) and caps the mean at 2/3; the line said nothing of it. Hand-computed reference: the head gives
    class 0 (negative) to all four rows, two of them negative: F1 negative 2·2/(2·2+2) = 2/3, positive 0,
    neutral 0."""
    task_sft_with_labels(plain_bert, LABELS).save(tmp_path / "task.safetensors")
    data = write_reviews(tmp_path / "reviews.csv", [(text, label) for text, label in SENTENCES if label != "neutral"])
    assert main(["evaluate", "--model", str(plain_bert), "--task-sft", str(tmp_path / "task.safetensors"),
                 "--data", str(data)]) == 0
    printed = capsys.readouterr().out
    f1 = float(re.search(r"reviews: macro-F1 ([\d.]+) accuracy [\d.]+ on 4 examples", printed).group(1))
    assert f1 == pytest.approx(100 * (2 / 3) / 3, abs=0.05)
    assert ("reviews: no example of class neutral in the data; macro-F1 is the mean over all 3 classes, in which a "
            "class without examples scores 0") in printed


def test_evaluate_shows_its_progress_through_the_batches_of_each_target(tmp_path, plain_bert, capsys):
    """A large --data file scored on a CPU printed nothing until its row was done."""
    task_sft(plain_bert).save(tmp_path / "task.safetensors")
    assert main(["evaluate", "--model", str(plain_bert), "--task-sft", str(tmp_path / "task.safetensors"),
                 "--data", str(write_reviews(tmp_path / "reviews.csv")), "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"reviews: +0%\|[^\n\r]*\| 0/3 ", err), err
