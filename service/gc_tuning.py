"""Keep Python's cycle collector from stalling the event loop: freeze the start-up heap.

By the time the app is ready, the process holds a few million objects that live as long as it does:
torch, numpy, pydantic, FastAPI, Gradio's Blocks. Python's oldest-generation collection walks all of them,
and the allocations of a stream of small requests trigger one every second or so: on the 2-core
benchmark machine each took up to 356 ms with every request waiting (a p99 of 270 ms for requests whose
p50 is 7 ms). :func:`gc.freeze` (Python ≥ 3.7, the documented remedy for a large long-lived heap) moves
everything that exists now into a permanent generation the collector never walks; objects created later
are collected as before.

The permanent generation is process-wide, and :func:`gc.unfreeze` empties all of it, whoever froze what.
So :func:`unfreeze_heap` undoes the freeze only where the heap had nothing frozen before ours: a process that
builds and tears down many apps (the tests) gets their garbage back, and a host that froze its own heap
(a pre-fork server, an embedding application) keeps it frozen, ours included.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_heap", "unfreeze_heap"]


def freeze_heap() -> int:
    """Collect what is garbage now, then freeze the rest; how many objects were frozen before, for
    :func:`unfreeze_heap`."""
    found = gc.get_freeze_count()
    gc.collect()
    gc.freeze()
    return found


def unfreeze_heap(found: int) -> None:
    """Undo :func:`freeze_heap`, given what it returned: only if nothing was frozen before it, since
    :func:`gc.unfreeze` would unfreeze someone else's objects too."""
    if found == 0:
        gc.unfreeze()
