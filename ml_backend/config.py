"""Backend settings, read from environment variables (see README "Configuration")."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass
class Settings:
    """Everything the backend and the worker are configured with."""

    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_name: str = "robustar"
    model_dir: Path = Path(".robustar/models")
    model_arch: str = "resnet-18"
    model_checkpoint: Path | None = None
    image_size: int = 224
    pinned_version: str | None = None
    device: str = "auto"
    predict_batch_size: int = 16
    fetch_workers: int = 8
    fetch_timeout: float = 30.0
    seed: int = 0
    public_url: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> "Settings":
        """Build settings from the process environment."""
        checkpoint = _env("MODEL_CHECKPOINT")
        return cls(
            label_studio_url=_env("LABEL_STUDIO_URL"),
            label_studio_api_key=_env("LABEL_STUDIO_API_KEY"),
            redis_url=_env("REDIS_URL", cls.redis_url),
            queue_name=_env("RQ_QUEUE", cls.queue_name),
            model_dir=Path(_env("MODEL_DIR", str(cls.model_dir))),
            model_arch=_env("MODEL_ARCH", cls.model_arch),
            model_checkpoint=Path(checkpoint) if checkpoint else None,
            image_size=int(_env("IMAGE_SIZE", str(cls.image_size))),
            pinned_version=_env("MODEL_VERSION"),
            device=_env("DEVICE", cls.device),
            predict_batch_size=int(_env("PREDICT_BATCH_SIZE", str(cls.predict_batch_size))),
            fetch_workers=int(_env("FETCH_WORKERS", str(cls.fetch_workers))),
            fetch_timeout=float(_env("FETCH_TIMEOUT", str(cls.fetch_timeout))),
            seed=int(_env("SEED", str(cls.seed))),
            public_url=_env("BACKEND_PUBLIC_URL"),
        )

    def torch_device(self) -> str:
        """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
