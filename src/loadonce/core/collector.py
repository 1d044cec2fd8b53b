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

With the models frozen, the young generations were still a fifth of a loaded server's time
(the demo at 512 connections: about 2,300 collections of the youngest generation and 210 of
the middle one in 8 s, 1.2-1.6 s of it, docs/benchmarks.md). Python collects the youngest
generation every 700 tracked objects allocated net; a request allocates dozens before it frees
them, and with hundreds of requests in flight each collection walks all of theirs, only to
find them alive. The same freeze raises that threshold to 10,000 (the requests' own
allocations mostly cancel out; what is left between collections is the garbage held in
cycles): 10 collections in the same 8 s, 0.1 s. A threshold the process set itself is kept.
"""

from __future__ import annotations

import gc

# The youngest generation's threshold while serving, and Python's own defaults (700; 2000
# with the incremental collector): only a default is raised, never one the process chose.
SERVING_YOUNG_THRESHOLD = 10_000
_PYTHON_YOUNG_THRESHOLDS = (700, 2000)


def freeze_survivors() -> int:
    """Collect, then freeze every object still alive, and collect the youngest generation less
    often; returns how many objects the collector now leaves alone."""
    gc.collect()
    gc.freeze()
    _raise_young_threshold()
    return gc.get_freeze_count()


def _raise_young_threshold() -> None:
    young, middle, old = gc.get_threshold()
    if young in _PYTHON_YOUNG_THRESHOLDS:
        gc.set_threshold(SERVING_YOUNG_THRESHOLD, middle, old)


def refreeze_if_frozen() -> int | None:
    """After models changed while serving: thaw, collect and freeze again, if startup froze
    (the app may have been built with freezing off). Returns the frozen count, or None."""
    if gc.get_freeze_count() == 0:
        return None
    gc.unfreeze()
    return freeze_survivors()
