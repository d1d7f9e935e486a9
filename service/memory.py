"""Keep freed large buffers in the process instead of handing them back to the kernel (glibc only).

Every request allocates a few buffers as large as its body (uvicorn's body chunks, the joined body, the
decoded array, the output, the encoded reply). glibc serves blocks over its mmap threshold with a fresh
``mmap`` and gives freed memory at the top of the heap back to the kernel past its trim threshold, so
each request pays a page fault for every 4 KiB it touches: on a virtual machine that is most of the time
spent reading a multi-megabyte body. Raising both thresholds (``mallopt``, as the ``MALLOC_*_``
environment variables would) lets later requests reuse the memory earlier ones freed; the cost is that
the process keeps its peak heap instead of shrinking after a burst of large requests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["reuse_freed_memory"]

log = logging.getLogger("poolserve")

_M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's own ceiling for its adaptive threshold on 64-bit
_TRIM_THRESHOLD = 256 * 1024 * 1024


def reuse_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; ``False`` where there is no glibc
    ``mallopt`` (musl, macOS, Windows) or it refused, in which case nothing changed."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; setting the mmap threshold also turns off glibc's adaptive one.
    done = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
    done = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and done
    if not done:
        log.warning("mallopt refused the heap thresholds; large buffers are allocated fresh per request")
    return done


def trim_heap() -> bool:
    """Hand glibc's free heap pages back to the kernel now (``malloc_trim(0)``, every arena): after an
    answer that was never taken is dropped, so its memory does not stay with the process under the raised
    thresholds above. ``False`` where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        malloc_trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = (ctypes.c_size_t,)
    malloc_trim.restype = ctypes.c_int
    malloc_trim(0)
    return True
