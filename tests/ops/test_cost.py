"""The ops' cost models (:mod:`deftx.ops.cost`), checked by hand on small shapes; importable without Triton."""

from __future__ import annotations

import pytest
import torch

from deftx.ops.cost import masked_step, rsvd, scatter, topk


def test_topk_bytes_moved():
    # 16,484 entries: the list's capacity (k + 2^16 at least) covers them all, so the list
    # holds every entry and nothing is sampled. Two full passes; the list written once, read by
    # the radix passes (fp32 4, bf16 2), the classification and the compaction
    shapes, k = [(16384,), (10, 10)], 10
    n, blocks = 16384 + 100, 2
    assert topk.bytes_moved(shapes, k, torch.float32) == 2 * n * 4 + 7 * 8 * n + 8 * k + blocks * 128
    assert topk.bytes_moved(shapes, k, torch.float32, with_base=True) == 2 * n * 8 + 7 * 8 * n + 8 * k + blocks * 128
    assert topk.bytes_moved(shapes, k, torch.bfloat16) == 2 * n * 2 + 5 * 8 * n + 8 * k + blocks * 128
    assert topk.baseline_bytes_moved(shapes, k, torch.float32) == 7 * n * 4 + k * 12 + 32 * k
    assert topk.baseline_bytes_moved(shapes, k, torch.float16) == 5 * n * 2 + k * 10 + 32 * k


def test_topk_bytes_moved_at_a_model_size_count_a_list_of_k_and_the_samples():
    # 2^24 entries, k = 2^14: capacity k + max(2^16, 2^24 / 128, 2 * 46,080) = k + 131,072 < N
    n, k = 1 << 24, 1 << 14
    samples = 6 * 8 * 16384
    assert topk.bytes_moved([(n,)], k, torch.bfloat16) == 2 * n * 2 + 5 * 8 * k + 8 * k + samples + 1024 * 128


def test_rsvd_bytes_moved_by_hand():
    # m=2, n=3, q=1, n_iter=0: P = 2 products.
    # deftx, bf16 with base: 2 * 2 * 6 * 2 = 48 weight bytes + 1 * 4 * 1 * 2 * 5 = 40.
    assert rsvd.bytes_moved(2, 3, 1, 0, weight_bytes=2) == 88
    assert rsvd.bytes_moved(2, 3, 1, 0, weight_bytes=2, has_base=False) == 64
    # baseline, bf16 with base: materialise 2 * 6 * (2 + 4) + 12 * 6 = 144; products 2 * 4 * 6 + 40.
    assert rsvd.baseline_bytes_moved(2, 3, 1, 0, weight_bytes=2) == 232
    # baseline, fp32 without base: nothing materialised.
    assert rsvd.baseline_bytes_moved(2, 3, 1, 0, weight_bytes=4, has_base=False) == 88
    assert rsvd.reconstruct_bytes_moved(2, 3, 1) == 4 * (2 + 3 + 6)
    assert rsvd.baseline_reconstruct_bytes_moved(2, 3, 1) == 4 * (2 + 3 + 6) + 48


def test_rsvd_flops_by_hand():
    # m=4, n=2, q=1, n_iter=0: products 2 * (2*4*2*1 + 8) = 48; qr(4, 1) = 16 - 4/3;
    # svd(1, 2) = 6 * 2 + 20 = 32; U = Q Ub: 2 * 4 = 8.
    assert rsvd.flops(4, 2, 1, 0) == pytest.approx(48 + 16 - 4 / 3 + 32 + 8)
    # baseline: one subtraction (8) + 2 * 16 products + the same small terms.
    assert rsvd.baseline_flops(4, 2, 1, 0) == pytest.approx(8 + 32 + 16 - 4 / 3 + 32 + 8)
    assert rsvd.reconstruct_flops(4, 2, 3) == 48
    assert rsvd.baseline_reconstruct_flops(4, 2, 3) == 56


def test_scatter_bytes_moved():
    # 1 tensor of 64 fp32 (8 sectors of 8), 64 entries: every sector touched.
    assert scatter.bytes_moved([(64,)], [64], torch.float32) == 64 * 8 + 64 * 12
    assert scatter.bytes_moved([(64,)], [64], torch.float32, save=True) == 64 * 8 + 64 * 16
    assert scatter.bytes_moved([(8, 8)], [0], torch.bfloat16) == 0
    # 2 diffs of 64 entries on 64 positions: the union is still 8 sectors.
    assert scatter.bytes_moved([(64,)], [64], torch.float32, num_diffs=2) == 64 * 8 + 2 * 64 * 12
    dense = scatter.baseline_bytes_moved([(64,)], [64], torch.bfloat16)
    assert dense == 4 * 64 + 64 * 12 + 64 * 8 + 12 * 64 + 2 * 2 * 64
    index_add = scatter.baseline_bytes_moved([(64,)], [64], torch.bfloat16, method="index_add")
    assert index_add == 64 * 12 + 2 * 64 * 6 + 64 * 4
    with pytest.raises(ValueError, match="method"):
        scatter.baseline_bytes_moved([(64,)], [64], torch.float32, method="sparse")


def test_masked_step_cost_by_hand():
    # K = numel: every sector touched; bf16: 2 * numel * 2 bytes gathered / scattered.
    assert masked_step.touched_sector_bytes(64, 64, 2) == pytest.approx(128.0)
    # one entry among 16 fp32 values (two sectors of 8): expected bytes of the touched sector.
    assert masked_step.touched_sector_bytes(1, 16, 4) == pytest.approx(32.0 * 2 * (1 - (15 / 16) ** 8))
    assert masked_step.bytes_moved(10, 10, param_bytes=4) == pytest.approx(320 + 2 * 40)
    assert masked_step.bytes_moved(10, 10, param_bytes=4, has_l1=True) == pytest.approx(360 + 80)
    assert masked_step.baseline_bytes_moved(100, param_bytes=4) == 2800
    assert masked_step.baseline_bytes_moved(100, param_bytes=2) == 1400
    assert masked_step.baseline_bytes_moved(100, param_bytes=2, state_bytes=4) == 2200
    assert masked_step.flops(10) == 160 and masked_step.flops(10, has_l1=True) == 190
    assert masked_step.baseline_flops(100) == 1600


def test_rsvd_model_pieces_add_up():
    assert rsvd.product_flops(4, 2, 1, 0) == 48 and rsvd.product_flops(4, 2, 1, 0, has_base=False) == 32
    assert rsvd.svd_flops(1, 2) == 32
    assert rsvd.exact_baseline_bytes_moved(2, 3, weight_bytes=2) == 12 * 6
    assert rsvd.exact_baseline_flops(4, 2) == 8 + rsvd.svd_flops(4, 2)


def test_scatter_index_add_of_fp32_weights_counts_no_cast():
    # w.view(-1).index_add_(0, idx, (scale * v).to(torch.float32)) with fp32 values: the cast
    # returns its input. Per entry: index 8 + value read 4 + scaled written 4 and read 4 by
    # index_add = 20 B; 64 entries on 64 fp32 touch all 8 sectors (64 B read-modify-write each).
    assert scatter.baseline_bytes_moved([(64,)], [64], torch.float32, method="index_add") == 64 * 20 + 8 * 64
    # fp16 values onto fp16 weights: 8 + 3 * 2 per entry, 4 sectors of 16.
    assert scatter.baseline_bytes_moved(
        [(64,)], [64], torch.float16, value_dtype=torch.float16, method="index_add"
    ) == 64 * 14 + 4 * 64
