"""check_indices: the errors it names, one host read for many tensors, and what it remembers."""

from __future__ import annotations

import pytest
import torch

from deftx.ops.validation import check_index_tensor, check_indices, indices_verified, move_indices
from deftx.perf.counters import count_device_work


def names(position: int) -> str:
    return f"op: tensor {position}"


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (torch.tensor([0, 2], dtype=torch.int32), TypeError, r"op: tensor 1: indices have dtype torch.int32"),
        (torch.tensor([[0, 2]]), ValueError, r"op: tensor 1: indices must be 1-D, got shape \(1, 2\)"),
        (torch.tensor([-1, 2]), IndexError, r"op: tensor 1: index range \[-1, 2\] is outside \[0, 5\)"),
        (torch.tensor([1, 5]), IndexError, r"op: tensor 1: index range \[1, 5\] is outside \[0, 5\)"),
        (torch.tensor([3, 1]), ValueError, "op: tensor 1: indices must be sorted ascending and unique"),
        (torch.tensor([1, 1]), ValueError, "op: tensor 1: indices must be sorted ascending and unique"),
    ],
)
def test_errors_name_the_tensor(bad, error, match):
    with pytest.raises(error, match=match):
        check_indices([torch.tensor([0, 4]), bad], [5, 5], names)
    assert not indices_verified(bad, 5)


def test_many_tensors_are_read_once_then_remembered():
    indices = [torch.arange(0, 3 * n, 3) for n in range(1, 51)]
    bounds = [3 * n for n in range(1, 51)]
    with count_device_work("cpu") as first:
        check_indices(indices, bounds, names)
    with count_device_work("cpu") as second:
        check_indices(indices, bounds, names)
    assert first.syncs == {"tolist": 1}
    assert second.launches == 0 and second.sync_count == 0
    assert all(indices_verified(i, b) for i, b in zip(indices, bounds, strict=True))


def test_a_new_bound_or_an_in_place_write_is_checked_again():
    idx = torch.tensor([0, 2, 4])
    check_index_tensor(idx, 5, "op")
    assert indices_verified(idx, 5) and not indices_verified(idx, 6)
    with pytest.raises(IndexError, match=r"\[0, 4\] is outside \[0, 4\)"):
        check_index_tensor(idx, 4, "op")
    idx[1] = 9
    assert not indices_verified(idx, 5)
    with pytest.raises(IndexError, match=r"\[0, 9\] is outside \[0, 5\)"):
        check_index_tensor(idx, 5, "op")


def test_a_dead_tensor_vouches_for_nothing():
    """A new tensor may reuse a dead one's id: it is checked all the same."""
    idx = torch.tensor([0, 1])
    check_index_tensor(idx, 2, "op")
    del idx
    for _ in range(20):
        fresh = torch.tensor([1, 0])
        with pytest.raises(ValueError, match="sorted"):
            check_index_tensor(fresh, 2, "op")
        del fresh


def test_moved_copies_of_checked_indices_stay_checked():
    checked, unchecked = torch.tensor([1, 3]), torch.tensor([1, 3])
    check_index_tensor(checked, 4, "op")
    assert move_indices(checked, torch.device("cpu")) is checked
    assert indices_verified(move_indices(checked, torch.device("meta")), 4)
    assert not indices_verified(move_indices(unchecked, torch.device("meta")), 4)


def test_inference_tensors_are_checked_every_time():
    with torch.inference_mode():
        idx = torch.tensor([0, 1])
    check_index_tensor(idx, 2, "op")
    assert not indices_verified(idx, 2)


def test_meta_tensors_have_no_values_to_check():
    idx = torch.empty(3, dtype=torch.int64, device="meta")
    with count_device_work("meta") as work:
        check_index_tensor(idx, 2, "op")  # three entries below 2 cannot be valid, but there are no values
    assert work.launches == 0 and not indices_verified(idx, 2)
