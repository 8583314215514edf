"""Masked-LM training on an encoder without an MLM head (multilingual-e5-small).

``build_mlm_model`` puts a BERT-style head on an encoder body: transform (dense H->H, GELU,
LayerNorm), then a decoder whose weight is a FROZEN copy of the body's word embeddings at build
time (θ0) and a trainable bias. The decoder weight is a non-persistent buffer, so it is in no
``parameters()`` list and no SFT can select it: language SFTs change the body only, and the
output softmax cannot drag the 250k embedding rows along (the reference's ``--freeze_decoder``).
Logits are computed only at labelled positions (``labels != -100``), never (B, L, V).

``warm_up_mlm_head`` trains the head alone on a frozen body and caches it; ``MLMCollator``
masks batches 80/10/10 and never draws a replacement id outside the tokenizer's real
vocabulary (e5 has 250002 pieces but 250037 embedding rows).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.functional import cross_entropy, linear

LOGGER = logging.getLogger(__name__)
IGNORE_INDEX = -100
HEAD_KEYS = ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "bias")
CACHE_FORMAT = 1
HELDOUT_SEED_OFFSET = 104_729  # held-out choice and masks: own generators, training untouched
EVAL_CHUNK = 512  # held-out positions per (N, V) logits block


class MLMHead(nn.Module):
    """BERT MLM head with a frozen decoder matrix.

    Args:
        decoder_weight: (V, H) word embeddings of θ0; copied into a non-persistent buffer.
        layer_norm_eps: epsilon of the transform's LayerNorm.
        hidden_act: activation name understood by ``transformers.activations.ACT2FN``.
        initializer_range: std of the normal init of the dense weight (biases start at 0).
        generator: RNG for that init (deterministic heads).
    """

    def __init__(
        self,
        decoder_weight: torch.Tensor,
        *,
        layer_norm_eps: float = 1e-12,
        hidden_act: str = "gelu",
        initializer_range: float = 0.02,
        generator: torch.Generator | None = None,
    ) -> None:
        from transformers.activations import ACT2FN

        super().__init__()
        vocab, hidden = decoder_weight.shape
        dtype, device = decoder_weight.dtype, decoder_weight.device
        self.dense = nn.Linear(hidden, hidden, dtype=dtype, device=device)
        self.activation = ACT2FN[hidden_act]
        self.layer_norm = nn.LayerNorm(hidden, eps=layer_norm_eps, dtype=dtype, device=device)
        self.bias = nn.Parameter(torch.zeros(vocab, dtype=dtype, device=device))
        self.register_buffer("decoder_weight", decoder_weight.detach().clone(), persistent=False)
        with torch.no_grad():
            init = torch.empty(hidden, hidden, dtype=torch.float32)
            init.normal_(0.0, initializer_range, generator=generator)
            self.dense.weight.copy_(init)
            self.dense.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, H) hidden states -> (N, V) logits."""
        x = self.layer_norm(self.activation(self.dense(hidden.to(self.dense.weight.dtype))))
        return linear(x, self.decoder_weight, self.bias)


class FrozenDecoderMLM(nn.Module):
    """Encoder body + ``MLMHead``; returns ``transformers``' ``MaskedLMOutput``.

    With ``labels`` (B, L), ``logits`` is (N, V) for the N positions where ``labels != -100``,
    in row-major order of those positions, and ``loss`` is their mean cross-entropy (0, still
    differentiable, when N == 0). Without labels, ``logits`` is (B, L, V).
    """

    def __init__(self, body: nn.Module, head: MLMHead) -> None:
        super().__init__()
        self.body = body
        self.head = head

    @property
    def config(self):
        """The body's configuration."""
        return self.body.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **body_kwargs: Any,
    ):
        """(B, L) int ids -> ``MaskedLMOutput`` (see the class docstring for the logits' shape)."""
        from transformers.modeling_outputs import MaskedLMOutput

        hidden = self.body(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **body_kwargs
        ).last_hidden_state
        if labels is None:
            return MaskedLMOutput(loss=None, logits=self.head(hidden))
        loss, logits = self.loss_from_hidden(hidden, labels)
        return MaskedLMOutput(loss=loss, logits=logits)

    def loss_from_hidden(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy and (N, V) logits at the labelled positions of ``hidden`` (B, L, H)."""
        check_labels(labels, hidden.shape[:2], self.head.bias.numel())
        selected = labels != IGNORE_INDEX
        logits = self.head(hidden[selected])
        if logits.shape[0] == 0:
            return logits.float().sum(), logits
        return cross_entropy(logits.float(), labels[selected].long()), logits

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable head tensors (``HEAD_KEYS``), detached CPU copies."""
        state = self.head.state_dict()
        return {key: state[key].detach().cpu().clone() for key in HEAD_KEYS}

    def load_head_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load ``HEAD_KEYS`` into the head; other or missing keys, or wrong shapes, are errors."""
        if set(state) != set(HEAD_KEYS):
            raise ValueError(f"MLM head state must have exactly the keys {sorted(HEAD_KEYS)}, got {sorted(state)}")
        own = self.head.state_dict()
        for key in HEAD_KEYS:
            if tuple(state[key].shape) != tuple(own[key].shape):
                raise ValueError(f"MLM head {key}: shape {tuple(state[key].shape)} != {tuple(own[key].shape)}")
        self.head.load_state_dict(dict(state), strict=True)


def check_labels(labels: torch.Tensor, shape: Sequence[int], vocab_size: int) -> None:
    """Labels must be integer, of ``shape``, and each -100 or in [0, vocab_size)."""
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be int64 or int32, got {labels.dtype}")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"labels shape {tuple(labels.shape)} != input shape {tuple(shape)}")
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        raise ValueError(f"labels must be -100 or in [0, {vocab_size}); found {int(labels[bad][0])}")


def _load_body(path: Path | str) -> nn.Module:
    from transformers import AutoConfig, AutoModel, BertModel

    if AutoConfig.from_pretrained(path).model_type == "bert":
        return BertModel.from_pretrained(path, add_pooling_layer=False)
    return AutoModel.from_pretrained(path)


def build_mlm_model(
    model_dir_or_model: Path | str | nn.Module,
    *,
    head_state: Mapping[str, torch.Tensor] | Path | str | None = None,
    seed: int = 0,
) -> FrozenDecoderMLM:
    """Encoder body + MLM head whose decoder is a frozen copy of the body's word embeddings.

    Args:
        model_dir_or_model: a ``save_pretrained`` folder (BERT bodies load without a pooler),
            or a loaded model: a base model (e.g. ``BertModel``) or a model with a task head,
            whose ``base_model`` is then used (shared, not copied). Its word embeddings must
            be θ0 now: they become the decoder.
        head_state: a head state dict or a safetensors file written by ``save_head`` /
            ``warm_up_mlm_head``; default is a fresh head.
        seed: seed of the fresh head's init.
    """
    if isinstance(model_dir_or_model, (str, Path)):
        body = _load_body(model_dir_or_model)
    else:
        body = getattr(model_dir_or_model, "base_model", model_dir_or_model)
    config = body.config
    head = MLMHead(
        body.get_input_embeddings().weight,
        layer_norm_eps=getattr(config, "layer_norm_eps", 1e-12),
        hidden_act=getattr(config, "hidden_act", "gelu"),
        initializer_range=getattr(config, "initializer_range", 0.02),
        generator=torch.Generator().manual_seed(seed),
    )
    model = FrozenDecoderMLM(body, head)
    if isinstance(head_state, (str, Path)):
        load_head(model, head_state)
    elif head_state is not None:
        model.load_head_state_dict(head_state)
    return model


def save_head(model: FrozenDecoderMLM, path: Path | str, metadata: Mapping[str, Any] | None = None) -> None:
    """Write the head tensors (safetensors) atomically; ``metadata`` is stored as JSON."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file(model.head_state_dict(), str(partial), metadata={"deftx": json.dumps(dict(metadata or {}))})
    os.replace(partial, path)


def load_head(model: FrozenDecoderMLM, path: Path | str) -> dict[str, Any]:
    """Load a head written by ``save_head`` into ``model``; returns its stored metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = json.loads((handle.metadata() or {}).get("deftx", "{}"))
    model.load_head_state_dict(load_file(str(path)))
    return metadata


def tensors_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, shapes, dtypes and every byte of ``tensors`` (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype};".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def chunk_token_ids(tokenizer, texts: Sequence[str], seq_len: int) -> list[list[int]]:
    """Token ids of ``texts`` as ``[cls] + piece + [sep]`` sequences of at most ``seq_len``.

    A text longer than ``seq_len - 2`` tokens is split into consecutive windows (nothing is
    truncated); texts with no tokens are skipped.
    """
    if seq_len < 3:
        raise ValueError(f"seq_len must be >= 3 (room for [cls], one token, [sep]), got {seq_len}")
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise ValueError("the tokenizer needs cls and sep tokens (<s> and </s> for e5)")
    width = seq_len - 2
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [[cls_id, *ids[start : start + width], sep_id] for ids in encoded for start in range(0, len(ids), width)]


class MLMCollator:
    """Pads id sequences and masks them for MLM (BERT's 80/10/10 rule), deterministically.

    Each non-special, non-padding position is selected with probability ``mlm_probability``;
    a selected position gets its original id as label (others -100) and is replaced by the
    mask id (80%), by a random id (10%) or kept (10%). Random ids are drawn uniformly from
    the ids below ``real_vocab_size`` that are not special tokens. All draws come from one
    ``torch.Generator`` seeded with ``seed``: the same seed and inputs give the same batches.

    Args:
        tokenizer: needs ``pad_token_id``, ``mask_token_id``, ``all_special_ids``, ``len()``.
        mlm_probability: selection probability in (0, 1].
        real_vocab_size: ids the tokenizer really produces (default ``len(tokenizer)``; for e5
            250002 while its embedding matrix has 250037 rows).
        seed: generator seed.
    """

    def __init__(
        self, tokenizer, mlm_probability: float = 0.15, real_vocab_size: int | None = None, seed: int = 0
    ) -> None:
        if not 0.0 < mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1], got {mlm_probability}")
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a mask token and a pad token")
        size = len(tokenizer) if real_vocab_size is None else int(real_vocab_size)
        if not 0 < size <= len(tokenizer):
            raise ValueError(f"real_vocab_size must be in [1, {len(tokenizer)}] (the tokenizer's size), got {size}")
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.mlm_probability = float(mlm_probability)
        self.real_vocab_size = size
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.int64)
        candidates = torch.arange(size, dtype=torch.int64)
        self.replacement_ids = candidates[~torch.isin(candidates, self.special_ids)]
        if self.replacement_ids.numel() == 0:
            raise ValueError(f"no non-special id below real_vocab_size={size} to draw replacements from")
        self.generator = torch.Generator().manual_seed(seed)

    def pad(self, examples: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad id sequences (lists, 1-D tensors or dicts with ``input_ids``) -> (B, L) ids, mask."""
        if len(examples) == 0:
            raise ValueError("cannot collate an empty batch")
        rows = [torch.as_tensor(e["input_ids"] if isinstance(e, Mapping) else e, dtype=torch.int64) for e in examples]
        if any(r.dim() != 1 for r in rows):
            raise ValueError("every example must be a 1-D sequence of token ids")
        length = max(r.numel() for r in rows)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.int64)
        attention = torch.zeros((len(rows), length), dtype=torch.int64)
        for i, row in enumerate(rows):
            ids[i, : row.numel()] = row
            attention[i, : row.numel()] = 1
        if bool((ids < 0).any()):
            raise ValueError("token ids must be non-negative")
        return ids, attention

    def __call__(self, examples: Sequence[Any]) -> dict[str, torch.Tensor]:
        """-> ``input_ids`` (B, L) int64 (masked), ``attention_mask`` (B, L), ``labels`` (B, L)."""
        ids, attention = self.pad(examples)
        maskable = attention.bool() & ~torch.isin(ids, self.special_ids)
        selected = (torch.rand(ids.shape, generator=self.generator) < self.mlm_probability) & maskable
        roll = torch.rand(ids.shape, generator=self.generator)
        draws = torch.randint(0, self.replacement_ids.numel(), ids.shape, generator=self.generator)
        inputs = torch.where(selected & (roll < 0.8), self.mask_token_id, ids)
        inputs = torch.where(selected & (roll >= 0.8) & (roll < 0.9), self.replacement_ids[draws], inputs)
        labels = torch.where(selected, ids, IGNORE_INDEX)
        return {"input_ids": inputs, "attention_mask": attention, "labels": labels}


def _warm_up_key(model: FrozenDecoderMLM, sequences: list[list[int]], texts_sha: str, settings: dict) -> str:
    ids_digest = hashlib.sha256(json.dumps(sequences, separators=(",", ":")).encode()).hexdigest()
    parts = {
        "format": CACHE_FORMAT,
        "body": tensors_fingerprint(model.body.state_dict()),
        "decoder": tensors_fingerprint({"decoder": model.head.decoder_weight}),
        "initial_head": tensors_fingerprint(model.head_state_dict()),
        "texts_sha256": texts_sha,
        "token_ids_sha256": ids_digest,
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _window_mean(values: list[float], fraction: float = 0.1) -> float:
    """Mean of the last ``fraction`` of ``values`` (at least one); nan if empty."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return float("nan")
    tail = finite[-max(1, int(len(finite) * fraction)) :]
    return sum(tail) / len(tail)


def text_groups(texts: Sequence[str] | Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """``texts`` as named groups: a mapping as given, a plain sequence as the one group ``"text"``."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings (or a mapping of them), not one string")
    if isinstance(texts, Mapping):
        if not texts:
            raise ValueError("texts: the mapping holds no group")
        return {str(name): list(group) for name, group in texts.items()}
    return {"text": list(texts)}


def split_heldout(group_sizes: Mapping[str, int], eval_sequences: int, seed: int) -> tuple[list[int], list[list[int]]]:
    """Pick ``eval_sequences`` held-out sequences per group (seeded), the rest train.

    Args:
        group_sizes: group name -> sequences; the groups are consecutive in one flat list.
        eval_sequences: held-out sequences per group (0: none).
        seed: seed of the choice (its own generator: the training order is untouched).

    Returns:
        (sorted flat indices of the training sequences, sorted flat held-out indices per group).

    Raises:
        ValueError: a group with no more than ``eval_sequences`` sequences (nothing left to train on).
    """
    if eval_sequences < 0:
        raise ValueError(f"eval_sequences must be >= 0, got {eval_sequences}")
    generator = torch.Generator().manual_seed(seed + HELDOUT_SEED_OFFSET)
    heldout: list[list[int]] = []
    start = 0
    for name, size in group_sizes.items():
        if eval_sequences and size <= eval_sequences:
            raise ValueError(
                f"text group {name!r} has {size} token windows: holding out eval_sequences={eval_sequences} "
                "would leave nothing of it to train on"
            )
        chosen = torch.randperm(size, generator=generator)[:eval_sequences].tolist() if eval_sequences else []
        heldout.append(sorted(start + i for i in chosen))
        start += size
    held = {i for group in heldout for i in group}
    return [i for i in range(start) if i not in held], heldout


def windowed_curve(losses: Sequence[float], accuracies: Sequence[float], every: int) -> list[dict[str, float]]:
    """Per-step training loss / masked-token accuracy averaged over windows of ``every`` steps.

    Returns one point per window, ``{"step": last step of the window, "loss", "accuracy"}``
    (nan-free means; nan when no step of the window had a masked token).
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    points = []
    for begin in range(0, len(losses), every):
        end = min(begin + every, len(losses))
        points.append({"step": end, "loss": _window_mean(list(losses[begin:end]), 1.0),
                       "accuracy": _window_mean(list(accuracies[begin:end]), 1.0)})
    return points


def warm_up_mlm_head(
    model: FrozenDecoderMLM,
    tokenizer,
    texts: Sequence[str] | Mapping[str, Sequence[str]],
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    seq_len: int = 128,
    seed: int = 0,
    cache_path: Path | str | None = None,
    mlm_probability: float = 0.15,
    real_vocab_size: int | None = None,
    log_every: int = 50,
    eval_every: int = 100,
    eval_sequences: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train only the MLM head (transform + decoder bias) on a frozen body, and cache it.

    The body runs in eval mode under ``torch.no_grad``; AdamW (no weight decay) updates the
    head. Batches are drawn from ``chunk_token_ids(texts)`` in seeded shuffled epochs and
    masked by an ``MLMCollator`` with the same seed.

    ``texts`` is a list of sentences or a mapping of named groups of them (e.g. one per
    corpus). With ``eval_sequences > 0``, that many token windows of *each* group are held
    out (never trained on), masked once with a fixed seed, and the head's masked-token loss
    and accuracy on them are measured before the first step, every ``eval_every`` steps and
    after the last: the held-out curve, per group. The body is frozen, so its hidden states
    of the held-out batch are computed once and each evaluation costs one head pass.

    ``log`` (default: this module's logger at INFO) gets one progress line every
    ``eval_every`` steps: step, elapsed time, estimated time left, training and held-out
    masked-token accuracy.

    If ``cache_path`` (a folder) is given, the head is stored there as
    ``mlm-head-<key>.safetensors`` where the key hashes the body and decoder tensors, the
    initial head, the texts and their token ids and every setting that changes the head or
    its held-out curve (the held-out settings and group sizes only when ``eval_sequences >
    0``, so a run without held-out text keeps its key); a later call with the same key loads
    that head and its recorded metrics instead of training.

    Returns:
        metrics: ``loss`` / ``accuracy`` / ``masked_tokens`` per training step (masked-token
        accuracy is the share of labelled positions whose argmax is the label),
        ``train_curve`` (those averaged per ``eval_every`` steps, see :func:`windowed_curve`),
        ``heldout_curve`` (``[{"step", "seconds", "groups": {name: {"loss", "accuracy",
        "masked_tokens"}}}]``, empty without held-out text), ``initial_*`` and ``final_*``
        (means over the first / last 10% of steps), ``seconds`` (all of the warm-up),
        ``heldout_seconds`` (its evaluations), ``steps``, ``groups`` (name -> training /
        held-out sequence counts), ``cache_hit``, ``cache_file`` and ``key``.
    """
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1 and lr > 0 (got {steps}, {batch_size}, {lr})")
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    groups = text_groups(texts)
    flat_texts = [text for group in groups.values() for text in group]
    chunked = {name: chunk_token_ids(tokenizer, group, seq_len) for name, group in groups.items()}
    sequences = [ids for group in chunked.values() for ids in group]
    if not sequences:
        raise ValueError("no text to warm the head up on (all texts empty)")
    train_ids, heldout_ids = split_heldout({name: len(g) for name, g in chunked.items()}, eval_sequences, seed)
    settings = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seq_len": seq_len,
        "seed": seed,
        "mlm_probability": mlm_probability,
        "real_vocab_size": real_vocab_size if real_vocab_size is not None else len(tokenizer),
    }
    if eval_sequences:
        settings.update(eval_sequences=eval_sequences, eval_every=eval_every,
                        groups=[[name, len(group)] for name, group in chunked.items()])
    if model.head.bias.device.type != "cpu":
        settings["device"] = model.head.bias.device.type
    texts_sha = hashlib.sha256("\x00".join(flat_texts).encode()).hexdigest()
    key = _warm_up_key(model, sequences, texts_sha, settings)
    cache_file = Path(cache_path) / f"mlm-head-{key[:24]}.safetensors" if cache_path is not None else None
    if cache_file is not None and cache_file.is_file():
        stored = load_head(model, cache_file)
        LOGGER.info("MLM head loaded from cache %s", cache_file)
        metrics = dict(stored.get("metrics", {}))
        if "train_curve" not in metrics and "loss" in metrics:  # a head cached before curves were kept
            metrics["train_curve"] = windowed_curve(metrics["loss"], metrics["accuracy"], eval_every)
        metrics.setdefault("heldout_curve", [])
        return {**metrics, "cache_hit": True, "cache_file": str(cache_file), "key": key}

    heldout = {name: [sequences[i] for i in ids] for name, ids in zip(chunked, heldout_ids, strict=True) if ids}
    metrics = _train_head(model, tokenizer, [sequences[i] for i in train_ids], heldout, settings,
                          log_every, eval_every, log or LOGGER.info)
    metrics["train_curve"] = windowed_curve(metrics["loss"], metrics["accuracy"], eval_every)
    metrics["groups"] = {name: {"train_sequences": len(group) - len(ids), "heldout_sequences": len(ids)}
                         for (name, group), ids in zip(chunked.items(), heldout_ids, strict=True)}
    metrics.update(cache_hit=False, cache_file=str(cache_file) if cache_file else None, key=key)
    if cache_file is not None:
        record = {
            "key": key,
            "settings": settings,
            "texts_sha256": texts_sha,
            "n_texts": len(flat_texts),
            "n_sequences": len(sequences),
            "metrics": {k: v for k, v in metrics.items() if k not in ("cache_hit", "cache_file", "key")},
        }
        save_head(model, cache_file, record)
    return metrics


def _heldout_features(
    model: FrozenDecoderMLM, collator: MLMCollator, sequences: list[list[int]], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask ``sequences`` once; (N, H) frozen-body hidden states and (N,) labels at the masked positions."""
    device = model.head.bias.device
    hidden_parts, label_parts = [], []
    for start in range(0, len(sequences), batch_size):
        batch = {k: v.to(device) for k, v in collator(sequences[start : start + batch_size]).items()}
        with torch.no_grad():
            hidden = model.body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        selected = batch["labels"] != IGNORE_INDEX
        hidden_parts.append(hidden[selected])
        label_parts.append(batch["labels"][selected])
    return torch.cat(hidden_parts), torch.cat(label_parts)


@torch.no_grad()
def masked_token_scores(head: MLMHead, hidden: torch.Tensor, labels: torch.Tensor,
                        chunk: int = EVAL_CHUNK) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``head`` on (N, H) hidden states with (N,) labels.

    The (N, V) logits are formed ``chunk`` rows at a time. N == 0 gives nan loss and accuracy.
    """
    count = int(labels.numel())
    if count == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "masked_tokens": 0}
    loss_sum, correct = 0.0, 0
    for start in range(0, count, chunk):
        logits = head(hidden[start : start + chunk]).float()
        targets = labels[start : start + chunk].long()
        loss_sum += float(cross_entropy(logits, targets, reduction="sum"))
        correct += int((logits.argmax(-1) == targets).sum())
    return {"loss": loss_sum / count, "accuracy": correct / count, "masked_tokens": count}


def head_progress_line(step: int, steps: int, elapsed: float, recent_accuracies: Sequence[float],
                       heldout: Mapping[str, Mapping[str, float]]) -> str:
    """``MLM head step 250/3000 (2.9 min, ~32 min left): masked-token accuracy 0.061, held out nusax 0.058``."""
    left = elapsed / step * (steps - step)
    parts = [f"masked-token accuracy {_window_mean(list(recent_accuracies), 1.0):.3f}"]
    if heldout:
        parts.append("held out " + ", ".join(f"{name} {s['accuracy']:.3f}" for name, s in heldout.items()))
    return f"MLM head step {step}/{steps} ({elapsed / 60:.1f} min, ~{left / 60:.0f} min left): " + ", ".join(parts)


def _train_head(
    model: FrozenDecoderMLM,
    tokenizer,
    sequences: list[list[int]],
    heldout: Mapping[str, list[list[int]]],
    settings: dict,
    log_every: int,
    eval_every: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The warm-up loop of ``warm_up_mlm_head`` (no caching); returns its metrics."""
    collator = MLMCollator(tokenizer, settings["mlm_probability"], settings["real_vocab_size"], seed=settings["seed"])
    order_generator = torch.Generator().manual_seed(settings["seed"])
    device = model.head.bias.device
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=settings["lr"], weight_decay=0.0)
    body_was_training, head_was_training = model.body.training, model.head.training
    model.body.eval()
    model.head.train()
    losses, accuracies, counts, curve = [], [], [], []
    order: list[int] = []
    start = time.perf_counter()
    heldout_seconds = 0.0
    try:
        eval_collator = MLMCollator(tokenizer, settings["mlm_probability"], settings["real_vocab_size"],
                                    seed=settings["seed"] + HELDOUT_SEED_OFFSET)
        features = {name: _heldout_features(model, eval_collator, group, settings["batch_size"])
                    for name, group in heldout.items()}

        def evaluate(step: int) -> None:
            nonlocal heldout_seconds
            began = time.perf_counter()
            scores = {name: masked_token_scores(model.head, *pair) for name, pair in features.items()}
            heldout_seconds += time.perf_counter() - began
            curve.append({"step": step, "seconds": time.perf_counter() - start, "groups": scores})

        if features:
            evaluate(0)
        for step in range(1, settings["steps"] + 1):
            if len(order) < settings["batch_size"]:
                order += torch.randperm(len(sequences), generator=order_generator).tolist()
            batch_ids, order = order[: settings["batch_size"]], order[settings["batch_size"] :]
            batch = {k: v.to(device) for k, v in collator([sequences[i] for i in batch_ids]).items()}
            with torch.no_grad():
                hidden = model.body(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).last_hidden_state
            loss, logits = model.loss_from_hidden(hidden, batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            targets = batch["labels"][batch["labels"] != IGNORE_INDEX]
            n = int(targets.numel())
            losses.append(loss.detach().item() if n else float("nan"))
            accuracies.append(float((logits.argmax(-1) == targets).float().mean()) if n else float("nan"))
            counts.append(n)
            if step % max(1, log_every) == 0 or step == settings["steps"]:
                LOGGER.debug(
                    "MLM head step %d/%d loss %.4f masked-token accuracy %.4f",
                    step,
                    settings["steps"],
                    _window_mean(losses),
                    _window_mean(accuracies),
                )
            if features and (step % eval_every == 0 or step == settings["steps"]):
                evaluate(step)
            if step % eval_every == 0 or step == settings["steps"]:
                log(head_progress_line(step, settings["steps"], time.perf_counter() - start, accuracies[-eval_every:],
                                       curve[-1]["groups"] if features else {}))
    finally:
        model.body.train(body_was_training)
        model.head.train(head_was_training)
    head_fraction = 0.1
    first = max(1, int(len(losses) * head_fraction))
    return {
        "steps": settings["steps"],
        "loss": losses,
        "accuracy": accuracies,
        "masked_tokens": counts,
        "initial_loss": _window_mean(losses[:first], 1.0),
        "initial_accuracy": _window_mean(accuracies[:first], 1.0),
        "final_loss": _window_mean(losses, head_fraction),
        "final_accuracy": _window_mean(accuracies, head_fraction),
        "heldout_curve": curve,
        "seconds": time.perf_counter() - start,
        "heldout_seconds": heldout_seconds,
    }
