"""Sequence classifiers for task SFTs: deftx's mean-pooled BERT classifier, or any transformers one.

:func:`build_classifier` loads the base encoder with a seeded new head; the pooling it was built
with is kept in ``config.deftx_pooling`` (recorded in the SFTs trained in it, see
:mod:`deftx.train.architecture`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from deftx.models.loading import load_pretrained


class BertMeanPoolClassifier(BertPreTrainedModel):
    """BERT body, attention-masked mean pooling, dropout, one linear layer.

    multilingual-e5 was trained to be mean-pooled and has no pooler: transformers'
    ``BertForSequenceClassification`` would put a *randomly initialised* dense + tanh
    pooler on the [CLS] state (measured here: 55 macro-F1 on Indonesian after 3 epochs,
    where mean pooling reaches ~85). Parameter names are ``bert.*`` + ``classifier.*``,
    so SFTs move between this model, ``BertForMaskedLM`` and ``BertModel``.

    Its loss is the batch mean and ``forward`` takes no ``num_items_in_batch``, so
    ``accepts_loss_kwargs`` is False: the Trainer then divides each micro-batch's loss by the
    gradient-accumulation steps (it would not, seeing ``**kwargs``).
    """

    accepts_loss_kwargs = False

    def __init__(self, config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        """(B, L) ids -> ``logits`` (B, num_labels); ``loss`` = cross-entropy when ``labels`` given."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


POOLING = ("mean", "cls")


def build_classifier(model_dir: str | Path, num_labels: int, seed: int, pooling: str = "mean") -> torch.nn.Module:
    """Sequence classifier of the base model with a seeded new head (also in place of the head of a
    sequence-classification checkpoint: :func:`~deftx.models.loading.renew_head`).

    ``pooling="mean"``: :class:`BertMeanPoolClassifier` (BERT-type bodies);
    ``"cls"``: ``AutoModelForSequenceClassification`` (any architecture). The pooling is
    kept in ``config.deftx_pooling``, so SFTs trained in the model record it. Both losses are
    batch means: the "cls" model is told ``accepts_loss_kwargs = False`` as
    :class:`BertMeanPoolClassifier` says it.

    Raises:
        ValueError: an unknown ``pooling``, or ``num_labels`` below 2 (transformers builds a head of no
            outputs for 0 or less; one class has a cross-entropy of 0 whatever the weights).
    """
    if pooling not in POOLING:
        raise ValueError(f"pooling must be one of {POOLING}, got {pooling!r}")
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
        raise ValueError(f"num_labels must be an integer of at least 2 (the classes), got {num_labels!r}")
    torch.manual_seed(seed)
    if pooling == "cls":
        model = load_pretrained(AutoModelForSequenceClassification, model_dir, new_head_seed=seed,
                                num_labels=num_labels)
        model.accepts_loss_kwargs = False
    else:
        config = AutoConfig.from_pretrained(str(model_dir), num_labels=num_labels)
        if config.model_type != "bert":
            raise ValueError(f"mean pooling is implemented for BERT bodies; {model_dir} is {config.model_type!r} "
                             "(use pooling='cls')")
        model = load_pretrained(BertMeanPoolClassifier, model_dir, new_head_seed=seed, config=config)
    model.config.deftx_pooling = pooling
    return model
