"""SparseDiff: file format, validation, apply/revert bit-exactness on transformers models, compose."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import BertForSequenceClassification, BertModel

from deftx.perf.counters import count_device_work
from deftx.sft import ParamInfo, SparseDiff, SparseDiffFormatError, apply_diffs, compose
from tests.helpers import assert_bitwise_equal
from tests.sft.helpers import assert_model_equals, assert_rewrite_refused, random_sft, snapshot, tiny_config


def test_save_load_round_trip(tmp_path, model):
    diff = random_sft(model, 300, head=True)
    path = tmp_path / "sft.safetensors"
    diff.save(path)
    loaded = SparseDiff.load(path)
    assert loaded.names == diff.names and loaded.k == 300 and loaded.method == "lt-sft"
    assert loaded.settings == {"lr": 1e-4} and loaded.base_model == "tiny-bert"
    for name in diff.indices:
        assert_bitwise_equal(loaded.indices[name], diff.indices[name], what=name)
        assert_bitwise_equal(loaded.values[name], diff.values[name], what=name)
        assert loaded.params[name] == diff.params[name]
    for name in diff.dense:
        assert_bitwise_equal(loaded.dense[name], diff.dense[name], what=name)


def test_file_is_safetensors_with_int32_indices_and_metadata(tmp_path, model):
    from safetensors import safe_open

    path = tmp_path / "sft.safetensors"
    random_sft(model, 50).save(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        index_keys = [k for k in f.keys() if k.startswith("indices/")]  # noqa: SIM118
        assert all(f.get_tensor(k).dtype == torch.int32 for k in index_keys)
    assert meta["format"] == "deftx.sparse_diff" and meta["format_version"] == "1"
    params = json.loads(meta["params"])
    assert params["bert.embeddings.word_embeddings.weight"] == {"shape": [64, 16], "dtype": "float32"}


def test_equal_content_gives_equal_bytes_in_this_process_and_another(tmp_path, model):
    """safetensors alone orders the metadata differently on each save; the files must not differ."""
    diff = random_sft(model, 80, head=True)
    paths = [tmp_path / f"sft-{i}.safetensors" for i in range(4)]
    for path in paths:
        diff.save(path)
    SparseDiff.load(paths[0]).save(tmp_path / "again.safetensors")
    other = tmp_path / "other.safetensors"
    script = "import sys; from deftx.sft import SparseDiff; SparseDiff.load(sys.argv[1]).save(sys.argv[2])"
    subprocess.run([sys.executable, "-c", script, str(paths[0]), str(other)], check=True)
    files = {path.name: path.read_bytes() for path in [*paths, tmp_path / "again.safetensors", other]}
    assert len(set(files.values())) == 1, sorted(files)
    length = int.from_bytes(files["other.safetensors"][:8], "little")
    header = json.loads(files["other.safetensors"][8 : 8 + length])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    assert length % 8 == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_then_revert_is_bit_exact(model, dtype):
    model = model.to(dtype)
    original = snapshot(model)
    diff = random_sft(model, 400, head=True)
    handle = diff.apply(model)
    changed = sum(int((p.detach() != original[n]).sum()) for n, p in model.named_parameters())
    assert changed > 300  # the sparse entries (some may round to no change in bf16) plus the head
    handle.revert()
    assert_model_equals(model, original, f"{dtype} after revert")


@pytest.mark.filterwarnings("ignore:deftx. running the Triton kernel")
def test_apply_reads_back_only_the_rounding_loss_counts_and_revert_nothing(tmp_path, model, monkeypatch):
    """A loaded diff's indices were checked at load: the fused apply uses them as they are and
    reads back one thing, the entries lost to rounding (one host read for all parameters);
    its revert reads nothing."""
    monkeypatch.setenv("DEFTX_BACKEND", "triton")
    original = snapshot(model)
    random_sft(model, 300, head=True).save(tmp_path / "d.safetensors")
    diff = SparseDiff.load(tmp_path / "d.safetensors")
    with count_device_work("cpu") as applying:
        handle = apply_diffs(model, [diff])
    with count_device_work("cpu") as reverting:
        handle.revert()
    assert applying.sync_count == 1, applying.summary()
    assert reverting.sync_count == 0, reverting.summary()
    assert applying.triton_launches == {"_segment_bounds_kernel": 1, "_scatter_add_kernel": 1}, applying.summary()
    assert reverting.triton_launches == {"_scatter_restore_kernel": 1}, reverting.summary()
    assert_model_equals(model, original)


def test_apply_reproduces_the_tuned_values(model):
    base = snapshot(model)
    diff = random_sft(model, 200)
    diff.apply(model)
    assert set(diff.indices) == {n for n in base if not n.startswith("classifier")}
    for name, p in model.named_parameters():
        want = base[name].reshape(-1).clone()
        if name in diff.indices:
            want[diff.indices[name]] += diff.values[name]
        assert_bitwise_equal(p.detach().reshape(-1), want, what=name)


def test_two_diffs_in_one_launch_and_lifo_revert(model):
    original = snapshot(model)
    lang, task = random_sft(model, 300, seed=1), random_sft(model, 300, seed=2, head=True)
    one_by_one = BertForSequenceClassification(tiny_config())
    one_by_one.load_state_dict(model.state_dict())
    one_by_one.config.deftx_base_model = "tiny-bert"
    handle = apply_diffs(model, [lang, task], [0.5, 1.0])
    h1 = lang.apply(one_by_one, 0.5)
    task.apply(one_by_one)
    assert_model_equals(model, snapshot(one_by_one), "fused vs sequential")
    with pytest.raises(RuntimeError, match="reverse order"):
        h1.revert()
    task.revert(one_by_one)
    lang.revert(one_by_one)
    handle.revert()
    assert_model_equals(model, original)
    assert_model_equals(one_by_one, original)
    with pytest.raises(RuntimeError, match="already reverted"):
        handle.revert()


def test_names_resolve_across_model_classes(model):
    diff = random_sft(model, 100)  # names like "bert.encoder..."
    bare = BertModel(tiny_config())
    original = snapshot(bare)
    handle = diff.apply(bare, check_base=False)
    name = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(bare.get_parameter(name), original[name]) or diff.indices[f"bert.{name}"].numel() == 0
    handle.revert()
    assert_model_equals(bare, original)


def test_compose_hand_computed():
    info = {"w": ParamInfo((2, 3), torch.float32)}
    a = SparseDiff({"w": torch.tensor([0, 4])}, {"w": torch.tensor([1.0, 2.0])}, info, method="lt-sft")
    b = SparseDiff({"w": torch.tensor([4, 5])}, {"w": torch.tensor([10.0, 20.0])}, info, method="deft-x")
    c = compose(a, b, scales=[1.0, 0.5])
    assert c.indices["w"].tolist() == [0, 4, 5]
    assert c.values["w"].tolist() == [1.0, 7.0, 10.0]
    assert c.method == "composed" and c.settings["scales"] == [1.0, 0.5]
    assert c.delta("w").tolist() == [[1.0, 0.0, 0.0], [0.0, 7.0, 10.0]]


def test_from_states_takes_masks_of_the_parameters_shape_and_integer_indices():
    base = {"w": torch.zeros(2, 3)}
    tuned = {"w": torch.arange(1.0, 7.0).view(2, 3)}
    by_mask = SparseDiff.from_states(base, tuned, {"w": torch.tensor([[False, True, False], [True, False, True]])})
    by_index = SparseDiff.from_states(base, tuned, {"w": torch.tensor([1, 3, 5], dtype=torch.int32)})
    for diff in (by_mask, by_index):
        assert diff.indices["w"].tolist() == [1, 3, 5] and diff.values["w"].tolist() == [2.0, 4.0, 6.0]


@pytest.mark.parametrize(("selection", "error", "match"), [
    (torch.tensor([True, False, True]), ValueError, r"mask of shape \(3,\) for a parameter of shape \(2, 3\)"),
    (torch.ones(3, 2, dtype=torch.bool), ValueError, r"mask of shape \(3, 2\)"),
    (torch.ones(6, dtype=torch.bool), ValueError, r"mask of shape \(6,\)"),
    (torch.tensor([1.0, 4.5]), TypeError, "float32; give integer flat indices or a bool mask"),
    ([1, 4], TypeError, "list, not a bool mask"),
])
def test_from_states_refuses_a_selection_that_names_other_entries(selection, error, match):
    """A mask of another shape would select the entries at its own flat positions, a float index
    would be truncated: both selected other entries than meant, silently."""
    with pytest.raises(error, match=match):
        SparseDiff.from_states({"w": torch.zeros(2, 3)}, {"w": torch.ones(2, 3)}, {"w": selection})


def test_compose_rejects_conflicts():
    a = SparseDiff({"w": torch.tensor([0])}, {"w": torch.ones(1)}, {"w": ParamInfo((3,), torch.float32)})
    b = SparseDiff({"w": torch.tensor([0])}, {"w": torch.ones(1)}, {"w": ParamInfo((4,), torch.float32)})
    with pytest.raises(ValueError, match="'w'"):
        compose(a, b)
    c = SparseDiff({}, {}, {}, base_model="x")
    d = SparseDiff({}, {}, {}, base_model="y")
    with pytest.raises(ValueError, match="different base models"):
        compose(c, d)


def test_compose_names_an_argument_that_is_not_a_sparse_diff():
    a = SparseDiff({"w": torch.tensor([0])}, {"w": torch.ones(1)}, {"w": ParamInfo((3,), torch.float32)})
    with pytest.raises(TypeError, match=r"argument 0 is a list, not a SparseDiff \(unpack a list: compose\(\*"):
        compose([a, a])
    with pytest.raises(TypeError, match="argument 1 is a str"):
        compose(a, "b.safetensors")


# ---- bad input: clear errors, model untouched -------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda t, m: t.pop("indices/bert.pooler.dense.weight"), "lacks its indices"),
        (lambda t, m: m.update(format="something"), "not a SparseDiff"),
        (lambda t, m: m.update(format_version="9"), "version"),
        (lambda t, m: m.update(params="{not json"), "not valid JSON"),
        (lambda t, m: m.pop("params"), "'params' is missing"),
        (
            lambda t, m: t.update(
                {
                    "indices/bert.pooler.dense.weight": torch.tensor([3, 3], dtype=torch.int32),
                    "values/bert.pooler.dense.weight": torch.ones(2),
                }
            ),
            "sorted ascending and unique",
        ),
        (
            lambda t, m: t.update(
                {
                    "indices/bert.pooler.dense.weight": torch.tensor([10**6], dtype=torch.int32),
                    "values/bert.pooler.dense.weight": torch.ones(1),
                }
            ),
            "outside",
        ),
        (lambda t, m: t.update({"values/bert.pooler.dense.weight": torch.ones(1, dtype=torch.float64)}), "float64"),
        (lambda t, m: t.update({"junk": torch.ones(1)}), "unexpected tensor"),
    ],
)
def test_load_rejects_bad_files(tmp_path, model, mutate, match):
    assert_rewrite_refused(tmp_path, model, mutate, match)


def test_load_rejects_truncated_and_garbage_files(tmp_path, model):
    path = tmp_path / "sft.safetensors"
    random_sft(model, 100).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SparseDiffFormatError, match="corrupt or truncated"):
        SparseDiff.load(path)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(SparseDiffFormatError, match="corrupt or truncated"):
        SparseDiff.load(path)
    with pytest.raises(FileNotFoundError):
        SparseDiff.load(tmp_path / "missing.safetensors")


def test_pickle_is_never_written(tmp_path, model):
    path = tmp_path / "sft.safetensors"
    random_sft(model, 10).save(path)
    assert b"\x80\x04" not in path.read_bytes()[:16]  # safetensors: 8-byte header length, then JSON
    assert path.read_bytes()[8:9] == b"{"


def _one_entry(name: str, info: ParamInfo) -> SparseDiff:
    """A diff of one entry of ``name`` (flat index 0, value 1.0) made for a parameter ``info``."""
    return SparseDiff({name: torch.tensor([0])}, {name: torch.ones(1)}, {name: info})


@pytest.mark.parametrize(
    ("make_bad", "error", "match"),
    [
        (lambda d: _one_entry("nope.weight", ParamInfo((3,), torch.float32)), KeyError, "not in the model"),
        (lambda d: _one_entry("bert.pooler.dense.weight", ParamInfo((4, 4), torch.float32)), ValueError, "shape"),
        (lambda d: _one_entry("bert.pooler.dense.weight", ParamInfo((16, 16), torch.bfloat16)), TypeError, "made for"),
        (lambda d: SparseDiff(d.indices, d.values, d.params, base_model="another-model"), ValueError, "base model"),
        (lambda d: SparseDiff({}, {}, {}, dense={"classifier.weight": torch.ones(5, 16)}), ValueError, "dense"),
    ],
)
def test_apply_rejects_incompatible_diffs_without_touching_the_model(model, make_bad, error, match):
    good = random_sft(model, 100)
    original = snapshot(model)
    with pytest.raises(error, match=match):
        apply_diffs(model, [good, make_bad(good)])  # the good diff comes first: still nothing written
    assert_model_equals(model, original)


@pytest.mark.parametrize(
    ("indices", "values", "error", "match"),
    [
        (torch.tensor([1, 1]), torch.ones(2), ValueError, "unique"),
        (torch.tensor([0, 3]), torch.ones(2), IndexError, "outside"),
        (torch.tensor([0, 1]), torch.ones(3), ValueError, "3 values for 2 indices"),
    ],
)
def test_constructor_validates(indices, values, error, match):
    with pytest.raises(error, match=match):
        SparseDiff({"w": indices}, {"w": values}, {"w": ParamInfo((3,), torch.float32)})


@pytest.mark.parametrize(
    ("value", "why"),
    [(1e-300, "underflows"), (1e300, "overflows"), (0.1, "rounds")],
)
def test_constructor_refuses_float64_values_float32_cannot_hold(value, why):
    """1e-300 used to become 0.0 silently (and 1e300 inf, 0.1 a nearby float32): refused, naming the parameter."""
    values = torch.tensor([0.5, value], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"values\['encoder\.w'\].*float32 cannot hold exactly"):
        SparseDiff({"encoder.w": torch.tensor([0, 2])}, {"encoder.w": values},
                   {"encoder.w": ParamInfo((3,), torch.float32)})


def test_constructor_keeps_float64_values_float32_holds_exactly():
    largest = float(torch.finfo(torch.float32).max)
    values = torch.tensor([0.5, -2.0**-140, largest], dtype=torch.float64)  # a float32 subnormal, the largest float32
    diff = SparseDiff({"w": torch.tensor([0, 1, 2])}, {"w": values}, {"w": ParamInfo((3,), torch.float32)})
    assert diff.values["w"].dtype == torch.float32
    assert diff.values["w"].double().tolist() == values.tolist()
