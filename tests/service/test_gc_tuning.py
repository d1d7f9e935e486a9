"""The start-up heap is frozen out of the cycle collector's walks while the app runs (service.gc_tuning)."""

from __future__ import annotations

import gc
import weakref

from fastapi.testclient import TestClient

from service.app import create_app

from .support import test_settings


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cycle collector frees it


def test_the_start_up_heap_is_out_of_the_oldest_generation_while_the_app_runs() -> None:
    with TestClient(create_app(test_settings())) as client:
        assert client.get("/ready").status_code == 200
        frozen = gc.get_freeze_count()
        # Everything the process held at start-up (torch, Gradio's Blocks, ...): what a full collection
        # walked on every run before, a 300 ms stall on the benchmark machine.
        assert frozen > 100_000
        assert len(gc.get_objects(generation=2)) < frozen / 10
        # Objects made after start-up are still collected.
        ref = weakref.ref(_Node())
        gc.collect()
        assert ref() is None
    # Shut down: unfrozen, so the garbage of a torn-down app can be collected.
    assert gc.get_freeze_count() == 0


def test_a_heap_someone_else_froze_stays_frozen_after_shutdown() -> None:
    # gc.unfreeze() empties the whole permanent generation: the app must not undo a host's own freeze.
    gc.freeze()
    try:
        theirs = gc.get_freeze_count()
        assert theirs > 0
        with TestClient(create_app(test_settings())) as client:
            assert client.get("/ready").status_code == 200
        assert gc.get_freeze_count() >= theirs
    finally:
        gc.unfreeze()  # ours, from this test's gc.freeze()
