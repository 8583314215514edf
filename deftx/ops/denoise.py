"""Public ops: low-rank denoising of weight differences (DeFT-X's truncated SVD), batched.

Two paths:

* ``method="exact"``: ``torch.linalg.svd`` of each Δ (O(m n min(m, n)) flops; Δ is formed).
* ``method="randomized"`` (Halko, Martinsson & Tropp 2011, Alg. 4.4): sketch
  ``q = rank + oversample`` columns with a seeded Gaussian Ω, ``n_iter`` power
  iterations with re-orthonormalisation, then the SVD of the small ``q x n`` matrix.
  Its expected spectral error is at most
  ``(1 + 4 sqrt(q) / (oversample - 1) * sqrt(min(m, n)))**(1 / (2 n_iter + 1)) * σ_{rank+1}``,
  so with a decaying spectrum and ``n_iter = 2`` the top components are close to exact.

Batching: the ``*_batched`` ops take many (θ1, θ0) pairs and group them by (shape, dtype,
whether a base is given, device). Each group is one call of the ``deftx::randomized_svd``
custom op, which on the Triton backend is one kernel launch per product for the whole
group, with the subtraction Δ = θ1 − θ0 fused into the products (Δ is never stored);
``||Δ||_F²`` (energy policy, reported energies) is one fused launch per group
(``deftx::difference_energy``), and ``|U_r diag(S_r) Vh_r|`` one launch per output shape
(``deftx::reconstruct_abs``): the scores are the only (m, n) buffers written. The torch
backend runs the same ops one matrix at a time.

The sketch: Ω depends only on (n, q, seed). It is drawn once per call for each (n, q) on
the CPU with a seeded ``torch.Generator`` (so every device, and the single-matrix ops,
agree bit for bit on Ω and the result is deterministic for a given ``seed``), copied to
the device once (pinned, ``non_blocking``: no host sync) and shared by every matrix of
those widths.

Rank policy: a fixed ``rank``, or ``energy``: the smallest rank whose singular values
hold that fraction of ``||Δ||_F^2``. The randomized path starts from a sketch of
``INITIAL_ENERGY_SKETCH`` columns and widens it (:func:`energy_sketch_width`: at least doubling
q) for the matrices whose captured energy falls short or whose rank r leaves fewer than
``oversample`` spare columns, until ``r + oversample <= q`` or the sketch covers the full
spectrum: the kept components have the oversampling a fixed rank gets. Host syncs per call, none per matrix: one for the
energies ``||Δ||_F²`` of all groups (per device), when the energy policy or a reported energy
needs them (the magnitudes of a fixed rank do not: that pass over every pair is skipped); with
a fixed rank, one for the energies the kept components hold, read after every group is
launched (the reported energy, and the check that the factors are finite); with the energy
policy, one per group and sketch width for the cumulative energies its ranks are decided from.
The Triton backend's small SVD adds one copy of each group's Gram matrices to the host.

Product precision (``precision``, Triton backend): ``"fp32"`` (default, IEEE),
``"tf32x3"`` (fp32 weights only: three TF32 tensor-core products per tile, the error of
fp32 products) or ``"bf16"`` (bf16 operands, fp32 sums). The torch backend always
multiplies in fp32.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from deftx.ops import library
from deftx.ops.dispatch import requested_backend
from deftx.ops.settings import LowRankSettings
from deftx.ops.validation import check_finite, check_float_dtype, check_not_meta

INITIAL_ENERGY_SKETCH = 64
ENERGY_SKETCH_RULE = 2
"""Version of the randomized energy policy's sketch widths (:func:`energy_sketch_width`), recorded in the
identity of a step it denoised: 1, q doubled only until the sketch held the energy target (the kept
rank could fill the sketch, with no oversampling); 2, until the kept rank also leaves ``oversample``
spare columns."""
METHODS: tuple[str, ...] = ("randomized", "exact")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "tf32x3")
FP32_ONLY_PRECISIONS: frozenset[str] = frozenset({"tf32x3"})


class LowRankFactors(NamedTuple):
    """Truncated SVD of one difference: Δ ≈ u diag(s) vh.

    Attributes:
        u: (m, r) fp32 (may be a column slice of a shape group's U).
        s: (r,) fp32, descending.
        vh: (r, n) fp32.
        energy: the fraction of ``||Δ||_F²`` the r components hold (1.0 when Δ = 0), or
            None where it was not computed.
    """

    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor
    energy: float | None


@dataclass(frozen=True)
class _Settings(LowRankSettings):
    """Validated settings of one call, with the backend requested."""

    backend: str = "auto"


def gaussian_sketch(n: int, q: int, seed: int, device: torch.device) -> torch.Tensor:
    """Seeded Gaussian test matrix Ω (n, q) fp32, drawn on the CPU so every device agrees.

    On CUDA the copy is pinned and ``non_blocking`` (no host sync).
    """
    generator = torch.Generator().manual_seed(seed)
    host = torch.randn(n, q, generator=generator, dtype=torch.float32)
    if torch.device(device).type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def captured_energy(singular_values: torch.Tensor) -> list[list[float]]:
    """(G, q) singular values -> per row ``[0, S_0², S_0² + S_1², ...]`` (q + 1 fp64 sums, non-
    decreasing), read to the host in one go."""
    squares = singular_values.double().square()
    return torch.cumsum(torch.cat([squares.new_zeros(squares.shape[0], 1), squares], 1), 1).tolist()


def energy_ranks(captured: Sequence[Sequence[float]], totals: Sequence[float], energy: float) -> list[int | None]:
    """Per row j of a :func:`captured_energy` table: the smallest r with ``captured[j][r] >=
    energy * totals[j]`` (0 where the total is 0), or None where the row falls short."""
    ranks: list[int | None] = []
    for row, total in zip(captured, totals, strict=True):
        r = bisect.bisect_left(row, energy * total, lo=1)
        ranks.append(0 if total <= 0.0 else (r if r < len(row) else None))
    return ranks


def held_fractions(captured: Sequence[Sequence[float]], totals: Sequence[float], ranks: Sequence[int]) -> list[float]:
    """Per row j of a :func:`captured_energy` table: ``captured[j][ranks[j]] / totals[j]`` (1.0
    where the total is 0)."""
    return [1.0 if total <= 0.0 else row[r] / total for row, total, r in zip(captured, totals, ranks, strict=True)]


def energy_sketch_width(rank: int | None, q: int, full: int, oversample: int) -> int | None:
    """The next sketch width of the energy policy for a matrix whose width-``q`` sketch found
    ``rank`` (None: its captured energy fell short), or None when the matrix is settled: ``rank``
    with ``oversample`` spare columns (``rank + oversample <= q``), or ``q >= full`` (the sketch
    spans the whole spectrum). A wider sketch is ``max(2 q, rank + oversample)``, at most ``full``."""
    if q >= full or (rank is not None and rank + oversample <= q):
        return None
    return min(max(2 * q, (rank or 0) + oversample), full)


def energy_rank(singular_values: torch.Tensor, total_energy: float, energy: float) -> int | None:
    """Smallest r with ``sum(S[:r]**2) >= energy * total_energy``; None if S falls short."""
    return energy_ranks(captured_energy(singular_values[None]), [total_energy], energy)[0]


def held_fraction(singular_values: torch.Tensor, total_energy: float) -> float:
    """``sum(S**2) / total_energy`` (1.0 when the total is 0)."""
    return held_fractions(captured_energy(singular_values[None]), [total_energy], [singular_values.numel()])[0]


# --------------------------------------------------------------------------- validation


def _check_pair(
    matrix: torch.Tensor, base: torch.Tensor | None, what: str, base_what: str, *, check_values: bool
) -> None:
    """Shape, dtype and device of one (matrix, base) pair; with ``check_values``, also NaN/Inf
    (one pass and one host sync per tensor: the single-matrix ops only; a batch finds them in
    its fused ``||Δ||²`` pass instead)."""
    if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2:
        shape = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
        raise ValueError(f"{what} must be a 2-D tensor, got {shape}")
    check_float_dtype(matrix, what)
    check_not_meta(matrix, what)
    if check_values:
        check_finite(matrix, what)
    if base is not None:
        check_float_dtype(base, base_what)
        check_not_meta(base, base_what)
        if check_values:
            check_finite(base, base_what)
        if base.shape != matrix.shape:
            raise ValueError(f"{what}: base shape {tuple(base.shape)} != matrix shape {tuple(matrix.shape)}")
        if base.dtype != matrix.dtype:
            raise TypeError(f"{what}: base has dtype {base.dtype}, its matrix {matrix.dtype}; cast one of them")
        if base.device != matrix.device:
            raise ValueError(f"{what}: base on {base.device}, matrix on {matrix.device}")


def _check_rank(rank: int | None, energy: float | None, largest: int | None, what: str) -> None:
    """One of rank / energy; rank an int in [0, largest] (``largest`` None: any rank >= 0)."""
    if (rank is None) == (energy is None):
        raise ValueError(f"{what}: give exactly one of rank= or energy=")
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise TypeError(f"{what}: rank must be an int, got {type(rank).__name__}")
        if rank < 0 or (largest is not None and rank > largest):
            raise ValueError(f"{what}: rank {rank} is outside [0, {largest}]")
    if energy is not None and not 0.0 < float(energy) <= 1.0:
        raise ValueError(f"{what}: energy must be in (0, 1], got {energy}")


def _check_method(method: str, oversample: int, n_iter: int, precision: str, op: str) -> None:
    if method not in METHODS:
        raise ValueError(f"{op}: method must be 'exact' or 'randomized', got {method!r}")
    if method == "randomized" and (oversample < 0 or n_iter < 0):
        raise ValueError(f"{op}: oversample and n_iter must be >= 0")
    if precision not in PRECISIONS:
        raise ValueError(f"{op}: precision must be one of {PRECISIONS}, got {precision!r}")


def _settings(
    op: str,
    single: bool,
    matrices: Sequence[torch.Tensor],
    bases: Sequence[torch.Tensor | None],
    options: LowRankSettings,
    backend: str | None,
) -> _Settings:
    """Validate a call's pairs and options (raising ValueError / TypeError that name the matrix).

    ``single``: one matrix, whose rank must be <= min(m, n); a batch takes any rank >= 0
    and keeps ``min(rank, m, n)`` components of each matrix.
    """
    if isinstance(matrices, torch.Tensor):
        raise TypeError(f"{op}: expected a list of matrices, got a single tensor (wrap it in [...])")
    if len(bases) != len(matrices):
        raise ValueError(f"{op}: {len(matrices)} matrices but {len(bases)} bases")
    method, precision = options.method, options.precision
    _check_method(method, options.oversample, options.n_iter, precision, op)
    for i, (matrix, base) in enumerate(zip(matrices, bases, strict=True)):
        what = f"{op}: matrix" if single else f"{op}: matrices[{i}]"
        _check_pair(matrix, base, what, f"{op}: base" if single else f"{op}: bases[{i}]", check_values=single)
        if precision in FP32_ONLY_PRECISIONS and method == "randomized" and matrix.dtype != torch.float32:
            raise ValueError(f"{what}: precision {precision!r} is for fp32 weights, got {matrix.dtype}")
    _check_rank(options.rank, options.energy, min(matrices[0].shape) if single else None, op)
    energy = None if options.energy is None else float(options.energy)
    return _Settings(**{**asdict(options), "energy": energy}, backend=requested_backend(backend, "rsvd"))


# --------------------------------------------------------------------------- factorisation


def _empty_factors(matrix: torch.Tensor, report: bool) -> LowRankFactors:
    m, n = matrix.shape
    device = matrix.device
    return LowRankFactors(
        torch.zeros(m, 0, device=device), torch.zeros(0, device=device), torch.zeros(0, n, device=device),
        1.0 if report else None,
    )


def _shape_groups(matrices: Sequence[torch.Tensor], bases: Sequence[torch.Tensor | None]) -> list[list[int]]:
    """Indices of the non-empty matrices grouped by (shape, dtype, has base, device), in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, (matrix, base) in enumerate(zip(matrices, bases, strict=True)):
        if min(matrix.shape) > 0:
            key = (tuple(matrix.shape), matrix.dtype, base is not None, matrix.device)
            groups.setdefault(key, []).append(i)
    return list(groups.values())


def _group_operands(
    members: list[int], matrices: Sequence[torch.Tensor], bases: Sequence[torch.Tensor | None]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(w1s, w0s) of a group, contiguous and detached; w0s is [] when the group has no base."""
    w1s = [matrices[i].detach().contiguous() for i in members]
    has_base = bases[members[0]] is not None
    w0s = [bases[i].detach().contiguous() for i in members] if has_base else []
    return w1s, w0s


def _read_by_member(parts: Sequence[tuple[list[int], torch.Tensor]]) -> dict[int, float]:
    """{member index: value} from (members, (len(members),) values) pairs of one dtype: all the
    values on a device read with one host sync."""
    read: dict[int, float] = {}
    for device in dict.fromkeys(values.device for _, values in parts):
        on_device = [(members, values) for members, values in parts if values.device == device]
        flat = torch.cat([values for _, values in on_device]).cpu().tolist()
        read.update(zip([i for members, _ in on_device for i in members], flat, strict=True))
    return read


def _group_energies(
    op: str,
    groups: list[list[int]],
    matrices: Sequence[torch.Tensor],
    bases: Sequence[torch.Tensor | None],
    backend: str,
) -> dict[int, float]:
    """``||Δ_i||_F²`` of every member (one fused launch per group, one host sync per device).

    Raises ValueError naming the first matrix whose energy is not finite (NaN or Inf in
    θ1 or θ0, or a difference that overflows fp32).
    """
    launched = [library.difference_energy(*_group_operands(members, matrices, bases), backend) for members in groups]
    totals = _read_by_member(list(zip(groups, launched, strict=True)))
    for i in sorted(totals):
        if not math.isfinite(totals[i]):
            raise ValueError(
                f"{op}: matrix {i} (shape {tuple(matrices[i].shape)}) has a non-finite ||θ1 − θ0||² "
                "(NaN or Inf in θ1 or θ0)"
            )
    return totals


def _exact_factors(
    matrix: torch.Tensor, base: torch.Tensor | None, settings: _Settings, report: bool
) -> LowRankFactors:
    delta = matrix.float() - base.float() if base is not None else matrix.float()
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    total = float(s.double().square().sum())
    rank = min(settings.rank, s.numel()) if settings.rank is not None else energy_rank(s, total, settings.energy)
    rank = s.numel() if rank is None else rank
    held = held_fraction(s[:rank], total) if report else None
    return LowRankFactors(u[:, :rank], s[:rank], vh[:rank], held)


class _SketchCache:
    """One Ω per (n, q, device) for a call (see the module docstring)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._drawn: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def get(self, n: int, q: int, device: torch.device) -> torch.Tensor:
        key = (n, q, device)
        if key not in self._drawn:
            self._drawn[key] = gaussian_sketch(n, q, self.seed, device)
        return self._drawn[key]


def _group_svd(
    w1s: list[torch.Tensor], w0s: list[torch.Tensor], q: int, sketches: _SketchCache, settings: _Settings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U (G, m, k), S (G, k), Vh (G, k, n) of a group with a width-q sketch, k = min(m, n, q)."""
    omega = sketches.get(w1s[0].shape[1], q, w1s[0].device)
    return library.randomized_svd(w1s, w0s, omega, settings.n_iter, settings.precision, settings.backend)


def _fixed_rank_group(
    w1s: list[torch.Tensor], w0s: list[torch.Tensor], sketches: _SketchCache, settings: _Settings
) -> tuple[list[LowRankFactors], torch.Tensor]:
    """The group's factors (``energy`` not filled) and the (G,) fp64 energies their components
    hold, left on the device (read once per call: the reported energy, and the check that the
    factors are finite)."""
    full = min(w1s[0].shape)
    rank = min(settings.rank, full)
    q = min(rank + settings.oversample, full)
    u, s, vh = _group_svd(w1s, w0s, q, sketches, settings)
    factors = [LowRankFactors(u[j, :, :rank], s[j, :rank], vh[j, :rank], None) for j in range(len(w1s))]
    return factors, s[:, :rank].double().square().sum(1)


def _energy_group(
    w1s: list[torch.Tensor],
    w0s: list[torch.Tensor],
    totals: list[float],
    sketches: _SketchCache,
    settings: _Settings,
    report: bool,
) -> list[LowRankFactors]:
    """Energy policy for a group: widen the sketch (:func:`energy_sketch_width`) only for the members
    still short of the target or of ``oversample`` spare columns."""
    full = min(w1s[0].shape)
    q = min(INITIAL_ENERGY_SKETCH, full)
    results: list[LowRankFactors | None] = [None] * len(w1s)
    pending = list(range(len(w1s)))
    while pending:
        u, s, vh = _group_svd(
            [w1s[j] for j in pending], [w0s[j] for j in pending] if w0s else [], q, sketches, settings
        )
        captured = captured_energy(s)
        group_totals = [totals[j] for j in pending]
        found = energy_ranks(captured, group_totals, settings.energy)
        wider = {j: width for j, rank in zip(pending, found, strict=True)
                 if (width := energy_sketch_width(rank, q, full, settings.oversample)) is not None}
        ranks = [q if rank is None else rank for rank in found]
        held = held_fractions(captured, group_totals, ranks) if report else [None] * len(pending)
        for row, (j, rank) in enumerate(zip(pending, ranks, strict=True)):
            if j not in wider:
                results[j] = LowRankFactors(u[row, :, :rank], s[row, :rank], vh[row, :rank], held[row])
        pending, q = sorted(wider), max(wider.values(), default=q)
    return results


def _factorize(
    op: str,
    matrices: Sequence[torch.Tensor],
    bases: Sequence[torch.Tensor | None],
    settings: _Settings,
    report: bool,
    values_checked: bool = False,
) -> list[LowRankFactors]:
    """Factors of every validated pair, in input order (``report``: fill ``energy``;
    ``values_checked``: the pairs' values were checked finite, so their factors need not be)."""
    results: list[LowRankFactors | None] = [
        _empty_factors(matrix, report) if min(matrix.shape) == 0 else None for matrix in matrices
    ]
    groups = _shape_groups(matrices, bases)
    needs_totals = report or settings.energy is not None or settings.method == "exact"
    totals = _group_energies(op, groups, matrices, bases, settings.backend) if needs_totals else None
    if settings.method == "exact":
        for members in groups:
            for i in members:
                results[i] = _exact_factors(matrices[i], bases[i], settings, report)
        return results
    sketches = _SketchCache(settings.seed)
    held: list[tuple[list[int], torch.Tensor]] = []
    for members in groups:
        w1s, w0s = _group_operands(members, matrices, bases)
        if settings.rank is not None:
            try:
                factors, kept = _fixed_rank_group(w1s, w0s, sketches, settings)
            except torch.linalg.LinAlgError:
                if totals is None:  # a non-finite pair stops the small SVD: name it
                    _group_energies(op, [members], matrices, bases, settings.backend)
                raise
            if report or not values_checked:
                held.append((members, kept))
        else:
            factors = _energy_group(w1s, w0s, [totals[i] for i in members], sketches, settings, report)
        for i, f in zip(members, factors, strict=True):
            results[i] = f
    if held:
        read = _read_by_member(held)
        for i in sorted(read):
            if not math.isfinite(read[i]):
                raise ValueError(
                    f"{op}: matrix {i} (shape {tuple(matrices[i].shape)}) has non-finite low-rank factors "
                    "(NaN or Inf in θ1 or θ0, or a difference that overflows fp32)"
                )
        if report:
            for i, kept in read.items():
                results[i] = results[i]._replace(energy=kept / totals[i] if totals[i] > 0.0 else 1.0)
    return results


# --------------------------------------------------------------------------- public ops


def factors_batched(
    matrices: Sequence[torch.Tensor],
    bases: Sequence[torch.Tensor | None] | None,
    settings: LowRankSettings,
    *,
    backend: str | None = None,
    op: str = "lowrank_factors_batched",
    report: bool = True,
) -> list[LowRankFactors]:
    """:func:`lowrank_factors_batched` with its options as one :class:`LowRankSettings`
    (``op`` names the caller in errors). ``report=False`` leaves ``energy`` None, and a fixed
    rank then skips the pass over every pair that ``||Δ||_F²`` takes (non-finite pairs are
    still named, from their factors)."""
    pairs = list(bases) if bases is not None else [None] * len(matrices)
    checked = _settings(op, False, matrices, pairs, settings, backend)
    return _factorize(op, matrices, pairs, checked, report=report)


def magnitudes_batched(
    matrices: Sequence[torch.Tensor],
    bases: Sequence[torch.Tensor | None] | None,
    settings: LowRankSettings,
    *,
    backend: str | None = None,
) -> list[torch.Tensor]:
    """:func:`denoised_magnitudes_batched` with its options as one :class:`LowRankSettings`."""
    factors = factors_batched(matrices, bases, settings, backend=backend, op="denoised_magnitudes_batched",
                              report=False)
    return reconstruct_magnitudes(factors, precision=settings.precision, backend=backend)


def _single_factors(
    op: str, matrix: torch.Tensor, base: torch.Tensor | None, settings: LowRankSettings, backend: str | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U (m, r), S (r,), Vh (r, n) of one checked Δ (values checked too, rank <= min(m, n));
    ``op`` names the public function in errors."""
    checked = _settings(op, True, [matrix], [base], settings, backend)
    u, s, vh, _ = _factorize(op, [matrix], [base], checked, report=False, values_checked=True)[0]
    return u, s, vh


def lowrank_factors_batched(
    matrices: Sequence[torch.Tensor],
    bases: Sequence[torch.Tensor | None] | None = None,
    *,
    rank: int | None = None,
    energy: float | None = None,
    method: str = "randomized",
    oversample: int = 8,
    n_iter: int = 2,
    seed: int = 0,
    precision: str = "fp32",
    backend: str | None = None,
) -> list[LowRankFactors]:
    """Truncated SVD factors of many differences Δ_i = matrices[i] − bases[i], batched by shape.

    Args:
        matrices: (m_i, n_i) fp32 / bf16 / fp16 tensors (θ1 for DeFT-X).
        bases: None, or one (m_i, n_i) tensor (θ0) or None per matrix, on its matrix's device.
        rank: keep ``min(rank, m_i, n_i)`` components of every matrix; or
        energy: keep, per matrix, the fewest components holding this fraction of ``||Δ_i||_F²``.
        method: ``"randomized"`` (default) or ``"exact"``.
        oversample, n_iter, seed: randomized sketch settings (see the module docstring).
        precision: ``"fp32"`` (default), ``"tf32x3"`` (fp32 weights only) or ``"bf16"``:
            the Triton products' precision.
        backend: ``"auto" | "triton" | "torch"`` (default ``$DEFTX_BACKEND`` or auto).

    The options are those of :class:`~deftx.ops.settings.LowRankSettings`
    (:func:`factors_batched` takes them bundled).

    Returns:
        One :class:`LowRankFactors` per matrix, in input order, with ``energy`` filled (the
        randomized path computes ``||Δ||_F²`` in one fused pass per shape group for it).

    Raises:
        ValueError: bad shapes / options, a negative rank (a rank above min(m_i, n_i) is clamped),
            or NaN / Inf in a pair (names the matrix).
        TypeError: non-floating tensors, a base of another dtype, a non-int rank.
    """
    settings = LowRankSettings(rank, energy, method, oversample, n_iter, seed, precision)
    return factors_batched(matrices, bases, settings, backend=backend)


def reconstruct_magnitudes(
    factors: Sequence[tuple[torch.Tensor, ...]], *, precision: str = "fp32", backend: str | None = None
) -> list[torch.Tensor]:
    """``|u diag(s) vh|`` of each factor triple: DeFT-X's selection scores.

    On the Triton backend it is one launch per output shape (ranks may differ within it),
    S is applied in registers and the absolute value in the epilogue: each (m, n) score
    is the only (m, n) buffer written.

    Args:
        factors: :class:`LowRankFactors` or ``(u (m, r), s (r,), vh (r, n))`` fp32 tuples.
        precision: ``"fp32"`` (default), ``"tf32x3"`` or ``"bf16"`` products (Triton).
        backend: ``"auto" | "triton" | "torch"``.

    Returns:
        One new (m, n) fp32 tensor per triple, in input order (zeros where r = 0).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"reconstruct_magnitudes: precision must be one of {PRECISIONS}, got {precision!r}")
    wanted = requested_backend(backend, "rsvd")
    by_device: dict[torch.device, list[int]] = {}
    for i, (u, s, vh, *_) in enumerate(factors):
        if u.dtype != torch.float32 or s.dtype != torch.float32 or vh.dtype != torch.float32:
            raise TypeError(f"reconstruct_magnitudes: factors[{i}] must be fp32, got {u.dtype}, {s.dtype}, {vh.dtype}")
        if u.dim() != 2 or vh.dim() != 2 or s.shape != (u.shape[1],) or vh.shape[0] != u.shape[1]:
            raise ValueError(
                f"reconstruct_magnitudes: factors[{i}] shapes {tuple(u.shape)}, {tuple(s.shape)}, {tuple(vh.shape)} "
                "are not (m, r), (r,), (r, n)"
            )
        if not u.device == s.device == vh.device:
            raise ValueError(f"reconstruct_magnitudes: factors[{i}] are on several devices")
        by_device.setdefault(u.device, []).append(i)
    scores: list[torch.Tensor | None] = [None] * len(factors)
    for members in by_device.values():
        us, ss, vhs = ([factors[i][part].detach() for i in members] for part in range(3))
        for i, score in zip(members, library.reconstruct_abs(us, ss, vhs, precision, wanted), strict=True):
            scores[i] = score
    return scores


def denoised_magnitudes_batched(
    matrices: Sequence[torch.Tensor],
    bases: Sequence[torch.Tensor | None] | None = None,
    *,
    rank: int | None = None,
    energy: float | None = None,
    method: str = "randomized",
    oversample: int = 8,
    n_iter: int = 2,
    seed: int = 0,
    precision: str = "fp32",
    backend: str | None = None,
) -> list[torch.Tensor]:
    """|rank-r reconstruction of Δ_i| for many pairs: DeFT-X's selection scores, batched.

    :func:`lowrank_factors_batched` followed by :func:`reconstruct_magnitudes`; same
    arguments. Returns one (m_i, n_i) fp32 tensor per matrix, in input order.

    The fused ``||Δ||²`` pass runs under a fixed ``rank`` too (one read of each pair, one
    host read for the call): it is what refuses NaN / Inf, naming the matrix, instead of
    returning NaN scores.
    """
    settings = LowRankSettings(rank, energy, method, oversample, n_iter, seed, precision)
    return magnitudes_batched(matrices, bases, settings, backend=backend)


def lowrank_factors(
    matrix: torch.Tensor,
    rank: int | None = None,
    *,
    energy: float | None = None,
    base: torch.Tensor | None = None,
    method: str = "randomized",
    oversample: int = 8,
    n_iter: int = 2,
    seed: int = 0,
    precision: str = "fp32",
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated SVD factors of Δ = matrix − base: U (m, r), S (r,), Vh (r, n), fp32.

    One matrix through :func:`lowrank_factors_batched`'s path (same Ω, same result).
    """
    settings = LowRankSettings(rank, energy, method, oversample, n_iter, seed, precision)
    return _single_factors("lowrank_factors", matrix, base, settings, backend)


def lowrank_denoise(
    matrix: torch.Tensor,
    rank: int | None = None,
    *,
    energy: float | None = None,
    base: torch.Tensor | None = None,
    method: str = "randomized",
    oversample: int = 8,
    n_iter: int = 2,
    seed: int = 0,
    return_factors: bool = False,
    precision: str = "fp32",
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-r reconstruction of Δ = matrix − base (or of ``matrix`` when ``base`` is None).

    Args:
        matrix: (m, n) float tensor (θ1 for DeFT-X).
        rank: keep this many singular components; or
        energy: keep the fewest components holding this fraction of ``||Δ||_F^2``.
        base: (m, n) tensor subtracted first (θ0); the Triton path fuses the subtraction.
        method: ``"randomized"`` (default) or ``"exact"``.
        oversample, n_iter, seed, precision: randomized sketch settings (see module docstring).
        return_factors: also return U (m, r), S (r,), Vh (r, n).

    Returns:
        The (m, n) fp32 reconstruction U diag(S) Vh, or ``(recon, U, S, Vh)``.
    """
    settings = LowRankSettings(rank, energy, method, oversample, n_iter, seed, precision)
    u, s, vh = _single_factors("lowrank_denoise", matrix, base, settings, backend)
    recon = (u * s) @ vh
    return (recon, u, s, vh) if return_factors else recon


def denoised_magnitudes(
    matrix: torch.Tensor,
    base: torch.Tensor | None = None,
    *,
    rank: int | None = None,
    energy: float | None = None,
    method: str = "randomized",
    oversample: int = 8,
    n_iter: int = 2,
    seed: int = 0,
    precision: str = "fp32",
    backend: str | None = None,
) -> torch.Tensor:
    """|rank-r reconstruction of Δ|, (m, n) fp32: DeFT-X's selection score for one matrix.

    :func:`denoised_magnitudes_batched` of one pair: on CUDA the reconstruction and the
    absolute value are one fused kernel, so the score is the only (m, n) buffer written.
    """
    settings = LowRankSettings(rank, energy, method, oversample, n_iter, seed, precision)
    return magnitudes_batched([matrix], [base], settings, backend=backend)[0]
