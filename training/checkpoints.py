"""Versioned checkpoints of one project's model, written atomically and published by a pointer file.

Layout under ``<model_dir>/project-<id>/``::

    versions/v0.pt, v1.pt, ...   torch.save({"state_dict": ..., "meta": {...}})
    PUBLISHED                    text file holding the served version name, e.g. "v3"

A checkpoint is written to a temporary file in the same folder, fsync'ed and renamed, so a
reader never sees a partial file; the PUBLISHED pointer is replaced the same way afterwards.
Temporary files are dot-files (``.v3.pt.<host>-<pid>.<random>.tmp``) that ``versions()`` never
lists; one left by a writer that was killed or ran out of disk is removed by the next ``save``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training import input_size, pretrained
from training.files import atomic_write, host_tag
from training.input_size import InputSize
from training.models import build_model, load_matching, load_pretrained_backbone
from training.pretrained import NamedWeights

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_VERSION_RE = re.compile(r"^v(\d+)$")
_TMP_RE = re.compile(r"^\..+\.(?P<host>[^.]*)-(?P<pid>\d+)\.[^.]*\.tmp$")
STALE_TMP_SECONDS = 3600  # temp files of writers on other hosts count as abandoned after this


@dataclass
class CheckpointMeta:
    """What a checkpoint says about its model; stored next to the weights."""

    version: str
    arch: str
    classes: list[str]
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    parent_version: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CheckpointMeta":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("mean", "std"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)


def version_number(version: str) -> int:
    """``"v12"`` -> 12; raises ValueError on anything else."""
    m = _VERSION_RE.match(version)
    if not m:
        raise ValueError(f"not a version name: {version!r} (expected v<N>)")
    return int(m.group(1))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a negative pid: any process of that process group)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: Path, max_age: float = STALE_TMP_SECONDS) -> list[Path]:
    """Delete temp files left by dead writers: this host's whose pid is gone, any host's older than ``max_age``."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    host, now = host_tag(), time.time()
    for p in folder.iterdir():
        if not (p.name.startswith(".") and p.name.endswith(".tmp")):
            continue
        m = _TMP_RE.match(p.name)
        try:
            old = now - p.stat().st_mtime > max_age
        except FileNotFoundError:
            continue
        dead = m is not None and m.group("host") == host and m.group("pid") != str(os.getpid()) \
            and not pid_alive(int(m.group("pid")))
        if old or dead:
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


class CheckpointStore:
    """The versions of one project's model on disk."""

    def __init__(self, model_dir: str | Path, project_id: int | str) -> None:
        self.root = Path(model_dir) / f"project-{project_id}"
        self.versions_dir = self.root / "versions"
        self.pointer = self.root / "PUBLISHED"

    def path(self, version: str) -> Path:
        version_number(version)
        return self.versions_dir / f"{version}.pt"

    def versions(self) -> list[str]:
        """Complete checkpoint versions on disk, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        names = [p.stem for p in self.versions_dir.glob("v*.pt") if _VERSION_RE.match(p.stem)]
        return sorted(names, key=version_number)

    def next_version(self) -> str:
        existing = self.versions()
        return f"v{version_number(existing[-1]) + 1}" if existing else "v0"

    def published(self) -> str | None:
        """The published version, or None when nothing was published yet."""
        try:
            name = self.pointer.read_text().strip()
        except FileNotFoundError:
            return None
        return name if name and self.path(name).exists() else None

    def save(self, model: nn.Module, meta: CheckpointMeta) -> Path:
        """Write ``meta.version`` atomically (never overwrites an existing version)."""
        path = self.path(meta.version)
        remove_stale_temp_files(self.versions_dir)
        payload = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": meta.to_dict()}
        atomic_write(path, lambda f: torch.save(payload, f), overwrite=False)
        return path

    def publish(self, version: str) -> None:
        """Make ``version`` the served one (atomic pointer swap)."""
        if not self.path(version).exists():
            raise FileNotFoundError(f"cannot publish {version}: no checkpoint at {self.path(version)}")
        remove_stale_temp_files(self.root)
        atomic_write(self.pointer, lambda f: f.write(version.encode()))

    def load(self, version: str, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
        """Load a version's model (eval mode) and metadata."""
        payload = torch.load(self.path(version), map_location=device, weights_only=True)
        meta = CheckpointMeta.from_dict(payload["meta"])
        model = build_model(meta.arch, len(meta.classes))
        model.load_state_dict(payload["state_dict"])
        return model.to(device).eval(), meta

    def read_meta(self, version: str) -> CheckpointMeta:
        payload = torch.load(self.path(version), map_location="cpu", weights_only=True)
        return CheckpointMeta.from_dict(payload["meta"])


@dataclass(frozen=True)
class ModelDefaults:
    """The configured starting point: architecture, input size (None: from the data, ``training.input_size``),
    optional weights (a local file, or a torchvision weights name: ``training.pretrained``), seed, and the
    importer's measurement of the images (``measured``, used when neither IMAGE_SIZE nor the weights set a size)."""

    arch: str
    image_size: int | None
    checkpoint: Path | None = None
    seed: int = 0
    weights: str | None = None
    measured: InputSize | None = None


def _initial_weights(model: nn.Module, defaults: ModelDefaults) -> tuple[str, NamedWeights | None]:
    """Load v0's configured weights into ``model``: ``(source, named weights or None)``."""
    if defaults.weights:
        named = pretrained.for_arch(defaults.arch, defaults.weights)
        skipped = load_matching(model, pretrained.state_dict(named))
        return f"torchvision {named.name} ({named.file.name}) (not loaded: {skipped or 'none'})", named
    if defaults.checkpoint:
        skipped = load_pretrained_backbone(model, defaults.checkpoint)
        return f"{defaults.checkpoint} (not loaded: {skipped or 'none'})", None
    return "random init (seed %d)" % defaults.seed, None


def create_initial_version(store: CheckpointStore, defaults: ModelDefaults, classes: list[str]) -> str:
    """Write and publish v0: the configured weights (``MODEL_WEIGHTS`` by name, or the ``MODEL_CHECKPOINT``
    file) or a freshly initialised (seeded) model, at the input size ``training.input_size`` chooses."""
    torch.manual_seed(defaults.seed)
    model = build_model(defaults.arch, len(classes))
    source, named = _initial_weights(model, defaults)
    size = input_size.for_initial_version(defaults.image_size, named.image_size if named else None,
                                          named.name if named else None, defaults.measured)
    meta = CheckpointMeta(version="v0", arch=defaults.arch, classes=list(classes), image_size=size.size,
                          mean=tuple(named.mean) if named and named.mean else IMAGENET_MEAN,
                          std=tuple(named.std) if named and named.std else IMAGENET_STD,
                          config={"source": source, "input_size": size.to_dict()})
    try:
        store.save(model, meta)
    except FileExistsError:
        pass  # another process wrote v0 first; use theirs
    if store.published() is None:
        store.publish("v0")
    log.info("project store %s: created v0 from %s at %d px (%s)", store.root, source, size.size, size.reason)
    return "v0"
