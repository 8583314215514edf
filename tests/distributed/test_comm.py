"""Communication accounting: the ledger counts calls and payload bytes per (collective, purpose)."""

from __future__ import annotations

import pytest
import torch

from deftx.distributed import comm


def test_ledger_sums_calls_and_bytes_per_purpose():
    ledger = comm.CommLedger()
    ledger.add("all_reduce", "histogram", 2048)
    ledger.add("all_reduce", "histogram", 2048)
    ledger.add("gather", "diff values", 40)
    assert ledger.calls == 3 and ledger.bytes == 4136
    assert ledger.counts["all_reduce", "histogram"].calls == 2
    assert ledger.counts["all_reduce", "histogram"].bytes == 4096
    lines = ledger.report().splitlines()
    assert len(lines) == 3 and "4,136" in lines[-1] and "histogram" in lines[0]


def test_nested_ledgers_both_count_and_close():
    with comm.count_communication() as outer:
        comm._record("all_reduce", "x", 8)
        with comm.count_communication() as inner:
            comm._record("all_reduce", "y", 16)
        comm._record("gather", "z", 4)
    comm._record("gather", "after", 1)
    assert (outer.calls, outer.bytes) == (3, 28)
    assert (inner.calls, inner.bytes) == (1, 16)


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        (torch.zeros(257, dtype=torch.int64), 2056),
        (torch.zeros(3, 5), 60),
        (torch.zeros(0), 0),
        (torch.zeros(7, dtype=torch.bfloat16), 14),
    ],
)
def test_payload_bytes(tensor, expected):
    assert comm.payload_bytes(tensor) == expected


@pytest.mark.parametrize(("payload", "world", "expected"), [(1000, 1, 0.0), (1000, 2, 1000.0), (1024, 8, 1792.0)])
def test_ring_all_reduce_wire_bytes(payload, world, expected):
    assert comm.ring_all_reduce_wire_bytes(payload, world) == expected


@pytest.mark.parametrize(
    "per_rank",
    [
        [(5, 20), (5, 20)],
        [(5, 20), (6, 20)],
        [(4, 9), (5, 9), (6, 9)],  # the middle rank's k is the mean: a sum alone would not tell
        [(2**62 + 7, 1), (7, 1), (2**62 + 7, 1)],  # only the highest digit differs
        [(2**63 - 1, 0)] * 3,
        [(0, 0), (1 << 21, 0)],
    ],
)
def test_agreement_terms_tell_equal_values_from_unequal_ones(per_rank):
    """all_agree on the int64 sums of every rank's agreement_terms == whether the ranks' values are equal."""
    terms = torch.tensor([comm.agreement_terms(values) for values in per_rank], dtype=torch.int64)
    summed = terms.sum(0).tolist()
    assert comm.all_agree(summed, len(per_rank)) == (len(set(per_rank)) == 1)
