"""A size and age limit on Gradio's upload cache (``GRADIO_TEMP_DIR``), which Gradio itself never bounds.

Gradio writes an upload to a ``tmp*`` file at the top of the cache directory while it arrives, then
renames it to ``<hash>/<name>``; the page's results and the examples land in ``<hash>/<name>`` too. Only
files of that layout are counted and evicted, so a ``GRADIO_TEMP_DIR`` pointed at a shared directory never
loses anything else.

``UICache.reserve(n, client)`` holds room for an upload of ``n`` bytes before it is read and refuses one
that cannot fit; it evicts nothing. Files are evicted (oldest first) only for bytes that actually arrive
(:meth:`UICache.arrived`), so announcing uploads and sending nothing cannot empty the cache (issue 17,
finding 7). One client address holds at most an eighth of the cache in reservations. ``sweep()`` drops
expired files and trims the directory back to its limit; a background thread sweeps every ``interval``
seconds for the results Gradio writes on its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CacheFull", "ClientShareFull", "Entry", "UICache", "Upload", "UploadTooLarge"]

log = logging.getLogger("poolserve")

# Gradio's content-hash directories (sha256 today; any long hex name to be safe across versions).
_HASH_DIR = re.compile(r"^[0-9a-f]{32,128}$")


class UploadTooLarge(Exception):
    """One upload larger than the whole cache."""


class CacheFull(Exception):
    """No room now: what is left is pinned or held by uploads still arriving."""


class ClientShareFull(CacheFull):
    """This client's uploads still arriving already hold its share of the cache."""


@dataclass(eq=False)
class Upload:
    """Room held for one upload while it arrives: its announced size, its client, the bytes received."""

    size: int
    client: str | None
    arrived: int = 0


@dataclass(frozen=True)
class Entry:
    path: Path
    size: int
    stamp: float  # when it arrived: the later of mtime and ctime (a rename or copy keeps the old mtime)


class UICache:
    """The cache directory's byte and age limit. Thread-safe; every method does blocking file I/O."""

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int,
        max_age: float,
        pinned: Iterable[str | Path] = (),
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_age = max_age
        # Files the page itself needs for as long as it runs (the examples copied in at build time).
        self.pinned = frozenset(os.path.realpath(p) for p in pinned)
        self.on_evict = on_evict
        self.client_share = max_bytes // 8  # most bytes one client's arriving uploads may hold
        self._reserved = 0  # announced bytes of the uploads still arriving
        self._arrived = 0  # bytes of them received so far: the only bytes that may evict files
        self._unswept = 0  # bytes received since the last sweep
        self._step = max(1, min(1024 * 1024, max_bytes // 64))  # received bytes between two sweeps
        self._held: dict[str, int] = {}  # announced bytes per client
        self._last_sweep = -1e9
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the directory --------------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Every file of Gradio's layout in the directory, oldest first."""
        out: list[Entry] = []
        try:
            top = list(os.scandir(self.directory))
        except FileNotFoundError:
            return out
        for item in top:
            try:
                if item.is_file(follow_symlinks=False) and item.name.startswith("tmp"):
                    out.append(_entry(item))
                elif item.is_dir(follow_symlinks=False) and _HASH_DIR.match(item.name):
                    with os.scandir(item.path) as inner:
                        out.extend(_entry(f) for f in inner if f.is_file(follow_symlinks=False))
            except FileNotFoundError:  # removed while we looked: it no longer counts
                continue
        out.sort(key=lambda e: e.stamp)
        return out

    def used(self) -> int:
        """Bytes the directory holds now, counted as the limit counts them."""
        return sum(e.size for e in self.entries())

    def sweep(self, *, now: float | None = None) -> int:
        """Drop expired files, then the oldest until the directory and the bytes received of uploads still
        arriving fit the limit. Returns the bytes left."""
        with self._lock:
            return self._sweep(now)

    def sweep_soon(self) -> None:
        """:meth:`sweep`, unless one ran less than a second ago (after requests that may have written a
        result; the background cleaner and every upload sweep anyway)."""
        if time.monotonic() - self._last_sweep >= 1.0:
            self.sweep()

    def _sweep(self, now: float | None) -> int:
        self._last_sweep = time.monotonic()
        now = time.time() if now is None else now
        entries = self.entries()
        # Uploads land in top-level tmp files while they arrive. Those hold at most the bytes received so
        # far; more means leftovers of uploads that failed, which count too.
        landing = sum(e.size for e in entries if e.path.parent == self.directory)
        stored = sum(e.size for e in entries) - landing
        for entry in entries:  # oldest first
            expired = now - entry.stamp > self.max_age
            over = stored + max(landing, self._arrived) > self.max_bytes
            if not (expired or over):
                break
            if self._is_pinned(entry.path):
                continue
            if self._remove(entry.path):
                if entry.path.parent == self.directory:
                    landing -= entry.size
                else:
                    stored -= entry.size
                if self.on_evict is not None:
                    self.on_evict(str(entry.path))
        return stored + landing

    def _remove(self, path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError:
            log.warning("could not remove %s from the UI cache", path)
            return False
        if path.parent != self.directory:
            with contextlib.suppress(OSError):  # the hash directory, once empty
                path.parent.rmdir()
        return True

    # ---- uploads ----------------------------------------------------------------------------------------
    def reserve(self, size: int, client: str | None = None) -> Upload:
        """Hold room for an upload of ``size`` bytes from ``client`` until :meth:`release`; evicts nothing.

        Raises :class:`UploadTooLarge` when ``size`` alone is over the limit (or over a client's share),
        :class:`ClientShareFull` when ``client``'s uploads still arriving hold its share, and
        :class:`CacheFull` when the pinned files and the uploads still arriving leave too little room.
        ``client`` None: no share (the cache used on its own)."""
        if size > self.max_bytes:
            raise UploadTooLarge(
                f"upload of {size} bytes is over the UI cache limit of {self.max_bytes} bytes "
                "(POOLSERVE_UI_CACHE_BYTES)"
            )
        if client is not None and size > self.client_share:
            raise UploadTooLarge(
                f"upload of {size} bytes is over one client's share of the UI cache, {self.client_share} "
                "bytes (POOLSERVE_UI_CACHE_BYTES / 8)"
            )
        with self._lock:
            held = self._held.get(client, 0) if client is not None else 0
            if client is not None and held + size > self.client_share:
                raise ClientShareFull(
                    f"client {client} holds {held} bytes of uploads arriving; {size} more would pass its "
                    f"share of {self.client_share}"
                )
            pinned = sum(e.size for e in self.entries() if self._is_pinned(e.path))
            if pinned + self._reserved + size > self.max_bytes:
                raise CacheFull(
                    f"the UI cache is full ({pinned} bytes pinned, {self._reserved} bytes of uploads "
                    f"arriving, limit {self.max_bytes}); try again shortly"
                )
            self._reserved += size
            if client is not None:
                self._held[client] = held + size
            return Upload(size, client)

    def arrived(self, upload: Upload, size: int) -> bool:
        """Count ``size`` bytes received for ``upload`` (never more than it announced). Returns whether a
        :meth:`make_room` is due; cheap, no file I/O."""
        with self._lock:
            size = max(0, min(size, upload.size - upload.arrived))
            upload.arrived += size
            self._arrived += size
            self._unswept += size
            if self._unswept < self._step:
                return False
            self._unswept = 0
            return True

    def make_room(self) -> None:
        """Evict the oldest files for the bytes received so far (see :meth:`arrived`)."""
        with self._lock:
            self._sweep(None)

    def release(self, upload: Upload) -> None:
        """The upload is on disk (or failed): stop holding its room, and trim back to the limit."""
        with self._lock:
            self._reserved -= upload.size
            self._arrived -= upload.arrived
            if upload.client is not None:
                left = self._held.pop(upload.client, 0) - upload.size
                if left > 0:
                    self._held[upload.client] = left
            self._sweep(None)

    def _is_pinned(self, path: Path) -> bool:
        return str(path) in self.pinned or os.path.realpath(path) in self.pinned

    # ---- the background cleaner -----------------------------------------------------------------------
    @property
    def interval(self) -> float:
        """Seconds between sweeps: half the maximum age, at most a minute."""
        return max(0.05, min(self.max_age / 2, 60.0))

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="poolserve-ui-cache", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except Exception:  # a cleaner that dies would let the cache grow; log and keep going
                log.exception("sweeping the UI cache %s failed", self.directory)


def _entry(item: os.DirEntry[str]) -> Entry:
    stat = item.stat(follow_symlinks=False)
    return Entry(Path(item.path), stat.st_size, max(stat.st_mtime, stat.st_ctime))
