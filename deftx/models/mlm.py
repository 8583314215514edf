"""Masked-LM model on an encoder without an MLM head (multilingual-e5-small).

``build_mlm_model`` puts a BERT-style head on an encoder body: transform (dense H->H, GELU,
LayerNorm), then a decoder whose weight is a FROZEN copy of the body's word embeddings at build
time (θ0) and a trainable bias. The decoder weight is a non-persistent buffer, so it is in no
``parameters()`` list and no SFT can select it: language SFTs change the body only, and the
output softmax cannot drag the 250k embedding rows along (the reference's ``--freeze_decoder``).
Logits are computed only at labelled positions (``labels != -100``), never (B, L, V).

``save_head`` / ``load_head`` store the head alone. Its training recipes live in
:mod:`deftx.train`: the warm-up on a frozen body (:mod:`deftx.train.head_warm_up`) and the
masked batches (:mod:`deftx.train.masking`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.functional import cross_entropy, linear

from deftx.models.loading import load_pretrained

IGNORE_INDEX = -100
HEAD_KEYS = ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "bias")


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
        self.hidden_act = hidden_act
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

    Under gradient accumulation a ``transformers.Trainer`` passes ``num_items_in_batch`` (the
    labelled positions of all the step's micro-batches) and no longer divides by the
    accumulation steps (``accepts_loss_kwargs``): ``loss`` is then the cross-entropy summed
    over this micro-batch divided by that count, so the step's gradient is that of the mean
    over all its labelled positions, whatever the accumulation.
    """

    accepts_loss_kwargs = True

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
        num_items_in_batch: torch.Tensor | int | None = None,
        **body_kwargs: Any,
    ):
        """(B, L) int ids -> ``MaskedLMOutput`` (see the class docstring for the logits' shape and
        ``num_items_in_batch``)."""
        from transformers.modeling_outputs import MaskedLMOutput

        if token_type_ids is not None:
            body_kwargs["token_type_ids"] = token_type_ids
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, **body_kwargs).last_hidden_state
        if labels is None:
            return MaskedLMOutput(loss=None, logits=self.head(hidden))
        loss, logits = self.loss_from_hidden(hidden, labels, num_items_in_batch)
        return MaskedLMOutput(loss=loss, logits=logits)

    def loss_from_hidden(
        self, hidden: torch.Tensor, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and (N, V) logits at the labelled positions of ``hidden`` (B, L, H).

        The loss is the mean over the N positions, or their sum divided by ``num_items_in_batch``
        when that is given (0, still differentiable, when N == 0).
        """
        check_labels(labels, hidden.shape[:2], self.head.bias.numel())
        selected = labels != IGNORE_INDEX
        logits = self.head(hidden[selected])
        if logits.shape[0] == 0:
            return logits.float().sum(), logits
        targets = labels[selected].long()
        if num_items_in_batch is None:
            return cross_entropy(logits.float(), targets), logits
        return cross_entropy(logits.float(), targets, reduction="sum") / num_items_in_batch, logits

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
        return load_pretrained(BertModel, path, add_pooling_layer=False)
    return load_pretrained(AutoModel, path)


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
            :func:`deftx.train.head_warm_up.warm_up_mlm_head`; default is a fresh head.
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
