"""Which model version serves a project: the published checkpoint (or a pinned one), hot-reloaded."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from torch import nn

from ml_backend.settings import Settings
from training.checkpoints import (
    CheckpointMeta,
    CheckpointStore,
    ModelDefaults,
    create_initial_version,
)
from training.input_size import InputSize

log = logging.getLogger(__name__)


class ClassMismatchError(ValueError):
    """The checkpoint's classes differ from the project's label config."""


@dataclass
class ServedModel:
    """A loaded model and its checkpoint metadata."""

    model: nn.Module
    meta: CheckpointMeta
    device: str

    @property
    def version(self) -> str:
        return self.meta.version


def model_defaults(settings: Settings, measured: InputSize | None = None) -> ModelDefaults:
    """What a project's first version (v0) and a from-scratch job are built from; ``measured``: the
    importer's choice of input size from the images (``robustar import``, through ``/setup``)."""
    return ModelDefaults(arch=settings.model_arch, image_size=settings.image_size,
                         checkpoint=settings.model_checkpoint, seed=settings.seed, weights=settings.model_weights,
                         measured=measured)


class ModelRegistry:
    """Loads each project's served version once and reloads it when a new version is published."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = settings.torch_device()
        self._lock = threading.Lock()
        self._loaded: dict[int, ServedModel] = {}
        self._measured: dict[int, InputSize] = {}

    def measured_input(self, project_id: int, size: InputSize) -> None:
        """The importer's measurement of the project's images (``/setup``'s ``extra_params``): the size of
        the project's v0 when it is made here and IMAGE_SIZE / MODEL_WEIGHTS do not choose one."""
        self._measured[project_id] = size

    def store(self, project_id: int) -> CheckpointStore:
        return CheckpointStore(self.settings.model_dir, project_id)

    def current_version(self, project_id: int, classes: list[str] | None = None) -> str:
        """The version that serves this project now (creating v0 when the project has none)."""
        store = self.store(project_id)
        if self.settings.pinned_version:
            if not store.path(self.settings.pinned_version).exists():
                raise FileNotFoundError(
                    f"MODEL_VERSION={self.settings.pinned_version} but {store.path(self.settings.pinned_version)} does not exist"
                )
            return self.settings.pinned_version
        version = store.published()
        if version is None:
            if classes is None:
                raise FileNotFoundError(f"project {project_id} has no published model version yet")
            with self._lock:
                version = store.published() or create_initial_version(
                    store, model_defaults(self.settings, self._measured.get(project_id)), classes)
        return version

    def get(self, project_id: int, classes: list[str] | None = None) -> ServedModel:
        """Return the served model of a project, loading it only when the version changed."""
        version = self.current_version(project_id, classes)
        served = self._loaded.get(project_id)
        if served is None or served.version != version:
            with self._lock:
                served = self._loaded.get(project_id)
                if served is None or served.version != version:
                    model, meta = self.store(project_id).load(version, self.device)
                    served = ServedModel(model, meta, self.device)
                    self._loaded.pop(project_id, None)
                    self._loaded[project_id] = served
                    while len(self._loaded) > max(1, self.settings.max_projects):  # least recently loaded first
                        self._loaded.pop(next(iter(self._loaded)))
                    log.info("project %s: serving %s (%s, %d classes)", project_id, version, meta.arch, len(meta.classes))
        if classes is not None and list(served.meta.classes) != list(classes):
            raise ClassMismatchError(
                f"project {project_id}: model {served.version} was trained on classes {served.meta.classes}, "
                f"but the label config lists {classes}"
            )
        return served
