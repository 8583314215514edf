"""Native topk_indices against a stable sort of (-|x|, tensor position, flat index), and its NaN count."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from deftx.ops import native
from tests.ops.conftest import DTYPE_SETS
from tests.ops.native.flushing import ROOT, run_flushing_caller

if native.unavailable_reason() is not None:
    pytest.skip(native.unavailable_reason(), allow_module_level=True)

from deftx.ops.native.topk import select
from deftx.ops.native.topk import topk_indices as native_topk_indices

SHAPE_SETS = {
    "single": [(1000,)],
    "ragged": [(33, 17), (0,), (1,), (4097,), (5, 7, 3)],
    "empty": [(0,), (0, 4)],
    "multi_segment": [(65_537,), (3,), (66_001,)],
    "many_small": [(7,)] * 40,
}
K_CHOICES = ("zero", "one", "mid", "total")


def topk_indices(tensors: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """The native selection split per tensor; these inputs hold no NaN."""
    indices, stats = native_topk_indices(tensors, k)
    *counts, nan_count = stats.tolist()
    assert nan_count == 0
    assert indices.shape == (k,)
    return list(indices.split(counts))


def reference_topk(tensors: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Stable sort of -|x| over the concatenation, so ties keep (tensor, flat index) order."""
    if not tensors:
        return []
    scores = torch.cat([t.float().abs().flatten() for t in tensors])
    chosen = torch.sort(-scores, stable=True).indices[:k]
    result, offset = [], 0
    for t in tensors:
        inside = (chosen >= offset) & (chosen < offset + t.numel())
        result.append(torch.sort(chosen[inside] - offset).values)
        offset += t.numel()
    return result


def special_values(n: int, generator: torch.Generator) -> torch.Tensor:
    """Infinities, signed zeros, subnormals of every dtype, extremes and ordinary values."""
    pool = torch.tensor(
        [
            float("inf"),
            float("-inf"),
            0.0,
            -0.0,
            1.0,
            -1.0,
            65504.0,
            -3.0e38,
            2.0**-24,
            -(2.0**-24),
            2.0**-133,
            1e-40,
            -1e-45,
            9.2e-41,
            6.0e-8,
            0.5,
        ]
    )
    return pool[torch.randint(len(pool), (n,), generator=generator)]


def make_tensor(shape, dtype, kind: str, generator: torch.Generator) -> torch.Tensor:
    n = 1
    for size in shape:
        n *= size
    if kind == "normal":
        x = torch.randn(n, generator=generator)
    elif kind == "ties":
        x = torch.randint(-4, 5, (n,), generator=generator).float()
    elif kind == "constant":
        x = torch.full((n,), -2.5)
    else:
        x = special_values(n, generator)
    return x.to(dtype).reshape(shape)


def make_inputs(shapes, dtypes, kind: str, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [make_tensor(shape, dtypes[i % len(dtypes)], kind, generator) for i, shape in enumerate(shapes)]


def choose_k(choice: str, total: int) -> int:
    return {"zero": 0, "one": min(1, total), "mid": total // 3, "total": total}[choice]


def assert_same_selection(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(actual) == len(expected)
    for t, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert a.dtype == torch.int64 and a.dim() == 1, f"tensor {t}: {a.dtype} {a.dim()}-D"
        assert torch.equal(a, e), (
            f"tensor {t}: {a.numel()} selected vs {e.numel()} expected; "
            f"first differences {sorted(set(a.tolist()) ^ set(e.tolist()))[:8]}"
        )


@pytest.mark.parametrize("k_choice", K_CHOICES)
@pytest.mark.parametrize("kind", ["normal", "ties", "constant", "special"])
@pytest.mark.parametrize("dtypes", DTYPE_SETS.values(), ids=DTYPE_SETS.keys())
@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
def test_matches_stable_sort_reference(shapes, dtypes, kind, k_choice):
    tensors = make_inputs(shapes, dtypes, kind)
    k = choose_k(k_choice, sum(t.numel() for t in tensors))
    actual = topk_indices(tensors, k)
    assert sum(a.numel() for a in actual) == k
    assert_same_selection(actual, reference_topk(tensors, k))


@pytest.mark.parametrize("k", [1, 2, 3, 5, 64, 1000, 4095, 4096, 4097])
def test_every_rank_of_tied_values_across_segments(k):
    # Values 0..7 repeated: every threshold has ties spread over several 2^16 segments.
    tensors = [
        (torch.arange(140_000) % 8).float().reshape(280, 500),
        (torch.arange(9_000) % 8).to(torch.bfloat16),
    ]
    assert_same_selection(topk_indices(tensors, k), reference_topk(tensors, k))


@pytest.mark.parametrize("threads", [1, 3])
def test_result_does_not_depend_on_thread_count(threads):
    # torch and the library share one OpenMP runtime, so this sets the library's team size.
    tensors = [(torch.arange(140_000) % 8).float(), (torch.arange(9_000) % 5).half()]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        actual = topk_indices(tensors, 40_001)
    finally:
        torch.set_num_threads(before)
    assert_same_selection(actual, reference_topk(tensors, 40_001))


# getloadavg() for OpenMP's dynamic team sizes: a load of 1000, then 0, by turns, so that under
# OMP_DYNAMIC=true consecutive parallel regions get one thread, then every thread.
ALTERNATING_LOAD = """
static int calls;
int getloadavg(double loads[], int count) {
  const double load = calls++ % 2 ? 0.0 : 1000.0;
  for (int i = 0; i < count; ++i) loads[i] = load;
  return count;
}
"""

# Four selections in a row (each starts its parallel regions at the other parity of the loads).
CHANGING_TEAMS = """
import json, sys, torch
from deftx.ops.native.topk import select
generator = torch.Generator().manual_seed(0)
tensors = [torch.randn(size, generator=generator) for size in json.loads(sys.argv[1])]
print(json.dumps([select(tensors, int(sys.argv[2]), concatenated=True).indices.tolist() for _ in range(4)]))
"""


def test_result_does_not_depend_on_team_sizes_changing_between_regions(tmp_path):
    """Under OMP_DYNAMIC=true the runtime sizes each parallel region's team from the load: the
    candidate lists the partition's threads wrote are all counted when a later region is smaller."""
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.skip("needs a C compiler (cc) on PATH")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs for teams of two sizes")
    source, shim = tmp_path / "loadavg.c", tmp_path / "loadavg.so"
    source.write_text(ALTERNATING_LOAD)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(shim), str(source)], check=True)
    # after what is preloaded already (a sanitizer's runtime must come first)
    preload = " ".join(filter(None, [os.environ.get("LD_PRELOAD"), str(shim)]))
    env = {**os.environ, "OMP_DYNAMIC": "true", "OMP_NUM_THREADS": "2", "LD_PRELOAD": preload,
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    sizes, k = [3_000_000, 200_000], 1000
    done = subprocess.run([sys.executable, "-c", CHANGING_TEAMS, json.dumps(sizes), str(k)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(size, generator=generator) for size in sizes]
    expected = torch.cat([idx + sum(sizes[:t]) for t, idx in enumerate(reference_topk(tensors, k))])
    for run, got in enumerate(json.loads(done.stdout.splitlines()[-1])):  # after what a runtime prints
        assert got == expected.tolist(), f"selection {run}: {len(set(got) - set(expected.tolist()))} entries differ"


def test_hand_computed_ties_and_signed_zero():
    tensors = [
        torch.tensor([1.0, -3.0, 2.0, -0.0]),
        torch.tensor([[3.0, 0.5], [0.0, -7.0]], dtype=torch.bfloat16),
        torch.tensor([-3.0, 0.0], dtype=torch.float16),
    ]
    expected_by_k = {
        1: [[], [3], []],
        2: [[1], [3], []],  # |-3.0| of tensor 0 wins the tie against tensors 1 and 2
        4: [[1], [0, 3], [0]],
        5: [[1, 2], [0, 3], [0]],
        7: [[0, 1, 2], [0, 1, 3], [0]],
        8: [[0, 1, 2, 3], [0, 1, 3], [0]],  # -0.0 ties with +0.0: earliest first
        9: [[0, 1, 2, 3], [0, 1, 2, 3], [0]],
        10: [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1]],
    }
    for k, expected in expected_by_k.items():
        actual = topk_indices(tensors, k)
        assert [a.tolist() for a in actual] == expected, f"k = {k}"


def test_mixed_dtypes_compare_by_exact_value():
    # 1 + 2^-10 is exact in fp32 and fp16 but rounds to 1.0 in bf16.
    value = 1.0 + 2.0**-10
    tensors = [
        torch.tensor([1.0]),
        torch.tensor([value], dtype=torch.bfloat16),
        torch.tensor([value], dtype=torch.float16),
        torch.tensor([value], dtype=torch.float32),
    ]
    assert [a.tolist() for a in topk_indices(tensors, 1)] == [[], [], [0], []]
    assert [a.tolist() for a in topk_indices(tensors, 2)] == [[], [], [0], [0]]
    assert [a.tolist() for a in topk_indices(tensors, 3)] == [[0], [], [0], [0]]


def test_fp16_subnormal_equals_fp32_value():
    tiny = 2.0**-24  # smallest fp16 subnormal, a normal fp32
    tensors = [torch.tensor([0.0, tiny], dtype=torch.float16), torch.tensor([tiny, tiny / 2])]
    assert [a.tolist() for a in topk_indices(tensors, 1)] == [[1], []]
    assert [a.tolist() for a in topk_indices(tensors, 2)] == [[1], [0]]
    assert [a.tolist() for a in topk_indices(tensors, 3)] == [[1], [0, 1]]


def test_no_tensors():
    assert topk_indices([], 0) == []


@pytest.mark.parametrize("k", [0, 1, 4, 9])
def test_nan_entries_are_counted(k):
    """A NaN ranks above +inf, so it is always among the k >= 1 selected (k = 0 reads all)."""
    nan = float("nan")
    tensors = [
        torch.tensor([1.0, nan, -nan, float("inf")]),
        torch.tensor([2.0, 3.0], dtype=torch.bfloat16),
        torch.tensor([nan, 0.5, nan], dtype=torch.float16),
    ]
    _, stats = native_topk_indices(tensors, k)
    assert stats.tolist()[-1] == 4


def test_nan_free_inputs_count_none():
    _, stats = native_topk_indices([torch.tensor([float("inf"), -float("inf"), 0.0])], 2)
    assert stats.tolist() == [2, 0]


@pytest.mark.parametrize("k", [-1, 8])
def test_k_out_of_range_is_rejected(k):
    with pytest.raises(ValueError, match="k"):
        topk_indices([torch.ones(3), torch.ones(4)], k)


def test_unsupported_dtype_is_rejected():
    with pytest.raises(TypeError, match="float64"):
        topk_indices([torch.ones(3), torch.ones(4, dtype=torch.float64)], 2)


def test_non_contiguous_tensor_is_rejected():
    with pytest.raises(ValueError, match="contiguous"):
        topk_indices([torch.ones(4, 6).t()], 2)


def difference_inputs(shapes, dtypes, kind: str, seed: int = 0):
    """(θ1, θ0) pairs, every third tensor without a base: θ0 from ``make_inputs`` and θ1 a
    perturbation of it (small steps: the differences tie and round)."""
    theta0 = make_inputs(shapes, dtypes, kind, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    theta1 = [(x.float() + torch.randint(-2, 3, x.shape, generator=generator) * 0.375).to(x.dtype) for x in theta0]
    bases = [None if t % 3 == 2 else x for t, x in enumerate(theta0)]
    return theta1, bases


def materialised(theta1, bases):
    return [x if b is None else x.float() - b.float() for x, b in zip(theta1, bases, strict=True)]


def without_nan_differences(theta1, bases):
    """Copies of (θ1, θ0) whose differences hold no NaN: where ``inf − inf`` would be one, by
    turns θ0 becomes 0 (the difference is θ1's infinity) or θ1 does (minus θ0's), so infinite
    differences of both signs are ranked and compared instead of making the selection moot."""
    theta1, bases = [x.clone() for x in theta1], [None if b is None else b.clone() for b in bases]
    for x, b, score in zip(theta1, bases, materialised(theta1, bases), strict=True):
        nan = torch.isnan(score.float()).reshape(-1).nonzero().flatten()
        if b is not None:
            b.view(-1)[nan[0::2]] = 0
            x.view(-1)[nan[1::2]] = 0
    return theta1, bases


@pytest.mark.parametrize("capacity", [None, 0])
@pytest.mark.parametrize("k_choice", K_CHOICES)
@pytest.mark.parametrize("kind", ["normal", "ties", "special"])
@pytest.mark.parametrize("dtypes", DTYPE_SETS.values(), ids=DTYPE_SETS.keys())
@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
def test_bases_select_as_the_materialised_differences(shapes, dtypes, kind, k_choice, capacity):
    """Both selection paths (candidate lists; four full passes when the threshold bin holds
    more than ``capacity`` keys) against the stable sort of the differences."""
    theta1, bases = difference_inputs(shapes, dtypes, kind)
    if kind == "special":  # θ0's infinities plus a step are the same infinities: inf − inf
        theta1, bases = without_nan_differences(theta1, bases)
    scores = materialised(theta1, bases)
    assert sum(int(torch.isnan(s.float()).sum()) for s in scores) == 0
    k = choose_k(k_choice, sum(t.numel() for t in theta1))
    chosen = select(theta1, k, bases, candidate_capacity=capacity)
    assert chosen.nan_count == 0
    assert_same_selection(list(chosen.indices.split(chosen.counts)), reference_topk(scores, k))


def test_full_passes_are_two_unless_the_threshold_bin_is_crowded():
    tensors = [(torch.arange(140_000) % 8).float(), torch.randn(70_000)]
    assert select(tensors, 1_000).full_passes == 2
    assert select(tensors, 1_000, candidate_capacity=10).full_passes == 4
    assert select(tensors, 0).full_passes == 1 and select([torch.empty(0)], 0).full_passes == 0


@pytest.mark.parametrize("threads", [1, 3])
def test_bases_do_not_depend_on_thread_count(threads):
    theta1, bases = difference_inputs(SHAPE_SETS["multi_segment"], [torch.float32, torch.float16], "ties", seed=4)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        actual = select(theta1, 40_001, bases)
    finally:
        torch.set_num_threads(before)
    assert_same_selection(list(actual.indices.split(actual.counts)),
                          reference_topk(materialised(theta1, bases), 40_001))


# Selections of subnormal differences with the caller's thread flushing denormals (FTZ/DAZ).
FLUSHING_CALLER = """
import json, sys, torch
from deftx.ops.native.topk import select
generator = torch.Generator().manual_seed(0)
tiny = torch.finfo(torch.float32).tiny
theta1, theta0 = (torch.rand(1 << 18, generator=generator) * tiny for _ in range(2))
if not torch.set_flush_denormal(True):
    sys.exit(77)
print(json.dumps([select([theta1], 1000, [theta0]).indices.tolist() for _ in range(4)]))
"""


def test_bases_subtract_with_subnormals_whatever_the_callers_denormal_mode():
    """The difference is computed with subnormals on every thread of the library, also when the
    calling thread flushes them (``torch.set_flush_denormal(True)`` sets it on that thread
    only): every pass then sees the same keys, and the selection is that of the exact
    differences."""
    stdout = run_flushing_caller(FLUSHING_CALLER)
    generator = torch.Generator().manual_seed(0)
    tiny = torch.finfo(torch.float32).tiny
    theta1, theta0 = (torch.rand(1 << 18, generator=generator) * tiny for _ in range(2))
    (expected,) = reference_topk(materialised([theta1], [theta0]), 1000)
    for run, got in enumerate(json.loads(stdout.splitlines()[-1])):
        assert got == expected.tolist(), f"selection {run}: {len(set(got) - set(expected.tolist()))} entries differ"


def test_concatenated_positions_add_each_tensor_start():
    tensors = [torch.tensor([5.0, 1.0]), torch.empty(0), torch.tensor([0.0, 4.0, 3.0])]
    indices, stats = native_topk_indices(tensors, 3, concatenated=True)
    assert indices.tolist() == [0, 3, 4] and stats.tolist() == [1, 0, 2, 0]


def test_a_nan_difference_is_counted():
    inf = float("inf")
    chosen = select([torch.tensor([inf, 1.0, -inf])], 1, [torch.tensor([inf, 0.0, -inf])])
    assert chosen.nan_count == 2


@pytest.mark.parametrize(
    ("bases", "match"),
    [
        ([torch.ones(4)], "1 bases for 2 tensors"),
        ([torch.ones(4), torch.ones(3, dtype=torch.bfloat16)], "bases\\[1\\] is torch.bfloat16"),
        ([torch.ones(4), torch.ones(6)[::2]], "contiguous"),
    ],
)
def test_bad_bases_are_rejected(bases, match):
    with pytest.raises(ValueError, match=match):
        select([torch.ones(4), torch.ones(3)], 2, bases)


# Selects half of 2^22 equal entries (all candidates, 16 MiB of lists) with the address space
# limited to 6 MiB above what the process maps after a warm-up call (OpenMP team, allocator
# arenas): the candidate lists cannot grow. Prints the status the library returned.
CANDIDATE_LISTS_OUT_OF_MEMORY = """
import ctypes, resource
import torch
from deftx.ops import native
from deftx.ops.native.topk import select
lib = native.library()
n = 1 << 22
x, out = torch.ones(n), torch.empty(n // 2, dtype=torch.int64)
select([torch.ones(300_000)], 100_000)
counts, nans, passes = (ctypes.c_int64 * 1)(), ctypes.c_int64(), ctypes.c_int64()
arguments = (1, native.pointer_array([x]), None, native.int32_array([0]), native.int64_array([n]), None,
             n // 2, -1, out.data_ptr(), counts, ctypes.byref(nans), ctypes.byref(passes))
mapped = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (mapped + (6 << 20), resource.RLIM_INFINITY))
print("status", lib.deftx_topk_select(*arguments), flush=True)
"""


@pytest.mark.parametrize("threads", ["1", "2"])
def test_candidate_lists_out_of_memory_is_a_status_not_an_abort(threads):
    """The candidate lists grow inside the partition's parallel region: a bad_alloc there used
    to escape the region and terminate the process (SIGABRT) instead of returning kOutOfMemory."""
    env = {name: value for name, value in os.environ.items() if name not in (native.LIBRARY_ENV, "LD_PRELOAD")}
    env.update(OMP_NUM_THREADS=threads,
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    done = subprocess.run([sys.executable, "-c", CANDIDATE_LISTS_OUT_OF_MEMORY], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.split()[-2:] == ["status", str(native._STATUS_OUT_OF_MEMORY)]
