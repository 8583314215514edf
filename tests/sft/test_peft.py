"""peft SHiRA interop: to_peft folders load in peft with logits equal to deftx's apply; from_peft back.

The tests that load adapters with peft skip only when peft is not installed
(``pip install -e ".[peft]"``); the plan, padding and file layout are checked without it.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors import safe_open

from deftx.sft import ParamInfo, SparseDiff
from deftx.sft.peft import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    SHIRA_ENTRY_BYTES,
    PeftExportError,
    PeftImportError,
    plan_shira,
    to_peft,
)
from tests.helpers import assert_bitwise_equal
from tests.sft.tiny import logits, random_diff, tiny_bert, token_ids


def is_linear_weight(name: str) -> bool:
    return name.endswith(".weight") and ("attention.self" in name or name.endswith("dense.weight"))


@pytest.fixture
def peft():
    return pytest.importorskip("peft")


@pytest.fixture
def model():
    return tiny_bert()


def deftx_logits(model, diff, ids):
    handle = diff.apply(model, check_base=False)
    try:
        return logits(model, ids)
    finally:
        handle.revert()


def peft_logits(peft, model, folder, ids, *, merged: bool):
    wrapped = peft.PeftModel.from_pretrained(copy.deepcopy(model), str(folder)).eval()
    return logits(wrapped.merge_and_unload() if merged else wrapped, ids)


def test_padding_is_what_a_uniform_r_needs(tmp_path, model):
    diff = random_diff(model, 300, body=is_linear_weight)
    export = to_peft(diff, model, tmp_path / "adapter")
    sizes = {n.removesuffix(".weight"): p.shape for n, p in model.named_parameters() if n in diff.indices}
    counts = {n.removesuffix(".weight"): idx.numel() for n, idx in diff.indices.items() if idx.numel()}
    r = max(math.ceil(c / sum(sizes[m])) for m, c in counts.items())
    assert export.plan.r == r
    assert {m.module: m.padding for m in export.plan.shira} == {m: r * sum(sizes[m]) - c for m, c in counts.items()}
    assert export.padding_bytes == SHIRA_ENTRY_BYTES * sum(r * sum(sizes[m]) - c for m, c in counts.items())
    with safe_open(str(tmp_path / "adapter" / ADAPTER_WEIGHTS), framework="pt") as handle:
        for module, count in counts.items():
            weight = handle.get_tensor(f"base_model.model.{module}.shira_weight")
            rows, cols = handle.get_tensor(f"base_model.model.{module}.shira_indices").long()
            assert weight.numel() == r * sum(sizes[module]) and not weight[count:].any()
            flat = rows * sizes[module][1] + cols
            assert flat.unique().numel() == flat.numel()
            assert_bitwise_equal(flat[:count], diff.indices[f"{module}.weight"], what=module)
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "SHIRA" and config["r"] == r and sorted(config["target_modules"]) == sorted(counts)


def test_what_shira_cannot_hold_is_listed_not_dropped(tmp_path, model):
    diff = random_diff(model, 400, head=True)
    with pytest.raises(PeftExportError) as caught:
        to_peft(diff, model, tmp_path / "adapter")
    message = str(caught.value)
    for expected in ("bert.embeddings.word_embeddings:", "of an embedding", "bias of Linear", "weight of LayerNorm",
                     "classifier: bias is shipped whole (dense)", "rest='modules_to_save'"):
        assert expected in message
    assert not (tmp_path / "adapter").exists()


def test_a_module_that_cannot_take_the_common_r_is_saved_whole(model):
    """intermediate.dense (24x16) needs r = 9; a 16x16 query cannot hold 9·32 = 288 > 256 entries."""
    intermediate = "bert.encoder.layer.0.intermediate.dense.weight"
    query = "bert.encoder.layer.0.attention.self.query.weight"
    diff = SparseDiff({intermediate: torch.arange(330), query: torch.arange(5)},
                      {intermediate: torch.ones(330), query: torch.ones(5)},
                      {intermediate: ParamInfo((24, 16), torch.float32), query: ParamInfo((16, 16), torch.float32)})
    plan = plan_shira(diff, model)
    assert plan.r == 9 and [m.module for m in plan.shira] == [intermediate.removesuffix(".weight")]
    assert [m.module for m in plan.whole] == [query.removesuffix(".weight")]
    assert "common r = 9 would give it 288 entries, more than its 256" in plan.whole[0].reasons[0]


def near_dense_and_sparse_diff(model) -> SparseDiff:
    """370 of intermediate.dense's 384 entries (r = ceil(370 / 40) = 10 needs 400: no r fits it) and 3 of a
    query's 256 (r = 1)."""
    intermediate = "bert.encoder.layer.0.intermediate.dense.weight"
    query = "bert.encoder.layer.1.attention.self.query.weight"
    gen = torch.Generator().manual_seed(4)
    picks = {intermediate: torch.randperm(384, generator=gen)[:370].sort().values, query: torch.tensor([2, 40, 255])}
    return SparseDiff(picks, {n: torch.randn(i.numel(), generator=gen) for n, i in picks.items()},
                      {n: ParamInfo(tuple(model.get_parameter(n).shape), torch.float32) for n in picks})


def test_a_module_no_r_fits_does_not_push_the_others_out_of_shira(tmp_path, model):
    """It set the common r (10), so the 3-entry query (16x16: r <= 8) left SHiRA with it: rest='error' listed the
    query too, and rest='modules_to_save' refused the export ('nothing for SHiRA to hold')."""
    diff = near_dense_and_sparse_diff(model)
    with pytest.raises(PeftExportError) as caught:
        to_peft(diff, model, tmp_path / "refused")
    assert "intermediate.dense: weight: its 370 entries need r = 10, which gives 400 entries, more than its 384" in (
        str(caught.value))
    assert "query" not in str(caught.value)
    export = to_peft(diff, model, tmp_path / "adapter", rest="modules_to_save")
    assert export.plan.r == 1
    assert [m.module for m in export.plan.shira] == ["bert.encoder.layer.1.attention.self.query"]
    assert [m.module for m in export.plan.whole] == ["bert.encoder.layer.0.intermediate.dense"]


def test_round_trip_gives_back_every_shira_entry_and_the_whole_modules_as_applied(tmp_path, model):
    """SparseDiff -> peft -> SparseDiff: each entry of a SHiRA module back as it was (name, index, value, shape,
    dtype); a module saved whole back as its dense tensors with the diff applied (plain torch reference)."""
    diff = near_dense_and_sparse_diff(model)
    to_peft(diff, model, tmp_path / "adapter", rest="modules_to_save")
    back = SparseDiff.from_peft(tmp_path / "adapter")
    query, intermediate = sorted(diff.indices, key=lambda n: "query" not in n)
    assert list(back.indices) == [query]
    assert_bitwise_equal(back.indices[query], diff.indices[query], what="indices")
    assert_bitwise_equal(back.values[query], diff.values[query], what="values")
    assert back.params[query] == diff.params[query]
    weight = model.get_parameter(intermediate).detach().clone().reshape(-1)
    weight[diff.indices[intermediate]] += diff.values[intermediate]
    bias = intermediate.replace(".weight", ".bias")
    assert sorted(back.dense) == [bias, intermediate]
    assert_bitwise_equal(back.dense[intermediate], weight.view(24, 16), what="whole weight")
    assert_bitwise_equal(back.dense[bias], model.get_parameter(bias).detach(), what="whole bias")


def test_a_module_no_r_fits_exports_with_equal_logits(tmp_path, peft, model):
    diff = near_dense_and_sparse_diff(model)
    to_peft(diff, model, tmp_path / "adapter", rest="modules_to_save")
    ids = token_ids()
    expected = deftx_logits(model, diff, ids)
    assert_bitwise_equal(peft_logits(peft, model, tmp_path / "adapter", ids, merged=False), expected, what="unmerged")
    assert_bitwise_equal(peft_logits(peft, model, tmp_path / "adapter", ids, merged=True), expected, what="merged")


def test_an_sft_with_no_linear_entry_shira_can_hold_is_refused_saying_so(tmp_path, model):
    diff = SparseDiff({"classifier.weight": torch.arange(40)}, {"classifier.weight": torch.ones(40)},
                      {"classifier.weight": ParamInfo((3, 16), torch.float32)})
    with pytest.raises(PeftExportError, match=r"no nn\.Linear weight of the model has entries in this SFT that SHiRA "
                                              r"can hold.*\n  classifier: weight: its 40 entries need r = 3"):
        to_peft(diff, model, tmp_path / "adapter", rest="modules_to_save")


def test_linear_only_sft_gives_equal_logits_merged_and_unmerged(tmp_path, peft, model):
    diff = random_diff(model, 300, body=is_linear_weight)
    to_peft(diff, model, tmp_path / "adapter")
    ids = token_ids()
    expected = deftx_logits(model, diff, ids)
    assert not torch.equal(expected, logits(model, ids))
    assert_bitwise_equal(peft_logits(peft, model, tmp_path / "adapter", ids, merged=False), expected, what="unmerged")
    assert_bitwise_equal(peft_logits(peft, model, tmp_path / "adapter", ids, merged=True), expected, what="merged")


def test_whole_modules_through_modules_to_save_are_exact(tmp_path, peft, model):
    diff = random_diff(model, 400, head=True)
    export = to_peft(diff, model, tmp_path / "adapter", rest="modules_to_save")
    assert "classifier" in [m.module for m in export.plan.whole] and "modules_to_save" in export.summary()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = token_ids()
    expected = deftx_logits(model, diff, ids)
    assert_bitwise_equal(peft_logits(peft, model, tmp_path / "adapter", ids, merged=False), expected, what="unmerged")
    assert_bitwise_equal(peft_logits(peft, model, tmp_path / "adapter", ids, merged=True), expected, what="merged")
    for name, param in model.named_parameters():
        assert_bitwise_equal(param.detach(), before[name], what=f"to_peft left {name} as it was")


def test_layout_matches_peft_own_save(tmp_path, peft, model):
    """Same tensor names and config keys as an adapter peft itself saves for the same targets."""
    diff = random_diff(model, 200, body=is_linear_weight)
    export = to_peft(diff, model, tmp_path / "ours")
    targets = [m.module for m in export.plan.shira]
    reference = peft.get_peft_model(copy.deepcopy(model), peft.ShiraConfig(r=export.plan.r, target_modules=targets))
    reference.save_pretrained(str(tmp_path / "peft"))
    keys = {}
    for name in ("ours", "peft"):
        with safe_open(str(tmp_path / name / ADAPTER_WEIGHTS), framework="pt") as handle:
            keys[name] = {k: (tuple(handle.get_tensor(k).shape), handle.get_tensor(k).dtype) for k in handle.keys()}  # noqa: SIM118
    assert keys["ours"] == keys["peft"]
    ours = json.loads((tmp_path / "ours" / ADAPTER_CONFIG).read_text())
    theirs = json.loads((tmp_path / "peft" / ADAPTER_CONFIG).read_text())
    assert set(ours) <= set(theirs)
    assert {k: ours[k] for k in ("peft_type", "r", "mask_type", "fan_in_fan_out")} == {
        k: theirs[k] for k in ("peft_type", "r", "mask_type", "fan_in_fan_out")}


def test_the_same_diff_exports_the_same_bytes(tmp_path, model):
    diff = random_diff(model, 400, head=True, base_model="org/tiny", method="deft-x", info={"num_labels": 3})
    folders = [tmp_path / f"adapter-{i}" for i in range(3)]
    for folder in folders:
        to_peft(diff, model, folder, rest="modules_to_save", check_base=False)
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        assert len({(folder / name).read_bytes() for folder in folders}) == 1, name


def test_round_trip_drops_the_padding_and_applies_identically(tmp_path, model):
    diff = random_diff(model, 400, head=True, base_model="org/tiny", method="deft-x", info={"num_labels": 3})
    to_peft(diff, model, tmp_path / "adapter", rest="modules_to_save", check_base=False)
    back = SparseDiff.from_peft(tmp_path / "adapter")
    assert (back.method, back.k, back.base_model, back.info) == ("deft-x", 400, "org/tiny", {"num_labels": 3})
    held = {f"{m}.weight" for m in json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())["target_modules"]}
    for name in held:
        assert_bitwise_equal(back.indices[name], diff.indices[name], what=name)
        assert_bitwise_equal(back.values[name], diff.values[name], what=name)
    states = []
    for sft in (diff, back):
        handle = sft.apply(model, check_base=False)
        states.append({n: p.detach().clone() for n, p in model.named_parameters()})
        handle.revert()
    for name in states[0]:
        assert_bitwise_equal(states[1][name], states[0][name], what=name)


def test_round_trip_keeps_the_settings_the_sft_was_made_with(tmp_path, model):
    """from_peft gave every deftx export the settings {'source': 'peft', 'r': r}: how the SFT was trained (its
    config, branch) was lost on the way through peft, where method, K, base model and info came back."""
    settings = {"config": {"learning_rate": 5e-05, "seed": 3}, "branch": "deft-x"}
    diff = random_diff(model, 100, body=is_linear_weight, settings=settings)
    to_peft(diff, model, tmp_path / "adapter")
    assert SparseDiff.from_peft(tmp_path / "adapter").settings == settings


def rewrite_adapter(folder, edit_tensors=lambda tensors: None, edit_record=lambda record: None) -> None:
    """Rewrite ``folder``'s adapter weights and deftx record in place (another tool's edit that kept the metadata)."""
    from safetensors.torch import load_file, save_file

    path = folder / ADAPTER_WEIGHTS
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors, record = load_file(str(path)), json.loads(metadata["deftx"])
    edit_tensors(tensors)
    edit_record(record)
    save_file(tensors, str(path), metadata={**metadata, "deftx": json.dumps(record)})


def test_padding_that_is_not_zero_is_refused_not_dropped(tmp_path, model):
    """from_peft dropped the last ``padding`` entries by count: values trained into them (or a padding count larger
    than the module's entries: every entry) were lost without a word."""
    diff = random_diff(model, 300, body=is_linear_weight)
    export = to_peft(diff, model, tmp_path / "adapter")
    module = next(m for m in export.plan.shira if m.padding)
    key = f"base_model.model.{module.module}.shira_weight"

    def train_the_padding(tensors):
        tensors[key][-module.padding:] = 0.25

    rewrite_adapter(tmp_path / "adapter", train_the_padding)
    with pytest.raises(PeftImportError, match=f"last {module.padding} entries are zero padding, but they are not all"):
        SparseDiff.from_peft(tmp_path / "adapter")
    to_peft(diff, model, tmp_path / "adapter")
    rewrite_adapter(tmp_path / "adapter", edit_record=lambda record: record["padding"].update({module.module: 10**6}))
    with pytest.raises(PeftImportError, match=f"zero padding, more than its {module.entries + module.padding} entries"):
        SparseDiff.from_peft(tmp_path / "adapter")


def test_a_shira_weight_without_its_indices_is_refused_not_dropped(tmp_path, model):
    """A module whose shira_indices are missing: its trained shira_weight was skipped without a word and the
    other modules loaded, so the SFT lost that module's entries."""
    diff = random_diff(model, 300, body=is_linear_weight)
    export = to_peft(diff, model, tmp_path / "adapter")
    module = export.plan.shira[0].module
    rewrite_adapter(tmp_path / "adapter", lambda tensors: tensors.pop(f"base_model.model.{module}.shira_indices"))
    with pytest.raises(PeftImportError, match=f"{module}.shira_weight has no matching shira_indices"):
        SparseDiff.from_peft(tmp_path / "adapter")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda record: record["padding"].update({m: "x" for m in record["padding"]}), "with 'x' entries, not a count"),
    (lambda record: [p.update(dtype="int8") for p in record["params"].values()], "is not a shape and a dtype"),
    (lambda record: [p.update(shape=[16.0, 16]) for p in record["params"].values()], "is not a shape and a dtype"),
    (lambda record: record.update(params=[]), "its 'params', 'padding' and 'settings' objects"),
    (lambda record: record.update(settings="lr=5e-5"), "its 'params', 'padding' and 'settings' objects"),
])
def test_a_record_that_is_not_deftx_own_is_a_peft_import_error(tmp_path, model, edit, message):
    to_peft(random_diff(model, 100, body=is_linear_weight), model, tmp_path / "adapter")
    rewrite_adapter(tmp_path / "adapter", edit_record=edit)
    with pytest.raises(PeftImportError, match=message):
        SparseDiff.from_peft(tmp_path / "adapter")


def test_an_adapter_config_that_is_not_utf8_json_is_a_peft_import_error(tmp_path, model):
    to_peft(random_diff(model, 100, body=is_linear_weight), model, tmp_path / "adapter")
    (tmp_path / "adapter" / ADAPTER_CONFIG).write_bytes(b"\xff\xfe{}")
    with pytest.raises(PeftImportError, match=r"cannot read adapter_config\.json .*can't decode byte 0xff"):
        SparseDiff.from_peft(tmp_path / "adapter")


def test_from_peft_reads_an_adapter_peft_trained(tmp_path, peft, model):
    config = peft.ShiraConfig(r=2, target_modules=["query", "value"], init_weights=False, random_seed=3)
    trained = peft.get_peft_model(copy.deepcopy(model), config)
    trained.save_pretrained(str(tmp_path / "adapter"))
    with pytest.raises(PeftImportError, match="pass the model"):
        SparseDiff.from_peft(tmp_path / "adapter")
    diff = SparseDiff.from_peft(tmp_path / "adapter", model=model)
    assert diff.nnz == 4 * 2 * (16 + 16) and diff.method == "shira"
    merged = trained.merge_and_unload()
    handle = diff.apply(model, check_base=False)
    for name, param in model.named_parameters():
        assert_bitwise_equal(param.detach(), merged.get_parameter(name).detach(), what=name)
    handle.revert()


def test_a_lora_adapter_is_refused_by_name(tmp_path, peft, model):
    lora = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["query"]))
    lora.save_pretrained(str(tmp_path / "lora"))
    with pytest.raises(PeftImportError, match="a peft LORA adapter, not SHiRA"):
        SparseDiff.from_peft(tmp_path / "lora")
    from deftx.sft.format import ForeignFormatError

    with pytest.raises(ForeignFormatError, match="LoRA adapter"):
        SparseDiff.load(tmp_path / "lora" / ADAPTER_WEIGHTS)


def tiny_mlm(kind: str, *, tie: bool = True):
    """A tiny random masked LM whose decoder shares the word-embedding tensor (``tie``), built in code."""
    from transformers import BertConfig, BertForMaskedLM, XLMRobertaConfig, XLMRobertaForMaskedLM

    config_class, model_class = {"bert": (BertConfig, BertForMaskedLM),
                                 "xlmr": (XLMRobertaConfig, XLMRobertaForMaskedLM)}[kind]
    torch.manual_seed(0)
    return model_class(config_class(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=24, max_position_embeddings=24,
                                    tie_word_embeddings=tie)).eval()


def embedding_and_query_diff(model) -> SparseDiff:
    """20% of the word embeddings (whatever name the model lists the tensor under) and of one query weight."""
    names = [n for n, p in model.named_parameters()
             if p is model.get_input_embeddings().weight or n.endswith("layer.0.attention.self.query.weight")]
    gen = torch.Generator().manual_seed(1)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    tuned = {n: t + 0.5 * torch.randn(t.shape, generator=gen) for n, t in base.items()}
    return SparseDiff.from_states(base, tuned, {n: torch.rand(base[n].shape, generator=gen) < 0.2 for n in names})


def reference_logits(model, diff, ids) -> torch.Tensor:
    """Plain torch: a copy of ``model`` with each entry added to its (shared) tensor in float32."""
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        for name in diff.indices:
            tuned.get_parameter(name).view(-1)[diff.indices[name]] += diff.values[name]
    return logits(tuned, ids)


@pytest.mark.parametrize(("kind", "tie"), [("bert", True), ("xlmr", True), ("bert", False)])
def test_tied_word_embeddings_export_with_equal_logits(tmp_path, peft, kind, tie):
    """BERT's decoder stayed at θ0 (the embedding copy in modules_to_save broke the tie: logits 4.4 off);
    XLM-R's shared tensor, listed as lm_head.decoder.weight, became a SHiRA target reaching the decoder only
    (5.5 off unmerged). Every module holding a changed tied tensor is saved whole, none is a SHiRA target."""
    model = tiny_mlm(kind, tie=tie)
    diff = embedding_and_query_diff(model)
    ids = token_ids(vocab=64)
    expected = reference_logits(model, diff, ids)
    assert_bitwise_equal(deftx_logits(model, diff, ids), expected, what="deftx apply")
    export = to_peft(diff, model, tmp_path / "adapter", rest="modules_to_save")
    prefix = model.base_model_prefix
    embedding, decoder = f"{prefix}.embeddings.word_embeddings", {"bert": "cls.predictions.decoder",
                                                                  "xlmr": "lm_head.decoder"}[kind]
    assert {m.module for m in export.plan.whole} == ({embedding, decoder} if tie else {embedding})
    assert [m.module for m in export.plan.shira] == [f"{prefix}.encoder.layer.0.attention.self.query"]
    assert_bitwise_equal(peft_logits(peft, model, tmp_path / "adapter", ids, merged=False), expected, what="unmerged")
    assert_bitwise_equal(peft_logits(peft, model, tmp_path / "adapter", ids, merged=True), expected, what="merged")
    back = SparseDiff.from_peft(tmp_path / "adapter")
    assert_bitwise_equal(deftx_logits(model, back, ids), expected, what="from_peft back")


@pytest.mark.parametrize(("kind", "head"), [("bert", "cls.predictions"), ("xlmr", "lm_head")])
def test_a_tied_holder_inside_a_module_saved_whole_goes_with_it(tmp_path, peft, kind, head):
    """The head's bias (tied to decoder.bias) makes the whole head a saved module: the decoder, holding the
    tied embedding too, is saved inside it, not again; from_peft leaves the tied copies out (it used to
    give a dense 'decoder.bias' the model does not list, refused on apply)."""
    model = tiny_mlm(kind)
    diff = embedding_and_query_diff(model)
    bias = SparseDiff({f"{head}.bias": torch.tensor([3, 9])}, {f"{head}.bias": torch.tensor([0.75, -1.5])},
                      {f"{head}.bias": ParamInfo((64,), torch.float32)})
    diff = SparseDiff({**diff.indices, **bias.indices}, {**diff.values, **bias.values}, {**diff.params, **bias.params})
    ids = token_ids(vocab=64)
    expected = reference_logits(model, diff, ids)
    export = to_peft(diff, model, tmp_path / "adapter", rest="modules_to_save")
    assert {m.module for m in export.plan.whole} == {head, f"{model.base_model_prefix}.embeddings.word_embeddings"}
    assert_bitwise_equal(peft_logits(peft, model, tmp_path / "adapter", ids, merged=False), expected, what="unmerged")
    assert_bitwise_equal(deftx_logits(model, SparseDiff.from_peft(tmp_path / "adapter"), ids), expected, what="back")


def test_an_export_whose_weights_cannot_be_written_leaves_the_earlier_pair(tmp_path, model, monkeypatch):
    """The adapter config was written before the weights: a failed weights write left the new config beside the
    earlier export's weights (a base model and target modules the weights were not made for)."""
    import deftx.sft.peft as peft_module

    folder = tmp_path / "adapter"
    earlier = random_diff(model, 400, head=True, base_model="org/earlier", method="deft-x")
    to_peft(earlier, model, folder, rest="modules_to_save", check_base=False)
    pair = {name: (folder / name).read_bytes() for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG)}

    def disk_full(target, data):
        raise OSError(28, "No space left on device", str(target))

    monkeypatch.setattr(peft_module, "atomic_write_bytes", disk_full)
    later = random_diff(model, 300, head=True, base_model="org/later", method="lt-sft")
    with pytest.raises(OSError, match="No space left"):
        to_peft(later, model, folder, rest="modules_to_save", check_base=False)
    assert {name: (folder / name).read_bytes() for name in pair} == pair
