"""An on-disk cache of decoded, resized task images, shared by every training job of a machine.

An entry is one file per ``(image URL, model input size)``: a 256-byte header (the image's version key,
its stored width and height) and the ``uint8 [3, S, S]`` pixels (``training.images.resize_rgb``, channels
first), so a training batch reads it with one ``np.fromfile`` (``read_pixels``).

The cache does no I/O of its own beyond its folder: images come from a ``VersionedSource`` that the caller
supplies (the worker's ``ImageFetcher.fetch_versioned``). The source is asked with the version of the
cached entry and decides what a version is (an HTTP ETag / Last-Modified, a file's mtime and size, a
hash of the bytes): it answers ``(None, version)`` when the image has not changed — the entry is used as
it is — or the new image and its version, which replaces the entry.

Concurrent jobs (and torchrun ranks) may fill the same cache: entries are written to a temporary file
and renamed into place (atomic on POSIX), and ``prune`` (bounded size, least recently used first) spares
entries used within ``grace_s``, so it never takes an image from under a running job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from training.files import atomic_write
from training.images import ImageError, ImageSource, resize_rgb
from training.progress import Progress

log = logging.getLogger(__name__)

HEADER = 256
MAGIC = b"RBXIMG1\n"
VersionedSource = Callable[[str, "str | None"], "tuple[Image.Image | None, str]"]
"""``(url, version of the cached entry or None) -> (image, version)``; ``image`` None: unchanged since that
version (only ever answered when a version was given). Raises ``ImageError``."""


@dataclass(frozen=True)
class Entry:
    """A cached image: its file, the stored image's ``(width, height)`` and whether this job fetched it."""

    path: Path
    original_size: tuple[int, int]
    fetched: bool


def unversioned(load_image: ImageSource) -> VersionedSource:
    """A source without version keys: always fetched; the version is a hash of the decoded pixels."""

    def source(url: str, known: str | None) -> tuple[Image.Image, str]:
        img = load_image(url)
        return img, "pixels:" + hashlib.sha256(img.tobytes()).hexdigest()[:32]

    return source


def read_header(path: Path) -> dict | None:
    """The entry's header (``version``, ``width``, ``height``, ``size``), None when missing or unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER)
        if len(head) != HEADER or not head.startswith(MAGIC):
            return None
        return json.loads(head[len(MAGIC):].rstrip(b" "))
    except (OSError, ValueError):
        return None


def read_pixels(path: str | Path, size: int) -> np.ndarray:
    """The entry's ``uint8 [3, size, size]`` pixels."""
    return np.fromfile(path, dtype=np.uint8, count=3 * size * size, offset=HEADER).reshape(3, size, size)


class ImageCache:
    """Entries under ``root/<size>px/<2 hex>/<sha256 of namespace, size and URL>.img``; ``max_bytes`` (0:
    unbounded) is what ``prune`` keeps. ``namespace`` (the worker's: Label Studio's origin and the project)
    keeps one project's entries from another: the same URL in two projects is two entries, each filled by
    its project's own fetch."""

    def __init__(self, root: str | Path, max_bytes: int = 0, grace_s: float = 6 * 3600.0, namespace: str = "") -> None:
        self.root = Path(root)
        self.namespace = namespace  # whose entries these are (the image source's origin and project): part of the key
        self.max_bytes = int(max_bytes)
        self.grace_s = float(grace_s)

    def path(self, url: str, size: int) -> Path:
        scope = f"{self.namespace}\0" if self.namespace else ""
        key = hashlib.sha256(f"{scope}{size}\0{url}".encode("utf-8", "surrogatepass")).hexdigest()
        return self.root / f"{size}px" / key[:2] / f"{key}.img"

    def write(self, url: str, size: int, version: str, img: Image.Image) -> Path:
        """Resize ``img`` and store it atomically (temporary file, then rename)."""
        pixels = np.ascontiguousarray(resize_rgb(img, size).transpose(2, 0, 1))
        head = MAGIC + json.dumps({"version": version, "width": img.size[0], "height": img.size[1],
                                   "size": size}).encode()
        if len(head) > HEADER:  # an absurdly long version key: keep its hash
            return self.write(url, size, "sha256:" + hashlib.sha256(version.encode()).hexdigest(), img)
        path = self.path(url, size)
        atomic_write(path, lambda f: f.write(head.ljust(HEADER, b" ") + pixels.tobytes()), durable=False)
        return path

    def get(self, url: str, size: int, source: VersionedSource) -> Entry:
        """The entry of ``url`` at ``size``, fetched through ``source`` when missing or changed."""
        path = self.path(url, size)
        head = read_header(path)
        known = head.get("version") if head and head.get("size") == size else None
        img, version = source(url, known)
        if img is None and head is not None and known is not None:
            os.utime(path)  # used now: the last to be pruned
            return Entry(path, (int(head["width"]), int(head["height"])), fetched=False)
        if img is None:
            raise ImageError(f"{url}: the image source answered 'unchanged' for an image not in the cache")
        return Entry(self.write(url, size, version, img), img.size, fetched=True)

    def fill(self, urls: Sequence[str], size: int, source: VersionedSource, workers: int = 8,
             progress: Progress | None = None) -> dict[str, Entry | ImageError]:
        """``get`` every distinct URL (threads): URL -> its entry or the error that kept it out. Reports
        ``images_done`` / ``images_total`` / ``images_fetched`` to ``progress`` as they complete."""

        def one(url: str) -> Entry | ImageError:
            try:
                return self.get(url, size, source)
            except ImageError as e:
                return e
            except Exception as e:  # never let one task's image fail the job
                return ImageError(f"{type(e).__name__}: {e}")

        distinct = list(dict.fromkeys(urls))
        out: dict[str, Entry | ImageError] = {}
        fetched = 0
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(distinct) or 1)), thread_name_prefix="cache") as pool:
            for url, item in zip(distinct, pool.map(one, distinct)):
                out[url] = item
                fetched += isinstance(item, Entry) and item.fetched
                if progress is not None:
                    progress.update(images_done=len(out), images_total=len(distinct), images_fetched=fetched)
        return out

    def usage(self) -> tuple[int, int]:
        """``(entries, bytes)`` in the cache."""
        files = [p.stat().st_size for p in self.root.glob("*px/*/*.img")]
        return len(files), sum(files)

    def prune(self, max_bytes: int | None = None) -> tuple[int, int]:
        """Remove least recently used entries until the cache holds at most ``max_bytes`` (default: the
        cache's bound; 0: nothing removed), sparing entries used within ``grace_s``. Returns ``(entries,
        bytes)`` removed."""
        limit = self.max_bytes if max_bytes is None else int(max_bytes)
        if limit <= 0:
            return 0, 0
        entries = []
        for p in self.root.glob("*px/*/*.img"):
            try:
                st = p.stat()
            except OSError:  # removed meanwhile by another job's prune
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(e[1] for e in entries)
        spare_after = time.time() - self.grace_s
        removed = freed = 0
        for mtime, nbytes, p in sorted(entries):
            if total - freed <= limit or mtime >= spare_after:
                break
            p.unlink(missing_ok=True)
            removed, freed = removed + 1, freed + nbytes
        if removed:
            log.info("image cache %s: pruned %d entries (%d bytes) to stay within %d bytes", self.root, removed,
                     freed, limit)
        return removed, freed
