"""Global top-K selection, per-group shares and mask overlap against set-based references."""

from __future__ import annotations

import pytest
import torch

from deftx.train.select import (
    Difference,
    group_counts,
    group_share_report,
    intersection_size,
    mask_overlap,
    select_top_k,
)


def random_scores(shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {f"p{i}": torch.rand(shape, generator=generator) for i, shape in enumerate(shapes)}


@pytest.mark.parametrize("shapes", [[(7, 5), (13,), (3, 3)], [(1,), (0,), (31,)], [(64, 3)]])
@pytest.mark.parametrize("k", [1, 9, 25])
def test_select_top_k_is_the_global_top_k(shapes, k):
    scores = random_scores(shapes)
    total = sum(t.numel() for t in scores.values())
    k = min(k, total)
    selected = select_top_k(scores, k)
    assert sum(int(i.numel()) for i in selected.values()) == k
    flat = torch.cat([t.flatten() for t in scores.values()])
    threshold = flat.sort(descending=True).values[k - 1]
    for name, idx in selected.items():
        assert idx.dtype == torch.int64 and torch.equal(idx, idx.sort().values)
        chosen = scores[name].flatten()[idx]
        assert bool((chosen >= threshold).all())
        rest = torch.ones(scores[name].numel(), dtype=torch.bool)
        rest[idx] = False
        assert bool((scores[name].flatten()[rest] <= threshold).all())


def test_ties_give_exactly_k_lowest_positions_first():
    scores = {"a": torch.ones(4), "b": torch.ones(4)}
    selected = select_top_k(scores, 5)
    assert selected["a"].tolist() == [0, 1, 2, 3] and selected["b"].tolist() == [0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_differences_select_as_their_materialised_scores(dtype):
    """LT-SFT's (θ1, θ0) pairs, fused, equal the selection on |θ1.float() − θ0.float()|,
    mixed with score tensors (DeFT-X's denoised parameters) in one call."""
    generator = torch.Generator().manual_seed(5)
    theta0 = {f"p{i}": (torch.randint(-8, 9, shape, generator=generator) / 16).to(dtype)
              for i, shape in enumerate([(6, 5), (9,), (4, 4)])}
    theta1 = {n: (t.float() + torch.randint(-3, 4, t.shape, generator=generator) / 32).to(dtype)
              for n, t in theta0.items()}
    denoised = torch.rand(3, 7, generator=generator) / 8
    fused = {**{n: Difference(theta1[n], theta0[n]) for n in theta0}, "d": denoised}
    materialised = {**{n: (theta1[n].float() - theta0[n].float()).abs() for n in theta0}, "d": denoised}
    for k in (1, 10, 33, 76):
        got, want = select_top_k(fused, k), select_top_k(materialised, k)
        assert all(torch.equal(got[n], want[n]) for n in want), f"k={k}"


def test_select_top_k_rejects_empty():
    with pytest.raises(ValueError):
        select_top_k({}, 1)


def test_group_share_report():
    indices = {"w": torch.tensor([0, 1, 2]), "e": torch.tensor([5]), "b": torch.tensor([], dtype=torch.int64)}
    groups = {"w": "attention", "e": "word_embeddings", "b": "ffn"}
    sizes = {"w": 10, "e": 100, "b": 4}
    rows = {row["group"]: row for row in group_share_report(indices, groups, sizes)}
    assert group_counts(indices, groups) == {"word_embeddings": 1, "attention": 3}
    assert rows["attention"] == {"group": "attention", "selected": 3, "eligible": 10,
                                 "share_of_k": 0.75, "density": 0.3}
    assert rows["ffn"]["selected"] == 0 and rows["word_embeddings"]["share_of_k"] == 0.25


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_intersection_size_matches_sets(seed):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randperm(50, generator=generator)[:17].sort().values
    b = torch.randperm(50, generator=generator)[:23].sort().values
    assert intersection_size(a, b) == len(set(a.tolist()) & set(b.tolist()))
    assert intersection_size(a, torch.empty(0, dtype=torch.int64)) == 0


def test_mask_overlap_per_group_and_total():
    first = {"x": torch.tensor([0, 2, 4]), "y": torch.tensor([1, 3])}
    second = {"x": torch.tensor([2, 4, 6]), "y": torch.tensor([5, 7])}
    groups = {"x": "attention", "y": "ffn"}
    rows = {row["group"]: row for row in mask_overlap(first, second, groups)}
    assert rows["attention"]["shared"] == 2 and rows["attention"]["jaccard"] == pytest.approx(2 / 4)
    assert rows["ffn"]["shared"] == 0 and rows["ffn"]["jaccard"] == 0.0
    assert rows["all"] == {"group": "all", "first": 5, "second": 5, "shared": 2,
                           "jaccard": pytest.approx(2 / 8), "shared_of_first": pytest.approx(2 / 5)}
    with pytest.raises(ValueError, match="different parameters"):
        mask_overlap(first, {"x": first["x"]}, groups)
