"""Mutation fuzzer over SparseDiff files: every mutant is loaded or refused cleanly, never silently wrong.

Each case takes a valid SFT file (a tiny BERT's body entries plus a shipped head) and
mutates it: flipped bits, overwritten or inserted bytes, truncation, a rewritten
safetensors header (dtypes, shapes, offsets, names) or metadata (version, k, params,
settings), or edited tensor data (unsorted, duplicate, out-of-range indices, NaN/Inf
values); about half of the header, metadata and data mutants are re-signed with a fresh
sha256, so the checks behind the digest are reached too. Then:

* ``SparseDiff.load`` returns a diff or raises ``SparseDiffFormatError`` — anything else is
  a crash;
* a diff loaded from an unsigned mutant must equal the original (the mutation changed no
  content, e.g. header padding) — otherwise it is a silent wrong result;
* a loaded diff is applied to the model: the result must equal an independent reference
  (plain torch: ``cast(f32(w) + v)`` at the indices, dense tensors copied) and revert must
  restore every bit; a refused apply (KeyError / ValueError / TypeError) must leave the
  model untouched.

``DEFTX_FUZZ_CASES`` sets the number of cases (CI: 2,000, a few seconds);
``DEFTX_FUZZ_SEED`` the seed; ``DEFTX_FUZZ_REPORT`` a JSON file to write the counts to.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import struct
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from transformers import BertForSequenceClassification

from deftx.sft import SparseDiff, SparseDiffFormatError, apply_diffs
from deftx.sft.format import content_digest
from tests.helpers import assert_bitwise_equal
from tests.sft.helpers import random_sft, snapshot, tiny_config

CASES = int(os.environ.get("DEFTX_FUZZ_CASES", "2000"))
SEED = int(os.environ.get("DEFTX_FUZZ_SEED", "0"))
SLOW_CASE_SECONDS = 10.0  # a hang, not a slow machine
DTYPES = ["F32", "F16", "BF16", "F64", "I32", "I64", "I8", "U8", "BOOL"]


def split(data: bytes) -> tuple[dict, bytes]:
    """(header dict, data section) of a well-formed safetensors byte string."""
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + payload


def resign(data: bytes) -> bytes:
    """The mutant with a fresh digest of its content (unchanged when safetensors cannot read it)."""
    try:
        header, payload = split(data)
        tensors = load_safetensors(data)
        metadata = header.get("__metadata__")
        if not isinstance(metadata, dict):
            return data
        metadata = dict(metadata)
        metadata["sha256"] = content_digest(tensors, metadata)
        return join({**header, "__metadata__": metadata}, payload)
    except (SafetensorError, ValueError, TypeError, KeyError, RuntimeError, struct.error, UnicodeDecodeError):
        return data


def random_json_value(rng: random.Random):
    return rng.choice([None, True, -1, 0, 1, 2**31, 2**63, 1e400, -1e400, 16.9, float("nan"), "", "x", "²", "1e3",
                       [], [1], [[1]], {}, {"a": 1}, [-16, 16], [2**32, 2**32]])


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        start = rng.randrange(len(buf))
        buf[start : start + rng.randint(1, 16)] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 2:
        del buf[rng.randrange(len(buf)) :]
    elif kind == 3:
        at = rng.randrange(len(buf))
        buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    else:
        at = rng.randrange(len(buf))
        del buf[at : at + rng.randint(1, 32)]
    return bytes(buf)


def mutate_header(rng: random.Random, data: bytes) -> bytes:
    header, payload = split(data)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    entry = dict(header[name])
    kind = rng.randrange(7)
    if kind == 0:
        entry["dtype"] = rng.choice(DTYPES)
    elif kind == 1:
        entry["shape"] = rng.choice([[], [0], [1, 2], [-1], [entry["shape"][0] + 1] if entry["shape"] else [1],
                                     random_json_value(rng)])
    elif kind == 2:
        lo, hi = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[hi, lo], [lo + 4, hi + 4], [0, hi - lo], [lo, 2**40], [lo, lo]])
    elif kind == 3:
        header.pop(name)
        prefix, _, rest = name.partition("/")
        new = rng.choice([f"dense/{rest}", f"indices/{rest}", f"values/{rest}", f"{prefix}/bert.{rest}",
                          f"{prefix}/{rest.removeprefix('bert.')}", f"{prefix}/", f"{prefix}/../../{rest}",
                          rest, f"{prefix}/{rest}x"])
        header[new] = entry
        payload_entry = None
        return join(header, payload) if payload_entry is None else data
    elif kind == 4:
        header.pop(name)
        return join(header, payload)
    elif kind == 5:
        entry[rng.choice(["dtype", "shape", "data_offsets", "extra"])] = random_json_value(rng)
    else:
        header["__metadata__"] = rng.choice([None, [], {"format": "deftx.sparse_diff"}, random_json_value(rng)])
        return join(header, payload)
    header[name] = entry
    return join(header, payload)


def mutate_metadata(rng: random.Random, data: bytes) -> bytes:
    header, payload = split(data)
    meta = dict(header["__metadata__"])
    key = rng.choice(["format", "format_version", "k", "params", "settings", "base_model", "method", "sha256"])
    kind = rng.randrange(4)
    if kind == 0:
        meta.pop(key, None)
    elif kind == 1 and key in ("params", "settings"):
        params = json.loads(meta[key])
        if params and key == "params":
            name = rng.choice(sorted(params))
            record = dict(params[name])
            record[rng.choice(["shape", "dtype"])] = random_json_value(rng)
            params[name] = record
        else:
            params = random_json_value(rng)
        meta[key] = json.dumps(params)
    elif kind == 2:
        meta[key] = rng.choice(["", "1", "2", "0", "²", " 1", "-1", "9" * 30, "[" * 5000, "{", "null", "1e3"])
    else:
        value = meta.get(key, "")
        meta[key] = value[: rng.randrange(len(value) + 1)]
    header["__metadata__"] = meta
    return join(header, payload)


def mutate_data(rng: random.Random, data: bytes) -> bytes:
    """Edit the values of one tensor in place (unsorted / duplicate / out-of-range indices, NaN, Inf, a new value)."""
    header, payload = split(data)
    name = rng.choice([k for k in header if k != "__metadata__"])
    entry = header[name]
    lo, hi = entry["data_offsets"]
    buf = bytearray(payload)
    fmt = {"F32": "<f", "I32": "<i", "I64": "<q"}.get(entry["dtype"])
    if fmt is None or hi - lo < 2 * struct.calcsize(fmt):
        return mutate_bytes(rng, data)
    size = struct.calcsize(fmt)
    count = (hi - lo) // size
    at = lo + size * rng.randrange(count)
    if fmt == "<f":
        value = rng.choice([math.nan, math.inf, -math.inf, 0.0, 1e-30, 3.0e38, 0.5])
    else:
        first = struct.unpack_from(fmt, buf, lo)[0]
        value = rng.choice([first, -1, 2**31 - 1, 10**6, 0])
    struct.pack_into(fmt, buf, at, value)
    return join(header, bytes(buf))


MUTATORS = [mutate_bytes, mutate_header, mutate_metadata, mutate_data]


def reference_apply(model, diff: SparseDiff) -> dict[str, torch.Tensor]:
    """Independent expectation: plain torch ``cast(f32(w) + v)`` at the indices, dense tensors copied."""
    state = snapshot(model)
    params = dict(model.named_parameters())
    prefix = model.base_model_prefix

    def model_name(name):
        return next(n for n in (name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")) if n in params)

    for name, tensor in diff.dense.items():
        target = model_name(name)
        state[target] = tensor.to(state[target].dtype).reshape(state[target].shape).clone()
    for name, idx in diff.indices.items():
        target = model_name(name)
        flat = state[target].reshape(-1).clone()
        flat[idx] = (flat[idx].float() + diff.values[name]).to(flat.dtype)
        state[target] = flat.reshape(state[target].shape)
    return state


def assert_state(model, state, what):
    for name, param in model.named_parameters():
        assert_bitwise_equal(param.detach(), state[name], what=f"{what}: {name}")


def same_diff(a: SparseDiff, b: SparseDiff) -> bool:
    return (a.names == b.names and a.params == b.params and a.k == b.k and a.method == b.method
            and a.base_model == b.base_model and a.settings == b.settings
            and all(torch.equal(a.indices[n], b.indices[n]) and torch.equal(a.values[n].view(torch.int32),
                                                                            b.values[n].view(torch.int32))
                    for n in a.indices)
            and all(torch.equal(a.dense[n], b.dense[n]) for n in a.dense))


def run_case(rng: random.Random, original: bytes, diff: SparseDiff, model, path: Path, counts: Counter) -> None:
    mutator = rng.choice(MUTATORS)
    mutant = mutator(rng, original)
    signed = mutator is not mutate_bytes and rng.random() < 0.5
    if signed:
        mutant = resign(mutant)
    path.write_bytes(mutant)
    try:
        loaded = SparseDiff.load(path)
    except SparseDiffFormatError:
        counts["refused at load"] += 1
        return
    if not signed and mutant != original:
        assert same_diff(loaded, diff), "silent wrong result: an unsigned mutant loaded with other content"
    counts["loaded"] += 1
    before = snapshot(model)
    try:
        expected = reference_apply(model, loaded)
    except (StopIteration, RuntimeError):
        expected = None  # names or shapes the model does not have: apply must refuse
    try:
        handle = apply_diffs(model, [loaded], check_base=False, on_rounding_loss="ignore")
    except (KeyError, ValueError, TypeError):
        assert_state(model, before, "a refused apply changed the model")
        counts["refused at apply"] += 1
        return
    assert expected is not None, "apply accepted a diff the model cannot hold"
    assert_state(model, expected, "applied values differ from the reference")
    handle.revert()
    assert_state(model, before, "revert is not bit-exact")
    counts["applied and reverted exactly"] += 1


@pytest.fixture
def scratch(tmp_path):
    """A folder in memory (/dev/shm) when there is one: a case writes one file, ~50x faster than on disk."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="deftx-fuzz-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_mutated_sft_files_are_loaded_or_refused_cleanly(scratch):
    tmp_path = scratch
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config())
    diff = random_sft(model, 120, head=True)
    source = tmp_path / "original.safetensors"
    diff.save(source)
    original = source.read_bytes()
    rng = random.Random(SEED)
    counts: Counter = Counter()
    slowest = 0.0
    for case in range(CASES):
        start = time.perf_counter()
        try:
            run_case(rng, original, diff, model, tmp_path / "mutant.safetensors", counts)
        except AssertionError as err:
            raise AssertionError(f"case {case} (seed {SEED}): {err}") from err
        except Exception as err:  # a crash: any other exception type
            pytest.fail(f"case {case} (seed {SEED}) crashed with {type(err).__name__}: {err}")
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < SLOW_CASE_SECONDS, f"a case took {slowest:.1f} s"
    assert counts["refused at load"] + counts["loaded"] == CASES
    assert counts["refused at load"] and counts["applied and reverted exactly"]
    report = {"cases": CASES, "seed": SEED, **counts, "crashes": 0, "silent wrong results": 0,
              "slowest case seconds": round(slowest, 3)}
    if os.environ.get("DEFTX_FUZZ_REPORT"):
        Path(os.environ["DEFTX_FUZZ_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")
    print(report)
