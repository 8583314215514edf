"""deftx.distributed: the selection, denoising and composition ops on sharded parameters.

Parameters sharded over ranks (FSDP2 / DTensor, ``Shard(0)`` on a 1-D mesh) are never
gathered: each rank works on its own shard and ranks exchange only small summaries
(histograms, Gram matrices, sketches) or the sparse pieces of a diff. Every result equals
the single-process op on the full tensors (bit for bit for top-k and compose, within a
stated tolerance for the randomized SVD).

* :mod:`~deftx.distributed.topk` — global top-k over sharded tensors (``deftx.ops.topk_mask``
  dispatches DTensor inputs here);
* :mod:`~deftx.distributed.rsvd` — randomized SVD / DeFT-X scores of a row-sharded Δ;
* :mod:`~deftx.distributed.compose` — apply / revert SparseDiffs per shard, read a rank's
  slice of a diff file, write one ordinary SparseDiff from a sharded run;
* :mod:`~deftx.distributed.comm` — communication accounting;
* :mod:`~deftx.distributed.train` — :mod:`deftx.train`'s phases on DDP / FSDP2 shards under
  ``torchrun`` (an adapter: sharded snapshot, scores, optimizer, collectives);
* :mod:`~deftx.distributed.scaling` — the scaling table (measured costs + comm model).
"""

from deftx.distributed.comm import CommLedger, count_communication
from deftx.distributed.compose import (
    apply_diffs_sharded,
    gather_sparse_diff,
    load_diff_for_shards,
    save_sharded_diff,
)
from deftx.distributed.rsvd import denoised_magnitudes_sharded, lowrank_factors_sharded
from deftx.distributed.topk import topk_mask_dtensor

__all__ = [
    "CommLedger",
    "apply_diffs_sharded",
    "count_communication",
    "denoised_magnitudes_sharded",
    "gather_sparse_diff",
    "load_diff_for_shards",
    "lowrank_factors_sharded",
    "save_sharded_diff",
    "topk_mask_dtensor",
]
