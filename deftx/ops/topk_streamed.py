"""Global top-K of ``|θ1 − θ0|`` over two safetensors checkpoints on disk, streamed.

For models that do not fit in memory: θ1 and θ0 are read chunk by chunk (at most
``chunk_elements`` entries of one tensor at a time, from single files, shard folders or
``*.safetensors.index.json``), and the selection is the one :func:`deftx.ops.topk_mask`
makes on the materialised differences, entry for entry and tie for tie::

    topk_mask([θ1[n].float() - θ0[n].float() for n in names], k, output="indices")

(``θ1 − θ0`` for fp32), with ``names`` in the order given (default: θ1's float tensors
sorted by name). No buffer of the model's size is ever allocated: memory is four chunk
buffers (16 bytes per chunk entry) and a chunk's temporaries, the selected indices (8 bytes each) and, during pass 2,
5 bytes per entry at or above the threshold's bin (about k) plus the candidates' scores.

Keys
    An entry's key is the fp32 bit pattern of ``|fl32(f32(x) − f32(base))|`` read as an
    int32: monotone in the score, ``-0.0 == +0.0``, ``+inf`` largest, NaN above it (a NaN
    makes the call raise, as :func:`~deftx.ops.topk_mask` does).

Passes over the two checkpoints
    1. the histogram of ``key >> 15`` (2^16 bins) over all entries, and a check for NaN:
       the bin ``H`` holding the k-th largest key and ``need``, how many keys of ``H`` are taken;
    2. when bin ``H`` holds at most ``candidate_capacity`` keys: the positions of every key
       at or above bin ``H``, the keys of ``H`` (the candidates) kept in (tensor, flat index)
       order. ``topk_mask`` of the candidates' scores with ``k = need`` picks the ones taken:
       its tie rule (lowest flat index first) is the global one on a list kept in that order.
       Otherwise (many equal keys): the histogram of the low 15 bits of bin ``H``'s keys, the
       exact threshold key ``T`` and the number of its ties taken; then
    3. the positions of the keys above ``T`` and of the first ties equal to ``T``.

So two full reads of (θ1, θ0), three when the threshold's bin is crowded, one for ``k = 0``
(which still checks for NaN).
"""

from __future__ import annotations

import itertools
import json
import struct
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from deftx.ops.topk import topk_mask
from deftx.ops.validation import check_count

DTYPES: dict[str, torch.dtype] = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
"""safetensors dtype names of the float types the selection ranks."""

CHUNK_ELEMENTS = 1 << 22
"""Entries of one tensor read and ranked at once by default (16 MiB of fp32 keys)."""

MAX_CHUNK_ELEMENTS = 1 << 31
"""The most entries of a chunk: pass 2 keeps the offsets of a chunk's hits as int32."""

LOW_BITS = 15
HIGH_BINS = 1 << (31 - LOW_BITS)
LOW_BINS = 1 << LOW_BITS
INF_KEY = 0x7F800000
MIN_CANDIDATE_CAPACITY = 1 << 22


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor of a safetensors checkpoint lies on disk.

    Attributes:
        name: its name in the checkpoint.
        file: the ``.safetensors`` file holding it.
        dtype: its torch dtype, or None for a type the selection does not rank.
        kind: its safetensors dtype name (``"BF16"``, ``"I64"``, ...).
        shape: its shape.
        offset: byte offset of its first element in ``file``.
    """

    name: str
    file: Path
    dtype: torch.dtype | None
    kind: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())


def checkpoint_files(path: str | Path) -> list[Path]:
    """The ``.safetensors`` files of a checkpoint: ``path`` itself, the files an index
    (``*.safetensors.index.json``) maps to, or in a folder its index or else every
    ``*.safetensors`` file (sorted)."""
    path = Path(path)
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if len(indexes) > 1:
            raise ValueError(f"{path} holds {len(indexes)} safetensors indexes; pass one of them")
        files = [indexes[0]] if indexes else sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no safetensors file in {path}")
        return checkpoint_files(files[0]) if indexes else files
    if path.name.endswith(".json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        return [path.parent / name for name in sorted(set(weight_map.values()))]
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return [path]


def read_header(file: Path) -> list[StoredTensor]:
    """The tensors of one ``.safetensors`` file (its 8-byte little-endian header length, then
    the JSON header; data offsets count from the end of the header).

    Raises:
        ValueError: a float tensor whose data span is not its shape's bytes (a damaged header: its
            entries would be read from another tensor's bytes).
    """
    with open(file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    data_start = 8 + length
    tensors = [
        StoredTensor(name, file, DTYPES.get(info["dtype"]), info["dtype"], tuple(info["shape"]),
                     data_start + info["data_offsets"][0])
        for name, info in header.items() if name != "__metadata__"
    ]
    for tensor in tensors:
        begin, end = header[tensor.name]["data_offsets"]
        if tensor.dtype is not None and end - begin != tensor.numel * tensor.dtype.itemsize:
            raise ValueError(f"{file}: tensor {tensor.name!r} of shape {list(tensor.shape)} ({tensor.kind}) holds "
                             f"{tensor.numel * tensor.dtype.itemsize} bytes, but its data_offsets span {end - begin}: "
                             "the file's header is damaged")
    return tensors


def checkpoint_tensors(path: str | Path) -> dict[str, StoredTensor]:
    """name -> :class:`StoredTensor` over every file of the checkpoint at ``path``."""
    tensors: dict[str, StoredTensor] = {}
    for file in checkpoint_files(path):
        for tensor in read_header(file):
            if tensor.name in tensors:
                raise ValueError(f"tensor {tensor.name!r} is in both {tensors[tensor.name].file} and {file}")
            tensors[tensor.name] = tensor
    return tensors


@dataclass(frozen=True)
class Pair:
    """One ranked parameter: its θ1 and θ0 on disk (same dtype and shape)."""

    theta1: StoredTensor
    theta0: StoredTensor


def pair_tensors(theta1: dict[str, StoredTensor], theta0: dict[str, StoredTensor],
                 names: Sequence[str] | None) -> list[Pair]:
    """The ``names`` (default: θ1's float tensors, sorted) paired with θ0's, checked."""
    if isinstance(names, str):
        raise TypeError(f"select_streamed: names is one string ({names!r}); pass a list of tensor names "
                        "(wrap it in [...])")
    chosen = sorted(n for n, t in theta1.items() if t.dtype is not None) if names is None else list(names)
    if not chosen:
        raise ValueError("select_streamed: no tensor to rank")
    repeated = sorted(n for n, count in Counter(chosen).items() if count > 1)
    if repeated:
        raise ValueError(f"select_streamed: names lists {', '.join(map(repr, repeated))} more than once "
                         "(each tensor is ranked once)")
    pairs = []
    for name in chosen:
        if name not in theta1:
            raise KeyError(f"select_streamed: tensor {name!r} is missing from θ1")
        one = theta1[name]
        if one.dtype is None:
            raise TypeError(f"select_streamed: tensor {name!r} has dtype {one.kind}; expected F32, BF16 or F16")
        if name not in theta0:
            raise KeyError(f"select_streamed: tensor {name!r} is missing from θ0")
        zero = theta0[name]
        if (one.kind, one.shape) != (zero.kind, zero.shape):
            raise ValueError(f"select_streamed: {name!r} is {one.kind} {one.shape} in θ1, "
                             f"{zero.kind} {zero.shape} in θ0")
        pairs.append(Pair(one, zero))
    return pairs


@dataclass
class Reader:
    """Reads chunks of stored tensors through open files and turns them into keys, in buffers
    allocated once (a fresh allocation per chunk costs a page fault per 4 KiB), counting the
    bytes read."""

    chunk_elements: int
    bytes_read: int = 0
    _handles: dict[Path, BinaryIO] = field(default_factory=dict)
    _buffers: list[torch.Tensor] = field(default_factory=list)

    def _buffer(self, slot: int) -> torch.Tensor:
        """Buffer ``slot`` (0, 1: raw bytes of θ1 and θ0; 2, 3: fp32 values), made on first use."""
        if not self._buffers:
            self._buffers = [torch.empty(self.chunk_elements * 4, dtype=torch.uint8) for _ in range(4)]
        return self._buffers[slot]

    def read(self, tensor: StoredTensor, begin: int, end: int, slot: int) -> torch.Tensor:
        """Entries ``[begin, end)`` of ``tensor``, flat, in buffer ``slot`` (0 or 1; valid
        until the next read into that slot)."""
        if tensor.dtype is None:
            raise TypeError(f"tensor {tensor.name!r} has dtype {tensor.kind}; expected F32, BF16 or F16")
        size = tensor.dtype.itemsize
        buffer = self._buffer(slot)
        view = memoryview(buffer.numpy())[: (end - begin) * size]
        handle = self._handles.get(tensor.file)
        if handle is None:
            handle = self._handles[tensor.file] = open(tensor.file, "rb", buffering=0)  # noqa: SIM115
        handle.seek(tensor.offset + begin * size)
        done = 0
        while done < len(view):
            got = handle.readinto(view[done:])
            if not got:
                raise EOFError(f"{tensor.file} ends inside tensor {tensor.name!r}")
            done += got
        self.bytes_read += done
        return buffer[: done].view(tensor.dtype)

    def keys(self, pair: Pair, begin: int, end: int) -> torch.Tensor:
        """int32 keys of entries ``[begin, end)``: the bits of ``|fl32(f32(θ1) − f32(θ0))|``
        (valid until the next call)."""
        x = self.read(pair.theta1, begin, end, 0)
        base = self.read(pair.theta0, begin, end, 1)
        difference = self._buffer(2)[: 4 * (end - begin)].view(torch.float32)
        if x.dtype == torch.float32:
            torch.sub(x, base, out=difference)
        else:
            widened = self._buffer(3)[: 4 * (end - begin)].view(torch.float32)
            difference.copy_(x)
            difference.sub_(widened.copy_(base))
        return difference.abs_().view(torch.int32)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


def stream_keys(pairs: Sequence[Pair], reader: Reader) -> Iterator[tuple[int, int, torch.Tensor]]:
    """One full pass: ``(pair position, first flat index, int32 keys)`` per chunk, in
    (tensor, flat index) order (the keys are valid until the next chunk)."""
    for position, pair in enumerate(pairs):
        numel = pair.theta1.numel
        for begin in range(0, numel, reader.chunk_elements):
            yield position, begin, reader.keys(pair, begin, min(begin + reader.chunk_elements, numel))


def join_per_tensor(count: int, parts: Iterable[tuple[int, torch.Tensor]]) -> list[torch.Tensor]:
    """The int64 index parts of ``count`` tensors, given in tensor order, joined into one
    tensor each as soon as that tensor is complete (an empty one where it has none)."""
    joined: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []
    for position, part in itertools.chain(parts, [(count, None)]):
        while len(joined) < position:
            joined.append(torch.cat(pending) if pending else torch.empty(0, dtype=torch.int64))
            pending = []
        if part is not None:
            pending.append(part)
    return joined


def bin_of_rank(hist: torch.Tensor, rank: int) -> tuple[int, int]:
    """The bin holding the ``rank``-th largest key of an int64 histogram (``1 <= rank <=
    hist.sum()``), and the number of keys in higher bins."""
    from_top = hist.flip(0).cumsum(0)
    i = int(torch.searchsorted(from_top, rank))
    return hist.numel() - 1 - i, int(from_top[i - 1]) if i else 0


@dataclass(frozen=True)
class StreamedSelection:
    """What :func:`select_streamed` selected and what it read.

    Attributes:
        indices: name -> int64 (K_t,) sorted flat row-major indices (the layout of
            :class:`deftx.sft.SparseDiff`); ``sum K_t == k``.
        numel: entries ranked.
        full_passes: full reads of the two checkpoints (1, 2 or 3).
        bytes_read: tensor bytes read from disk over all passes.
        candidates: keys in the threshold's bin (2^16 bins of the key) after pass 1.
    """

    indices: dict[str, torch.Tensor]
    numel: int
    full_passes: int
    bytes_read: int
    candidates: int


def _high_histogram(pairs: Sequence[Pair], reader: Reader) -> torch.Tensor:
    """Pass 1: the histogram of ``key >> 15`` over all entries; raises on NaN (keys above
    +inf: every key of the bins above +inf's, some of its own bin's, counted where it has any)."""
    hist = torch.zeros(HIGH_BINS, dtype=torch.int64)
    for position, _, keys in stream_keys(pairs, reader):
        counts = torch.bincount(keys >> LOW_BITS, minlength=HIGH_BINS)
        if counts[INF_KEY >> LOW_BITS:].any() and (keys > INF_KEY).any():
            raise ValueError(f"select_streamed: tensor {pairs[position].theta1.name!r} minus its base contains "
                             f"NaN value(s); magnitudes of NaN have no order")
        hist += counts
    return hist


def _select_by_candidates(pairs: Sequence[Pair], reader: Reader, high: int, need: int) -> list[torch.Tensor]:
    """Pass 2: every key at or above bin ``high``; of bin ``high`` the ``need`` largest in
    (tensor, flat index) order, chosen by :func:`topk_mask` on the candidates' scores.

    Kept between the pass and the choice, per chunk: the int32 offsets of its keys at or above
    the bin and which of them are in it (5 bytes per entry), and the candidates' scores.
    """
    lowest = high << LOW_BITS
    chunks: deque[tuple[int, int, torch.Tensor, torch.Tensor]] = deque()
    scores: list[torch.Tensor] = []
    for position, begin, keys in stream_keys(pairs, reader):
        hits = (keys >= lowest).nonzero().view(-1)
        hit_keys = keys[hits]
        in_bin = (hit_keys >> LOW_BITS) == high
        chunks.append((position, begin, hits.to(torch.int32), in_bin))
        scores.append(hit_keys[in_bin].view(torch.float32))
    (chosen,) = topk_mask([torch.cat(scores)], need)
    del scores

    def kept() -> Iterator[tuple[int, torch.Tensor]]:
        start = 0
        while chunks:
            position, begin, hits, in_bin = chunks.popleft()
            count = int(in_bin.sum())
            keep = ~in_bin
            keep[in_bin] = chosen[start: start + count]
            start += count
            yield position, hits[keep].to(torch.int64).add_(begin)

    return join_per_tensor(len(pairs), kept())


def _threshold_by_low_histogram(pairs: Sequence[Pair], reader: Reader, high: int, need: int) -> tuple[int, int]:
    """Pass 2 for a crowded bin: the threshold key and how many keys equal to it are taken."""
    hist = torch.zeros(LOW_BINS, dtype=torch.int64)
    for _, _, keys in stream_keys(pairs, reader):
        in_bin = keys[(keys >> LOW_BITS) == high]
        hist += torch.bincount(in_bin.bitwise_and_(LOW_BINS - 1), minlength=LOW_BINS)
    low, above = bin_of_rank(hist, need)
    return (high << LOW_BITS) | low, need - above


def _select_by_threshold(pairs: Sequence[Pair], reader: Reader, threshold: int, ties: int) -> list[torch.Tensor]:
    """Pass 3: every key above ``threshold``, then the first ``ties`` keys equal to it in
    (tensor, flat index) order."""

    def chosen() -> Iterator[tuple[int, torch.Tensor]]:
        ties_left = ties
        for position, begin, keys in stream_keys(pairs, reader):
            mask = keys > threshold
            if ties_left:
                equal = (keys == threshold).nonzero().view(-1)[:ties_left]
                mask[equal] = True
                ties_left -= equal.numel()
            yield position, mask.nonzero().view(-1).add_(begin)

    return join_per_tensor(len(pairs), chosen())


def select_streamed(
    theta1: str | Path,
    theta0: str | Path,
    k: int,
    *,
    names: Sequence[str] | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
    candidate_capacity: int | None = None,
) -> StreamedSelection:
    """The ``k`` entries of largest ``|θ1 − θ0|`` over two checkpoints on disk, read chunk by chunk.

    Args:
        theta1: the fine-tuned checkpoint: a ``.safetensors`` file, an
            ``*.safetensors.index.json`` or a folder of shards.
        theta0: the pretrained checkpoint, the same way; every ranked tensor has θ1's dtype
            and shape there.
        k: entries to select, ``0 <= k <= numel of the ranked tensors``.
        names: the tensors ranked, in this order (ties go to the lowest (position here,
            flat index)); default: θ1's fp32 / bf16 / fp16 tensors sorted by name.
        chunk_elements: entries of one tensor read at once (memory: about 16 bytes each), at
            most 2^31.
        candidate_capacity: the most keys of the threshold's bin kept between passes
            (default ``max(2^22, k // 2)``); a more crowded bin costs a third pass instead.

    Returns:
        The selection: equal to ``topk_mask([θ1[n].float() - θ0[n].float() for n in names],
        k, output="indices")`` (see the module docstring), with what it read.

    Raises:
        KeyError / TypeError / ValueError: a missing tensor, a non-float one, names given as one
            string, a dtype or shape that differs between θ1 and θ0, a name given twice, ``k``
            or ``chunk_elements`` out of range, NaN differences.
    """
    if not 1 <= chunk_elements <= MAX_CHUNK_ELEMENTS:
        raise ValueError(f"select_streamed: chunk_elements must be in [1, 2^31] (a chunk's offsets are kept as "
                         f"int32), got {chunk_elements}")
    pairs = pair_tensors(checkpoint_tensors(theta1), checkpoint_tensors(theta0), names)
    numel = sum(pair.theta1.numel for pair in pairs)
    check_count(k, numel, "select_streamed")
    reader = Reader(chunk_elements)
    try:
        hist = _high_histogram(pairs, reader)
        if k == 0:
            empty = [torch.empty(0, dtype=torch.int64) for _ in pairs]
            return StreamedSelection(_by_name(pairs, empty), numel, 1, reader.bytes_read, 0)
        high, above = bin_of_rank(hist, k)
        candidates = int(hist[high])
        capacity = max(MIN_CANDIDATE_CAPACITY, k // 2) if candidate_capacity is None else candidate_capacity
        if candidates <= capacity:
            indices, passes = _select_by_candidates(pairs, reader, high, k - above), 2
        else:
            threshold, ties = _threshold_by_low_histogram(pairs, reader, high, k - above)
            indices, passes = _select_by_threshold(pairs, reader, threshold, ties), 3
        return StreamedSelection(_by_name(pairs, indices), numel, passes, reader.bytes_read, candidates)
    finally:
        reader.close()


def _by_name(pairs: Sequence[Pair], indices: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {pair.theta1.name: idx for pair, idx in zip(pairs, indices, strict=True)}
