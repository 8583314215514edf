"""Files of other tools handed to SparseDiff.load are named for what they are, never called corrupt."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from deftx.sft import ParamInfo, SparseDiff, SparseDiffFormatError
from deftx.sft.format import ForeignFormatError


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (lambda p: torch.save({"w": torch.ones(2)}, p), r"a PyTorch pickle archive \(torch\.save\)"),
        (lambda p: torch.save({"w": torch.ones(2)}, p, _use_new_zipfile_serialization=False),
         r"a pickle file \(legacy torch\.save format\)"),
        (lambda p: save_file({"bert.pooler.dense.weight": torch.ones(2, 2)}, str(p), metadata={"format": "pt"}),
         "a safetensors file without deftx's metadata .*'pt'.*model weights"),
        (lambda p: save_file({"base_model.model.q.shira_weight": torch.ones(2)}, str(p)),
         r"peft SHiRA adapter's weights.*SparseDiff\.from_peft"),
        (lambda p: p.write_bytes((SparseDiff({}, {}, {}).save_pretrained(p.parent) / "sft_config.json").read_bytes()),
         r"a JSON file \(an SFT folder's sft_config\.json, adapter_config\.json or config\.json\), not a SparseDiff: "
         r"pass the folder that holds it"),
        (lambda p: p.write_text('\n  {"peft_type": "SHIRA", "r": 2}'), "a JSON file"),
    ],
)
def test_foreign_files_are_named(tmp_path, write, expected):
    path = tmp_path / "file.bin"
    write(path)
    with pytest.raises(ForeignFormatError, match=expected) as caught:
        SparseDiff.load(path)
    assert isinstance(caught.value, SparseDiffFormatError) and "corrupt" not in str(caught.value)


def test_truncated_sparse_diff_is_still_corrupt(tmp_path):
    diff = SparseDiff({"w": torch.tensor([1])}, {"w": torch.tensor([0.5])},
                      {"w": ParamInfo((4,), torch.float32)})
    diff.save(tmp_path / "sft.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "sft.safetensors").read_bytes()[:40])
    with pytest.raises(SparseDiffFormatError, match="corrupt or truncated") as caught:
        SparseDiff.load(tmp_path / "cut.safetensors")
    assert not isinstance(caught.value, ForeignFormatError)


def test_a_folder_is_named_with_its_loader(tmp_path):
    SparseDiff({}, {}, {}).save_pretrained(tmp_path / "hub")
    with pytest.raises(ForeignFormatError, match=r"Hub-style SFT folder.*SparseDiff\.from_pretrained"):
        SparseDiff.load(tmp_path / "hub")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ForeignFormatError, match="a folder without an SFT"):
        SparseDiff.load(tmp_path / "empty")


def test_a_sparse_diff_whose_header_length_starts_like_a_pickle_loads(tmp_path):
    """The header length's first byte can be 0x80 (pickle's PROTO opcode): still a SparseDiff."""
    for size in range(1, 600):
        diff = SparseDiff({"w": torch.arange(size)}, {"w": torch.ones(size)}, {"w": ParamInfo((256,), torch.float32)},
                          settings={"pad": "x" * size})
        diff.save(tmp_path / "sft.safetensors")
        if (tmp_path / "sft.safetensors").read_bytes()[0] == 0x80:
            assert SparseDiff.load(tmp_path / "sft.safetensors").nnz == size
            return
    pytest.fail("no header length with a first byte of 0x80 was produced")


def test_a_missing_file_is_named_as_missing_not_as_an_unreachable_hub_repository(tmp_path):
    from deftx.sft.sources import open_sft

    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors: no such file"):
        open_sft(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="no such file"):
        open_sft("typo/task.safetensors")
