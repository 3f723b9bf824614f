"""Per-task files the browser loads, cached per project and version: heatmap PNGs and influence pages.

Layout under ``<MODEL_DIR>/project-<id>/<folder>/``: ``<version>/<sha256(task key)[:32]><suffix>``.
The task key is ``task["data"]["key"]`` (the importer writes the image's path inside the dataset
there) or the task id when the task has none. File names are hashes of the key, so no request can
name a path outside the folder; files are written to a temp file and renamed, so a reader never
gets half a file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from training.checkpoints import version_number
from training.files import write_bytes_atomic


def task_key(task: dict) -> str:
    """The stable key of a task's files: ``data.key`` when the task has one, else its id."""
    data = task.get("data") or {}
    key = data.get("key")
    if isinstance(key, str) and key:
        return key
    return str(task.get("id"))


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


class TaskFileCache:
    """The cached files of one kind (``folder``, ``suffix``) of one project."""

    def __init__(self, model_dir: str | Path, project_id: int | str, folder: str, suffix: str) -> None:
        self.root = Path(model_dir) / f"project-{project_id}" / folder
        self.suffix = suffix

    def path(self, version: str, key: str) -> Path:
        version_number(version)  # only v<N> names reach the file system
        return self.root / version / f"{key_hash(key)}{self.suffix}"

    def write(self, version: str, key: str, data: bytes) -> Path:
        """Store a file atomically (replacing an older one of the same task and version)."""
        path = self.path(version, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)
        return path

    def find(self, key: str, version: str | None) -> tuple[Path, str] | None:
        """The file of ``key`` for ``version``; else the newest one of an older version; else None."""
        name = f"{key_hash(key)}{self.suffix}"
        if version is not None:
            p = self.path(version, key)
            if p.is_file():
                return p, version
        if not self.root.is_dir():
            return None
        limit = version_number(version) if version is not None else None
        older = []
        for d in self.root.iterdir():
            try:
                n = version_number(d.name)
            except ValueError:
                continue
            if (limit is None or n < limit) and (d / name).is_file():
                older.append((n, d.name))
        if not older:
            return None
        _, v = max(older)
        return self.root / v / name, v


class InfluencePages(TaskFileCache):
    """The influence (test tasks) and suspicion (training tasks) HTML pages of one project."""

    def __init__(self, model_dir: str | Path, project_id: int | str) -> None:
        super().__init__(model_dir, project_id, "influence-pages", ".html")
