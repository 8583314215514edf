"""The GPUs the kernels are compiled and modelled for: SM resources and datasheet peaks.

Sources (the values below are copied from them, not measured):

* NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM column): FP32 19.5 TFLOPS,
  TF32 Tensor Core 156 TFLOPS, BF16 / FP16 Tensor Core 312 TFLOPS (dense; the datasheet's
  doubled figures assume 2:4 sparsity), GPU memory bandwidth 2,039 GB/s; 108 SMs
  (NVIDIA A100 Tensor Core GPU Architecture whitepaper).
* NVIDIA H100 Tensor Core GPU datasheet (H100 SXM column): FP32 67 TFLOPS, TF32 Tensor
  Core 494.7 TFLOPS, BF16 / FP16 Tensor Core 989.4 TFLOPS (dense, half the datasheet's
  with-sparsity figures 989 / 1,979), GPU memory bandwidth 3.35 TB/s; 132 SMs.
* NVIDIA H200 Tensor Core GPU datasheet (H200 SXM column): GPU memory bandwidth 4.8 TB/s; FP32,
  TF32 and BF16 / FP16 Tensor Core peaks as the H100 SXM's (the same GH100 SMs, 132 of them);
  only the memory (141 GB HBM3e) differs.
* CUDA C++ Programming Guide, "Compute Capabilities" table (8.0 and 9.0): 64K 32-bit
  registers per SM, at most 255 per thread, 1024 threads (32 warps) per block, 2048 resident
  threads (64 warps) and 32 resident blocks per SM; shared memory per SM 164 KB (8.0) / 228 KB (9.0), per block at
  most 163 KB (8.0) / 227 KB (9.0); 1 KB of shared memory per block reserved for the system.
* CUDA occupancy calculator conventions: registers are allocated per warp in units of 256
  and split evenly over the SM's 4 sub-partitions; shared memory in units of 128 bytes.

``sm_90`` is H100 SXM and ``sm_80`` A100 80GB SXM: the two targets of the static compile
test and of ``deftx profile --static``. H200 SXM compiles as ``sm_90`` (the same SM); it is a
target of its own only for roofline predictions (``deftx bench --predict-target h200``), where
its bandwidth matters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

KIB = 1024


@dataclass(frozen=True)
class Target:
    """One GPU target: its compute capability, SM limits and datasheet peaks.

    Attributes:
        arch: ``"sm_80"`` / ``"sm_90"``; ``capability``: 80 / 90 (``GPUTarget`` argument).
        gpu: the product the peaks are for.
        sm_count: streaming multiprocessors.
        registers_per_sm: 32-bit registers per SM; ``max_registers_per_thread``.
        register_allocation_unit: registers allocated per warp in multiples of this.
        sub_partitions: SM sub-partitions the register file is split over.
        max_threads_per_block: threads a block may have.
        max_threads_per_sm, max_warps_per_sm, max_blocks_per_sm: residency limits.
        shared_per_sm: bytes of shared memory an SM can give to blocks (largest carveout).
        max_shared_per_block: bytes a block may use (static + dynamic, opt-in maximum).
        reserved_shared_per_block: bytes per block the system reserves on top.
        shared_allocation_unit: shared memory is allocated per block in multiples of this.
        reserved_shared_in_cubin: whether ptxas reports the reserved bytes inside the cubin's
            static shared size (sm_90 does: its SASS addresses the shared window at +0x400).
        hbm_bytes_per_s: datasheet HBM bandwidth.
        peak_flops: datasheet dense peak FLOP/s by math mode: ``"fp32"`` (CUDA cores),
            ``"tf32"``, ``"bf16"``, ``"fp16"`` (tensor cores).
    """

    arch: str
    capability: int
    gpu: str
    sm_count: int
    hbm_bytes_per_s: float
    peak_flops: dict[str, float]
    shared_per_sm: int
    max_shared_per_block: int
    reserved_shared_in_cubin: bool
    registers_per_sm: int = 65536
    max_registers_per_thread: int = 255
    register_allocation_unit: int = 256
    sub_partitions: int = 4
    max_threads_per_block: int = 1024
    max_threads_per_sm: int = 2048
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    reserved_shared_per_block: int = 1 * KIB
    shared_allocation_unit: int = 128
    warp_size: int = 32


A100_80GB_SXM = Target(
    arch="sm_80",
    capability=80,
    gpu="NVIDIA A100 80GB SXM",
    sm_count=108,
    hbm_bytes_per_s=2039e9,
    peak_flops={"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12},
    shared_per_sm=164 * KIB,
    max_shared_per_block=163 * KIB,
    reserved_shared_in_cubin=False,
)

H100_SXM = Target(
    arch="sm_90",
    capability=90,
    gpu="NVIDIA H100 SXM",
    sm_count=132,
    hbm_bytes_per_s=3.35e12,
    peak_flops={"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12},
    shared_per_sm=228 * KIB,
    max_shared_per_block=227 * KIB,
    reserved_shared_in_cubin=True,
)

H200_SXM = replace(H100_SXM, gpu="NVIDIA H200 SXM", hbm_bytes_per_s=4.8e12)

TARGETS: dict[str, Target] = {t.arch: t for t in (A100_80GB_SXM, H100_SXM)}
"""Compile targets, one per architecture."""

PRODUCTS: dict[str, Target] = {"a100": A100_80GB_SXM, "h100": H100_SXM, "h200": H200_SXM}
"""Roofline targets by product name (H200 shares H100's ``sm_90`` compile target)."""


def get_target(name: str) -> Target:
    """The target for ``"sm_80"`` / ``"sm_90"`` (also ``"80"``, ``"90"``, ``"sm90"``) or a product
    name of :data:`PRODUCTS` (``"h200"``, case-insensitive); an architecture gives its compile target."""
    key = str(name).strip().lower()
    if key in PRODUCTS:
        return PRODUCTS[key]
    capability = key.replace("sm_", "").replace("sm", "")
    for target in TARGETS.values():
        if capability == str(target.capability):
            return target
    raise ValueError(f"unknown target {name!r}; known: {', '.join([*TARGETS, *PRODUCTS])}")
