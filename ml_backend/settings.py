"""The one reader of the environment: every setting of the backend, the worker and the CLI.

Nothing else in the product reads ``os.environ`` (a test walks the code to keep it so); other
modules take a ``Settings`` (or values from it). docs/configuration.md lists every variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_bool(name: str, default: bool = False) -> bool:
    """``true``/``1``/``yes``/``on`` (any case) -> True, ``false``/``0``/``no``/``off`` -> False, else ValueError."""
    value = _env(name)
    if value is None:
        return default
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={value!r}: expected true or false")


def _env_list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated variable as a tuple of stripped, non-empty items (set but empty -> empty)."""
    value = os.environ.get(name)
    if value is None:
        return tuple(default)
    return tuple(v.strip() for v in value.split(",") if v.strip())


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
    # prediction parts (docs/predictions.md)
    predict_parts: tuple[str, ...] = ("saliency", "influence", "segmentation")
    saliency_method: str = "grad"  # grad | max_grad | ig | gradcam
    saliency_top_q: float = 5.0  # percent of pixels in the "Model attention" brush region
    saliency_ig_steps: int = 16
    saliency_alpha: float = 0.5  # heatmap opacity over the image in the PNG
    segmentation_weights: Path | None = None
    segmentation_arch: str = "maskrcnn_resnet50_fpn"  # or maskrcnn_resnet50_fpn_v2
    segmentation_score: float = 0.5
    segmentation_mode: str = "background"  # background | instances
    segmentation_classes: tuple[str, ...] = ()  # names or ids, for mode=instances
    segmentation_min_size: int = 800
    segmentation_max_size: int = 1333
    influence_top_k: int = 5
    influence_score: str = "cosine"  # cosine (renormalised TracIn) | tracin (raw, = captum TracInCPFast)
    influence_sign: str = "both"  # both | proponents | opponents | abs
    influence_build: str = "background"  # background | sync | off (index built lazily by the backend or not)
    influence_batch_size: int = 64
    # reliability and security (docs/reliability.md)
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    webhook_secret: str | None = None
    allowed_image_hosts: tuple[str, ...] = ()
    allow_private_image_hosts: bool = False  # ALLOWED_IMAGE_HOSTS may resolve to loopback/private/link-local
    cors_origins: tuple[str, ...] = ()  # origins (besides Label Studio's) whose pages may read heatmaps/pages
    image_root: Path | None = None
    max_image_bytes: int = 50_000_000
    max_request_bytes: int = 32 * 1024 * 1024
    max_predict_tasks: int = 10_000
    predict_concurrency: int = 4  # /predict requests computed at once (more wait): bounds memory under load
    max_image_pixels: int = 64_000_000
    predict_max_side: int = 1024  # /predict decodes images downscaled to this longer side (never below the model input)
    predict_max_pixels_per_request: int = 64_000_000  # decoded (downscaled) pixels one /predict may hold
    predict_max_decode_bytes: int = 1 << 30  # process-wide bytes of full-size decodes at once
    # training (TRAIN_* defaults of every job; see training.options) and the queue policy
    train_env: dict[str, str] = field(default_factory=dict)
    train_every_n_annotations: int = 0
    train_retries: int = 1
    train_job_timeout: int = 6 * 3600
    redis_key_prefix: str = "robustar:"
    # process and CLI
    host: str = "0.0.0.0"
    port: int = 9090
    http_header_timeout: float = 10.0  # seconds for a request's line and headers (robustar serve)
    http_body_timeout: float = 60.0  # seconds for a whole request body (408 and the connection closed after)
    http_keep_alive_timeout: float = 5.0  # seconds an idle keep-alive connection stays open
    http_max_header_bytes: int = 16 * 1024  # request line + headers (h11; larger: 400)
    log_level: str = "info"
    ls_venv: Path | None = None  # the Label Studio venv used by `robustar demo` and the tests
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> "Settings":
        """Build settings from the process environment."""
        checkpoint = _env("MODEL_CHECKPOINT")
        seg_weights = _env("SEGMENTATION_WEIGHTS")
        image_root = _env("IMAGE_ROOT")
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
            predict_parts=_env_list("PREDICT_PARTS", cls.predict_parts),
            saliency_method=_env("SALIENCY_METHOD", cls.saliency_method),
            saliency_top_q=float(_env("SALIENCY_TOP_Q", str(cls.saliency_top_q))),
            saliency_ig_steps=int(_env("SALIENCY_IG_STEPS", str(cls.saliency_ig_steps))),
            saliency_alpha=float(_env("SALIENCY_ALPHA", str(cls.saliency_alpha))),
            segmentation_weights=Path(seg_weights) if seg_weights else None,
            segmentation_arch=_env("SEGMENTATION_ARCH", cls.segmentation_arch),
            segmentation_score=float(_env("SEGMENTATION_SCORE", str(cls.segmentation_score))),
            segmentation_mode=_env("SEGMENTATION_MODE", cls.segmentation_mode),
            segmentation_classes=_env_list("SEGMENTATION_CLASSES", cls.segmentation_classes),
            segmentation_min_size=int(_env("SEGMENTATION_MIN_SIZE", str(cls.segmentation_min_size))),
            segmentation_max_size=int(_env("SEGMENTATION_MAX_SIZE", str(cls.segmentation_max_size))),
            influence_top_k=int(_env("INFLUENCE_TOP_K", str(cls.influence_top_k))),
            influence_score=_env("INFLUENCE_SCORE", cls.influence_score),
            influence_sign=_env("INFLUENCE_SIGN", cls.influence_sign),
            influence_build=_env("INFLUENCE_BUILD", cls.influence_build),
            influence_batch_size=int(_env("INFLUENCE_BATCH_SIZE", str(cls.influence_batch_size))),
            basic_auth_user=_env("BASIC_AUTH_USER"),
            basic_auth_pass=_env("BASIC_AUTH_PASS"),
            webhook_secret=_env("WEBHOOK_SECRET"),
            allowed_image_hosts=_env_list("ALLOWED_IMAGE_HOSTS", cls.allowed_image_hosts),
            allow_private_image_hosts=_env_bool("ALLOW_PRIVATE_IMAGE_HOSTS", cls.allow_private_image_hosts),
            cors_origins=_env_list("CORS_ORIGINS", cls.cors_origins),
            image_root=Path(image_root) if image_root else None,
            max_image_bytes=int(_env("MAX_IMAGE_BYTES", str(cls.max_image_bytes))),
            max_request_bytes=int(_env("MAX_REQUEST_BYTES", str(cls.max_request_bytes))),
            max_predict_tasks=int(_env("MAX_PREDICT_TASKS", str(cls.max_predict_tasks))),
            predict_concurrency=max(1, int(_env("PREDICT_CONCURRENCY", str(cls.predict_concurrency)))),
            max_image_pixels=int(_env("MAX_IMAGE_PIXELS", str(cls.max_image_pixels))),
            predict_max_side=max(0, int(_env("PREDICT_MAX_SIDE", str(cls.predict_max_side)))),
            predict_max_pixels_per_request=max(0, int(_env("PREDICT_MAX_PIXELS_PER_REQUEST",
                                                           str(cls.predict_max_pixels_per_request)))),
            predict_max_decode_bytes=max(0, int(_env("PREDICT_MAX_DECODE_BYTES", str(cls.predict_max_decode_bytes)))),
            train_env={k: v for k, v in os.environ.items() if k.startswith("TRAIN_") and v != ""},
            train_every_n_annotations=int(_env("TRAIN_EVERY_N_ANNOTATIONS", "0")),
            train_retries=max(0, int(_env("TRAIN_RETRIES", str(cls.train_retries)))),
            train_job_timeout=int(_env("TRAIN_JOB_TIMEOUT", str(cls.train_job_timeout))),
            redis_key_prefix=_env("REDIS_KEY_PREFIX", cls.redis_key_prefix),
            host=_env("HOST", cls.host),
            http_header_timeout=float(_env("HTTP_HEADER_TIMEOUT", str(cls.http_header_timeout))),
            http_body_timeout=float(_env("HTTP_BODY_TIMEOUT", str(cls.http_body_timeout))),
            http_keep_alive_timeout=float(_env("HTTP_KEEP_ALIVE_TIMEOUT", str(cls.http_keep_alive_timeout))),
            http_max_header_bytes=int(_env("HTTP_MAX_HEADER_BYTES", str(cls.http_max_header_bytes))),
            port=int(_env("PORT", str(cls.port))),
            log_level=_env("LOG_LEVEL", cls.log_level),
            ls_venv=Path(_env("ROBUSTAR_LS_VENV")) if _env("ROBUSTAR_LS_VENV") else None,
        )

    def torch_device(self) -> str:
        """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
        from training.models import resolve_device

        return resolve_device(self.device)


def env_value(name: str, default: str | None = None) -> str | None:
    """One variable of the environment (unset or empty -> ``default``), for the CLI's defaults."""
    return _env(name, default)


def process_environment(extra: dict[str, str] | None = None, drop_prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment for a child process: without ``drop_prefixes``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)} if drop_prefixes else dict(os.environ)
    env.update(extra or {})
    return env
