"""Cost model of the randomized SVD and the score reconstruction ``|U S Vh|``: HBM bytes and
FLOPs of deftx's kernels and of the torch baselines (the one rSVD FLOP model of deftx)."""

from __future__ import annotations


def _passes(n_iter: int) -> int:
    """Products with Δ in the sequence: the sketch, 2 per power iteration, and B = Qᵀ Δ."""
    return 2 + 2 * n_iter


def bytes_moved(m: int, n: int, q: int, n_iter: int, *, weight_bytes: int, has_base: bool = True) -> int:
    """HBM bytes of :func:`deftx.kernels.rsvd.randomized_svd`'s kernels (the torch QR / SVD of small matrices excluded).

    Each of the ``P = 2 + 2 n_iter`` products reads W1 (and W0) once and the fp32 sketch
    once, and writes an fp32 (rows, q) result::

        P * (1 + has_base) * m * n * weight_bytes + (P / 2) * 4 * q * 2 * (m + n)

    (half of the products read an (n, q) and write an (m, q) matrix, half the reverse).
    Split partial sums add ``4 * splits * rows * q`` per split launch and are ignored.
    """
    passes = _passes(n_iter)
    weights = passes * (2 if has_base else 1) * m * n * weight_bytes
    sketches = passes // 2 * 4 * q * 2 * (m + n)
    return weights + sketches


def baseline_bytes_moved(
    m: int, n: int, q: int, n_iter: int, *, weight_bytes: int, has_base: bool = True
) -> int:
    """HBM bytes of the torch baseline ``torch.svd_lowrank(w1.float() - w0.float(), q, n_iter)``.

    Materialising Δ: each ``.float()`` of a bf16 / fp16 weight reads it and writes an fp32
    copy (a no-op for fp32), and the subtraction reads two fp32 matrices and writes one::

        materialise = (1 + has_base) * m * n * (weight_bytes + 4 * (weight_bytes != 4))
                      + has_base * 12 * m * n

    (without a base and with fp32 weights nothing is materialised). Then the same
    ``P = 2 + 2 n_iter`` products over the fp32 Δ as :func:`bytes_moved`::

        P * 4 * m * n + (P / 2) * 4 * q * 2 * (m + n)
    """
    passes = _passes(n_iter)
    count = 2 if has_base else 1
    widened = 4 if weight_bytes != 4 else 0
    materialise = count * m * n * (weight_bytes + widened) if widened else 0
    if has_base:
        materialise += 12 * m * n
    return materialise + passes * 4 * m * n + passes // 2 * 4 * q * 2 * (m + n)


def reconstruct_bytes_moved(m: int, n: int, r: int) -> int:
    """HBM bytes of :func:`deftx.kernels.rsvd.reconstruct_abs`: read US and Vh, write |US Vh| once::

        4 * (m * r + r * n + m * n)
    """
    return 4 * (m * r + r * n + m * n)


def baseline_reconstruct_bytes_moved(m: int, n: int, r: int) -> int:
    """HBM bytes of the torch baseline ``(us @ vh).abs()``: the matmul writes the
    reconstruction, ``abs`` reads it and writes the magnitudes::

        4 * (m * r + r * n + m * n) + 8 * m * n
    """
    return 4 * (m * r + r * n + m * n) + 8 * m * n


def _qr_flops(rows: int, cols: int) -> float:
    """Householder QR with the thin Q formed: ``4 rows cols² − 4 cols³ / 3`` (rows >= cols)."""
    k = min(rows, cols)
    return 4 * max(rows, cols) * k * k - 4 * k**3 / 3


def svd_flops(rows: int, cols: int) -> float:
    """Thin SVD (R-SVD) with U and V: ``6 big small² + 20 small³`` (Golub & Van Loan)."""
    small, big = min(rows, cols), max(rows, cols)
    return 6 * big * small * small + 20 * small**3


def _small_flops(m: int, n: int, q: int, n_iter: int) -> float:
    """QRs, the SVD of B and U = Q Ub (same in deftx and the baseline)."""
    qrs = (1 + n_iter) * _qr_flops(m, q) + n_iter * _qr_flops(n, q)
    return qrs + svd_flops(q, n) + 2 * m * q * q


def product_flops(m: int, n: int, q: int, n_iter: int, *, has_base: bool = True) -> int:
    """Floating-point operations of the ``P = 2 + 2 n_iter`` products with Δ (the subtraction fused
    into each when ``has_base``)::

        P * (2 m n q + has_base * m n)
    """
    return _passes(n_iter) * (2 * m * n * q + (m * n if has_base else 0))


def flops(m: int, n: int, q: int, n_iter: int, *, has_base: bool = True) -> float:
    """Floating-point operations of :func:`deftx.kernels.rsvd.randomized_svd`::

        P * (2 m n q + has_base * m n)                       (products, fused subtraction)
        + (1 + n_iter) * qr(m, q) + n_iter * qr(n, q)        (Householder QR + thin Q)
        + svd(q, n) + 2 m q²                                 (small SVD and U = Q Ub)

    with ``P = 2 + 2 n_iter``, ``qr(r, c) = 4 r c² − 4 c³/3`` and
    ``svd(r, c) = 6 max(r, c) min(r, c)² + 20 min(r, c)³``. The fused subtraction is
    recomputed in every product.
    """
    return product_flops(m, n, q, n_iter, has_base=has_base) + _small_flops(m, n, q, n_iter)


def baseline_flops(m: int, n: int, q: int, n_iter: int, *, has_base: bool = True) -> float:
    """Floating-point operations of ``torch.svd_lowrank(w1.float() - w0.float(), q, n_iter)``:
    one materialised subtraction, then the same products, QRs and SVD::

        has_base * m n + P * 2 m n q + (the QR / SVD terms of :func:`flops`)
    """
    products = product_flops(m, n, q, n_iter, has_base=False)
    return (m * n if has_base else 0) + products + _small_flops(m, n, q, n_iter)


def exact_baseline_bytes_moved(m: int, n: int, *, weight_bytes: int) -> int:
    """HBM bytes of the exact baseline ``torch.linalg.svd(w1.float() - w0.float())``: materialise
    Δ (read W1 and W0, write fp32 Δ), then at least one read of it::

        (2 * weight_bytes + 8) * m * n
    """
    return (2 * weight_bytes + 8) * m * n


def exact_baseline_flops(m: int, n: int) -> float:
    """Floating-point operations of the exact baseline: the subtraction and the thin SVD::

        m n + svd(m, n)
    """
    return m * n + svd_flops(m, n)


def reconstruct_flops(m: int, n: int, r: int) -> float:
    """Floating-point operations of :func:`deftx.kernels.rsvd.reconstruct_abs`: ``2 m n r`` (the abs is free)."""
    return 2.0 * m * n * r


def baseline_reconstruct_flops(m: int, n: int, r: int) -> float:
    """Floating-point operations of ``(us @ vh).abs()``: ``2 m n r + m n``."""
    return 2.0 * m * n * r + m * n
