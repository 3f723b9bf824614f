"""The memory budgets image decoding is charged to: a /predict request's pixels (``RequestBudget``,
``PREDICT_MAX_PIXELS_PER_REQUEST``) and the process's full-size decodes at once (``DecodeMemory``,
``PREDICT_MAX_DECODE_BYTES``); an image that does not fit raises ``ImageBudgetError`` (413 or 503).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from contextlib import contextmanager

from training.images import ImageError


class ImageBudgetError(ImageError):
    """A task's image does not fit a memory budget: 413 (the request's pixel budget) or 503 (the process is
    decoding as much as it may at once and no room came free within FETCH_TIMEOUT)."""

    def __init__(self, message: str, status: int = 413) -> None:
        super().__init__(message)
        self.status = status


class RequestBudget:
    """The decoded pixels one /predict request may hold (``PREDICT_MAX_PIXELS_PER_REQUEST``): every image is
    charged its decoded (downscaled) size before it is decoded; one that does not fit is refused (413). The
    request's one fetch deadline (``FETCH_TIMEOUT`` for all its images together), and its share of the
    process-wide decode budget (``decode``)."""

    def __init__(self, max_pixels: int, deadline: float | None = None, decode_share: int = 0) -> None:
        self.max_pixels = int(max_pixels)
        self.deadline = deadline  # time.monotonic() by which all the request's images are fetched (or given up)
        # the request's share of the process's decode budget (PREDICT_MAX_DECODE_BYTES / PREDICT_CONCURRENCY):
        # its full-size decodes run one after another past it, so one request cannot take the whole budget
        self.decode = DecodeMemory(decode_share) if decode_share and decode_share > 0 else None
        self.used = 0
        self._lock = threading.Lock()

    def charge(self, source: str, pixels: int) -> None:
        with self._lock:
            if self.max_pixels and self.used + pixels > self.max_pixels:
                raise ImageBudgetError(
                    f"{source}: over the request's pixel budget ({pixels} decoded pixels, {self.used} already "
                    f"held of {self.max_pixels}, PREDICT_MAX_PIXELS_PER_REQUEST); send fewer tasks per request", 413)
            self.used += pixels

    def refund(self, pixels: int) -> None:
        with self._lock:
            self.used -= pixels


class DecodeMemory:
    """Process-wide: the bytes that full-size decodes may hold at once (``PREDICT_MAX_DECODE_BYTES``).

    A decode reserves its peak (full-size pixels plus one converted copy) before any pixel is decoded and
    gives it back once the image is downscaled; others wait, at most ``timeout`` (then 503). An image
    bigger than the whole budget reserves all of it (it decodes alone). Nothing is held while waiting but
    the compressed bytes, and every holder finishes in bounded time, so waiting cannot deadlock."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, source: str, nbytes: int, timeout: float):
        n = min(int(nbytes), self.limit)
        with self._cond:
            if not self._cond.wait_for(lambda: self.used + n <= self.limit, timeout):
                raise ImageBudgetError(f"{source}: the backend is decoding as many images as its memory allows "
                                       f"(PREDICT_MAX_DECODE_BYTES={self.limit}); retry later", 503)
            self.used += n
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


_decode_memories: dict[int, DecodeMemory] = {}
_decode_memories_lock = threading.Lock()
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20


def return_freed_memory() -> bool:
    """Make glibc give large freed blocks back to the system at once (``mallopt(M_MMAP_THRESHOLD, 1 MiB)``).

    PIL holds an image in blocks of up to 16 MiB. glibc raises its mmap threshold after the first big free
    (up to 32 MiB), so later blocks come from per-thread heaps that keep them: a budget that lets one
    decode run at a time still left every fetch thread's heap at the size of the largest image it decoded
    (40 bombs on 8 threads: +1.3 GiB RSS). A fixed threshold serves every block of 1 MiB or more by mmap,
    returned on free. False where this is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def decode_memory(limit: int) -> DecodeMemory | None:
    """The process's ``DecodeMemory`` for ``limit`` bytes (one per process and limit; None: unbounded); the
    first one also makes freed decode memory go back to the system (``return_freed_memory``)."""
    if not limit or limit <= 0:
        return None
    with _decode_memories_lock:
        mem = _decode_memories.get(int(limit))
        if mem is None:
            if not _decode_memories:
                return_freed_memory()
            mem = _decode_memories[int(limit)] = DecodeMemory(int(limit))
        return mem
