"""The core: models, their registry, queues, executors and errors; nothing of HTTP.

A request reaches the core through ``Model.predict_examples`` (the protocols turn bodies into
examples first); the core never imports ``loadonce.http``, ``loadonce.protocols`` or
``loadonce.server`` (``make test`` checks it with import-linter).
"""
