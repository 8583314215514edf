"""The MLM-head warm-up: train only the head of a :func:`~deftx.models.mlm.build_mlm_model` on a
frozen body, with a held-out curve per text group, and cache the head by what it depends on.

``warm_up_mlm_head`` is the recipe (its batches: :mod:`deftx.train.masking`); the language
SFTs start from its head (:func:`deftx.train.language.warm_up_head`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.functional import cross_entropy

from deftx.files import atomic_write_bytes, lock_beside, locked
from deftx.models.mlm import IGNORE_INDEX, FrozenDecoderMLM, MLMHead, load_head, save_head
from deftx.train.masking import MLMCollator, chunk_token_ids, mask_once

LOGGER = logging.getLogger(__name__)
CACHE_FORMAT = 1
HELDOUT_SEED_OFFSET = 104_729  # held-out choice and masks: own generators, training untouched
EVAL_CHUNK = 512  # held-out positions per (N, V) logits block
KEYED_BY_DEFAULT = {"layer_norm_eps": 1e-12, "hidden_act": "gelu", "mask_token_id": 250001, "pad_token_id": 1,
                    "special_ids": [0, 1, 2, 3, 250001]}
"""The head's LayerNorm eps and activation (MLMHead's defaults) and the masking's token ids (e5's tokenizer) that
keys written before they were keyed were made with: only values other than these enter the key."""


def tensors_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, shapes, dtypes and every byte of ``tensors`` (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype};".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


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


E5_ATTENTION_HEADS = {384: 12, 768: 12, 1024: 16}
"""The attention heads of e5 small, base and large by hidden size; other widths: heads of 64 dimensions (BERT's
and XLM-R's). A body's count enters the key of its head only where it differs (:func:`head_and_token_settings`),
so the keys of such bodies' heads stay as they were before it was keyed."""


def head_and_token_settings(model: FrozenDecoderMLM, collator: MLMCollator) -> dict[str, Any]:
    """What else changes the warmed head for equal tensors: the head's LayerNorm eps and activation (the body's
    config, which its own layers read too) and the tokens the masking skips and writes, each only where it
    differs from :data:`KEYED_BY_DEFAULT` (so the keys of e5's heads stay as they were), and the body's
    attention heads (the same tensors split into other heads compute other features) where they differ from
    those of its width (:data:`E5_ATTENTION_HEADS`)."""
    values = {"layer_norm_eps": model.head.layer_norm.eps, "hidden_act": model.head.hidden_act,
              "mask_token_id": collator.mask_token_id, "pad_token_id": collator.pad_token_id,
              "special_ids": collator.special_ids.tolist()}
    keyed = {name: value for name, value in values.items() if value != KEYED_BY_DEFAULT[name]}
    config = getattr(model.body, "config", None)
    heads, width = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    if isinstance(heads, int) and isinstance(width, int) and heads != E5_ATTENTION_HEADS.get(width, width // 64):
        keyed["num_attention_heads"] = heads
    return keyed


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
        single = [str(name) for name, group in texts.items() if isinstance(group, str)]
        if single:
            raise TypeError(f"texts: group {single[0]!r} is one string, not a sequence of strings "
                            "(its characters would be taken for texts)")
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


def without_heldout_copies(sequences: Sequence[Sequence[int]], train_ids: Sequence[int],
                           heldout_ids: Sequence[Sequence[int]]) -> list[int]:
    """``train_ids`` less every index whose window equals a held-out window (of any group).

    A text that occurs twice (AmericasNLP 2021 repeats 14% of its lines) gives equal windows under two
    indices: without this, one could be held out and the other trained on.

    Args:
        sequences: every token window (flat over the groups).
        train_ids, heldout_ids: :func:`split_heldout`'s indices into ``sequences``.
    """
    held = {tuple(sequences[i]) for group in heldout_ids for i in group}
    return [i for i in train_ids if tuple(sequences[i]) not in held]


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
    shipped_path: Path | str | None = None,
    cached_only: bool = False,
) -> dict[str, Any]:
    """Train only the MLM head (transform + decoder bias) on a frozen body, and cache it.

    The body runs in eval mode under ``torch.no_grad``; AdamW (no weight decay) updates the
    head. Batches are drawn from ``chunk_token_ids(texts)`` in seeded shuffled epochs and
    masked by an ``MLMCollator`` with the same seed.

    ``texts`` is a list of sentences or a mapping of named groups of them (e.g. one per
    corpus). With ``eval_sequences > 0``, that many token windows of *each* group are held
    out (never trained on, nor is any copy of them: :func:`without_heldout_copies`), masked
    once with a fixed seed, and the head's masked-token loss
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
    0``, so a run without held-out text keeps its key, and the count of training windows left
    out as held-out copies only when there are some); a later call with the same key loads
    that head and its recorded metrics instead of training; a call that finds another process
    warming the same key up waits for its head (a file lock beside the cache file) instead of
    training it twice. A head read from the cache comes with its recorded per-step metrics, and
    ``train_curve`` windowed by this call's ``eval_every``. ``shipped_path`` (a read-only
    folder of such files, e.g. the heads deftx ships) is looked up by the same file name when
    the cache has none, and a head found there is copied into the cache first.

    Returns:
        metrics: ``loss`` / ``accuracy`` / ``masked_tokens`` per training step (masked-token
        accuracy is the share of labelled positions whose argmax is the label),
        ``train_curve`` (those averaged per ``eval_every`` steps, see :func:`windowed_curve`),
        ``heldout_curve`` (``[{"step", "seconds", "groups": {name: {"loss", "accuracy",
        "masked_tokens"}}}]``, empty without held-out text), ``initial_*`` and ``final_*``
        (means over the first / last 10% of steps), ``seconds`` (all of the warm-up),
        ``heldout_seconds`` (its evaluations), ``steps``, ``groups`` (name -> training /
        held-out sequence counts), ``cache_hit``, ``cache_file`` and ``key``. With ``cached_only`` (a dry run's
        look-up: nothing is trained, copied or written) only ``cache_hit``, ``key`` and ``cache_file``: the
        cached head, else the shipped one, else None.
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
    kept_ids = without_heldout_copies(sequences, train_ids, heldout_ids)
    if not kept_ids:
        raise ValueError("every token window left to train the head on is a copy of a held-out one: "
                         "lower eval_sequences or give more distinct text")
    settings = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seq_len": seq_len,
        "seed": seed,
        "mlm_probability": mlm_probability,
        "real_vocab_size": real_vocab_size if real_vocab_size is not None else len(tokenizer),
    }
    settings.update(head_and_token_settings(model, MLMCollator(tokenizer, mlm_probability, real_vocab_size)))
    if eval_sequences:
        settings.update(eval_sequences=eval_sequences, eval_every=eval_every,
                        groups=[[name, len(group)] for name, group in chunked.items()])
    if len(kept_ids) < len(train_ids):
        settings["heldout_copies_left_out"] = len(train_ids) - len(kept_ids)
    if model.head.bias.device.type != "cpu":
        settings["device"] = model.head.bias.device.type
    texts_sha = hashlib.sha256("\x00".join(flat_texts).encode()).hexdigest()
    key = _warm_up_key(model, sequences, texts_sha, settings)
    cache_file = Path(cache_path) / f"mlm-head-{key[:24]}.safetensors" if cache_path is not None else None
    if cached_only:
        found = [path for path in (cache_file, shipped_path and Path(shipped_path) / cache_file.name)
                 if path is not None and path.is_file()] if cache_file is not None else []
        return {"cache_hit": bool(found), "key": key, "cache_file": str(found[0]) if found else None}
    say = log or LOGGER.info
    lock = contextlib.nullcontext() if cache_file is None else locked(
        lock_beside(cache_file), lambda: say(f"MLM head {cache_file.name}: another process is warming it up; "
                                             "waiting for its head (the same key) instead of training it twice"))
    with lock:
        if cache_file is not None and not cache_file.is_file() and shipped_path is not None:
            shipped = Path(shipped_path) / cache_file.name
            if shipped.is_file():
                atomic_write_bytes(cache_file, shipped.read_bytes())
                say(f"MLM head {cache_file.name}: the one shipped in {shipped_path} (same key), copied into the cache")
        if cache_file is not None and cache_file.is_file():
            stored = load_head(model, cache_file)
            LOGGER.info("MLM head loaded from cache %s", cache_file)
            metrics = dict(stored.get("metrics", {}))
            if "loss" in metrics:  # eval_every is no part of the key without held-out text: this call's windows
                metrics["train_curve"] = windowed_curve(metrics["loss"], metrics["accuracy"], eval_every)
            metrics.setdefault("heldout_curve", [])
            return {**metrics, "cache_hit": True, "cache_file": str(cache_file), "key": key}

        heldout = {name: [sequences[i] for i in ids] for name, ids in zip(chunked, heldout_ids, strict=True) if ids}
        metrics = _train_head(model, tokenizer, [sequences[i] for i in kept_ids], heldout, settings,
                              log_every, eval_every, say)
        metrics["train_curve"] = windowed_curve(metrics["loss"], metrics["accuracy"], eval_every)
        owner = [name for name, group in chunked.items() for _ in group]
        trained = Counter(owner[i] for i in kept_ids)
        metrics["groups"] = {name: {"train_sequences": trained[name], "heldout_sequences": len(ids)}
                             for name, ids in zip(chunked, heldout_ids, strict=True)}
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


def masked_features(model: FrozenDecoderMLM, batches: Sequence[Mapping[str, torch.Tensor]]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H) body hidden states and (N,) labels at the masked positions of ``batches`` (no gradients).

    ``batches``: masked batches (``input_ids``, ``attention_mask``, ``labels``, each (B, L)), e.g.
    :func:`~deftx.train.masking.mask_once`; run in the body's current mode (the caller sets eval).
    """
    device = model.head.bias.device
    hidden_parts, label_parts = [], []
    for batch in batches:
        ids, attention, labels = (batch[key].to(device) for key in ("input_ids", "attention_mask", "labels"))
        with torch.no_grad():
            hidden = model.body(input_ids=ids, attention_mask=attention).last_hidden_state
        selected = labels != IGNORE_INDEX
        hidden_parts.append(hidden[selected])
        label_parts.append(labels[selected])
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
        features = {name: masked_features(model, mask_once(eval_collator, group, settings["batch_size"]))
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
