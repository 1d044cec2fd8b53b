"""Imported last by the fork server (``_worker_start``), when ``gc_freeze`` is on: freezes what
the preloaded imports built, before any worker is forked.

A worker shares the fork server's pages copy-on-write until it writes to one, and a garbage
collection writes to every object it walks (its reference-count bookkeeping lives in each
object's header). Without this, a worker's first full collection (at the latest the one that
precedes its own freeze once its models are loaded) would write to every imported library
object, and each page holding one would become the worker's private copy. Frozen in the fork
server, they are never walked in any worker.
"""

from loadonce.core.collector import freeze_survivors

freeze_survivors()
