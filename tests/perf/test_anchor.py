"""The anchor benchmark (deftx.perf.anchor): every method selects from the same (θ1, θ0), the
rows and the table."""

from __future__ import annotations

import json

import pytest
import torch

from deftx.perf import anchor

SHAPES = [(300, 7), (13,), (0,), (64, 64)]


@pytest.fixture
def shape_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"name": "tiny", "tensors": [{"name": f"t{i}", "shape": list(s)}
                                                             for i, s in enumerate(SHAPES)]}))
    return str(path)


@pytest.mark.parametrize("method", list(anchor.METHODS))
def test_every_method_selects_at_least_k_and_exact_ones_exactly_k(method):
    theta1, theta0 = anchor.make_pair(SHAPES)
    k = 97
    entries = anchor.RUNS[method](theta1, theta0, k)
    diffs = torch.cat([(a - b).abs().view(-1) for a, b in zip(theta1, theta0, strict=True)])
    at_or_above = int((diffs >= diffs.topk(k).values.min()).sum())
    assert entries == (k if method in ("cat_topk", "deftx") else at_or_above)


def test_measure_reports_the_call_and_deftx_passes(shape_file):
    row = anchor.measure("deftx", shape_file, 0.05)
    numel = 300 * 7 + 13 + 64 * 64
    assert row["numel"] == numel and row["k"] == round(0.05 * numel) == row["entries"]
    assert row["full_passes"] == 2 and row["bytes_read"] == 2 * numel * 8
    assert row["first_call_s"] > 0 and row["imported_dynamo"] is False


def test_summary_takes_the_median_run_and_the_table_shows_every_run():
    runs = [{"method": "cat_topk", "k": 10, "entries": 10, "first_call_s": t, "import_s": 0.0,
             "peak_extra_bytes": 2_000_000_000} for t in (3.0, 1.0, 2.0)]
    ours = {"method": "deftx", "k": 10, "entries": 10, "first_call_s": 0.5, "import_s": 0.1,
            "peak_extra_bytes": 14_000_000, "full_passes": 2, "bytes_read": 80, "imported_dynamo": False}
    row = anchor.summarise(runs)
    assert row["first_call_s"] == 2.0 and row["runs_first_call_s"] == [3.0, 1.0, 2.0]
    table = anchor.markdown([row, anchor.summarise([ours])])
    assert "| `torch.cat` + `torch.topk` | 2.000 s | 3.00, 1.00, 2.00 s | 0.000 s | +2.00 GB | k | 4.00× |" in table
    assert "+14.0 MB" in table and "2 full passes" in table


def test_an_even_number_of_runs_is_refused_not_labelled_median():
    # The median of 1, 2, 3, 4 s is 2.5 s, which no run took; the table must not show 2 s as it.
    runs = [{"method": "cat_topk", "k": 10, "entries": 10, "first_call_s": t, "import_s": 0.0,
             "peak_extra_bytes": 0} for t in (1.0, 2.0, 3.0, 4.0)]
    with pytest.raises(ValueError, match="odd"):
        anchor.summarise(runs)
    with pytest.raises(SystemExit):
        anchor.main(["--repeat", "2"])


@pytest.mark.parametrize(("growth", "cell"), [(-100_000, "| -0.1 MB |"), (-2_000_000_000, "| -2.00 GB |"),
                                              (0, "| +0.0 MB |"), (None, "| - |")])
def test_a_shrinking_rss_reads_as_a_negative_growth(growth, cell):
    row = {"method": "cat_topk", "k": 10, "entries": 10, "first_call_s": 1.0, "import_s": 0.0,
           "peak_extra_bytes": growth}
    assert f"| 0.000 s {cell} k |" in anchor.markdown([anchor.summarise([row])])
