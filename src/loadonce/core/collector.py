"""Keeping Python's cyclic garbage collector off the loaded models.

A loaded model is hundreds of thousands of long-lived Python objects (a 100-tree forest is
about 300,000 with scikit-learn and its imports). CPython's collector walks every one of them
on each full collection, and a server makes those often: requests waiting in a queue outlive
the young generations, and their survivors trigger full collections. Measured on the forest
under overload (docs/benchmarks.md), full collections took 140-206 ms each, about 7 s of a
20 s run, stalling the event loop and every request in it.

``gc.freeze()`` moves every object alive at that moment into a generation the collector never
walks (CPython's own advice for servers; it also keeps forked workers from writing to shared
pages when they collect). loadonce freezes once startup is over, after a collection so that
startup's garbage is freed rather than kept. Frozen objects are still freed when their last
reference goes; only garbage held in reference cycles would be kept, so after a model is
reloaded, unloaded or loaded while serving, the frozen objects are thawed, collected once and
frozen again: a replaced model's cycles are freed, not leaked.
"""

from __future__ import annotations

import gc


def freeze_survivors() -> int:
    """Collect, then freeze every object still alive; returns how many the collector now
    leaves alone."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def refreeze_if_frozen() -> int | None:
    """After models changed while serving: thaw, collect and freeze again, if startup froze
    (the app may have been built with freezing off). Returns the frozen count, or None."""
    if gc.get_freeze_count() == 0:
        return None
    gc.unfreeze()
    return freeze_survivors()
