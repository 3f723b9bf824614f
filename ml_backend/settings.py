"""The one reader of the environment: every setting of the backend, the worker and the CLI.

Nothing else in the product reads ``os.environ`` (a test walks the code to keep it so); other
modules take a ``Settings`` (or values from it). docs/configuration.md lists every variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from training.options import parse_bool


def _parse(annotation: str, name: str, raw: str):
    """A variable's text as the field's type: int, float, bool, Path, a comma list (tuple), else str."""
    kind = annotation.split("|")[0].strip()
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return parse_bool(raw, name)
        if kind == "Path":
            return Path(raw)
        if kind.startswith("tuple"):  # set but empty -> empty
            return tuple(v.strip() for v in raw.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected {kind}") from None
    return raw


ENV_NAMES = {  # fields whose variable is not the field's name in upper case
    "queue_name": "RQ_QUEUE",
    "pinned_version": "MODEL_VERSION",
    "public_url": "BACKEND_PUBLIC_URL",
    "ls_venv": "ROBUSTAR_LS_VENV",
}
NOT_FROM_ENV = ("train_env", "extra")  # train_env collects every TRAIN_* variable (training.options)
MINIMUM = {"predict_concurrency": 1, "train_retries": 0, "predict_max_side": 0, "predict_max_pixels_per_request": 0,
           "predict_max_decode_bytes": 0,
           "max_projects": 1, "max_context_marks": 0, "max_mask_pixels": 0, "propose_after_painted": 0}


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
    model_weights: str | None = None  # torchvision weights by name (imagenet, ResNet18_Weights.IMAGENET1K_V1): training.pretrained
    image_size: int | None = None  # unset: from the data (training.input_size)
    pinned_version: str | None = None
    device: str = "auto"
    predict_batch_size: int = 16
    fetch_workers: int = 8
    fetch_timeout: float = 30.0
    seed: int = 0
    public_url: str | None = None
    # prediction parts (docs/predictions.md)
    predict_parts: tuple[str, ...] = ("saliency", "influence", "segmentation", "propagation")
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
    suspicion_ranking: str = "class_balanced"  # class_balanced (score = rank of the suspicion in its class) | raw
    push_detail: str = "light"  # after training: light (class + score; heatmaps/pages made on first view) | full
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
    predict_max_pixels_per_request: int = 16_777_216  # decoded (downscaled) pixels one /predict may hold (16 x 1024²)
    predict_max_decode_bytes: int = 1 << 30  # process-wide bytes of full-size decodes at once
    max_mask_pixels: int = 16_777_216  # largest brush mask an interactive /predict may declare (original size)
    max_context_marks: int = 200  # marks (keypoints, rectangles, brush strokes) in one interactive /predict
    max_projects: int = 64  # projects whose state (model, credentials) the backend keeps in memory; LRU evicted
    # training (TRAIN_* defaults of every job; see training.options) and the queue policy
    train_env: dict[str, str] = field(default_factory=dict)
    train_every_n_annotations: int = 0
    propose_after_painted: int = 3  # annotation events queue a mask-proposal job once this many training images are painted (0: off)
    train_retries: int = 1
    train_job_timeout: int = 6 * 3600
    train_cache_dir: Path | None = None  # decoded, resized training images (training.image_cache); unset: MODEL_DIR/cache
    train_cache_max_bytes: int = 32 << 30  # the cache is pruned to this after every job (least recently used; 0: never)
    train_gpus: int = 0  # > 1: the worker's job runs under torchrun, one process per GPU (gloo without CUDA)
    redis_key_prefix: str = "robustar:"
    # torch.distributed, as torchrun sets them for `robustar train` (docs/training.md#several-gpus-and-a-cluster)
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    # process and CLI
    host: str = "0.0.0.0"
    port: int = 9090
    http_header_timeout: float = 10.0  # seconds for a request's line and headers (robustar serve)
    http_body_timeout: float = 60.0  # seconds for a whole request body (408 and the connection closed after)
    http_keep_alive_timeout: float = 5.0  # seconds an idle keep-alive connection stays open
    http_max_header_bytes: int = 16 * 1024  # request line + headers (h11; larger: 400)
    log_level: str = "info"
    ls_venv: Path | None = None  # the Label Studio venv used by `robustar demo` and the tests
    # `robustar import --storage local-files|s3` (docs/storage.md): what Label Studio's storage is registered with
    local_files_document_root: Path | None = None  # Label Studio's LOCAL_FILES_DOCUMENT_ROOT
    s3_endpoint: str | None = None  # an S3-compatible endpoint URL (MinIO, Ceph ...); unset: AWS
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    aws_default_region: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field -> environment variable, for every field the environment sets."""
        return {f.name: ENV_NAMES.get(f.name, f.name.upper()) for f in fields(cls) if f.name not in NOT_FROM_ENV}

    @classmethod
    def from_env(cls) -> "Settings":
        """Build settings from the process environment (unset or empty variables keep the defaults)."""
        kw: dict = {}
        for f in fields(cls):
            if f.name in NOT_FROM_ENV:
                continue
            name = ENV_NAMES.get(f.name, f.name.upper())
            raw = os.environ.get(name)
            if raw is None or (raw == "" and not f.type.startswith("tuple")):
                continue
            value = _parse(f.type, name, raw)
            kw[f.name] = max(MINIMUM[f.name], value) if f.name in MINIMUM else value
        kw["train_env"] = {k: v for k, v in os.environ.items() if k.startswith("TRAIN_") and v != ""}
        return cls(**kw)

    def torch_device(self) -> str:
        """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
        from training.models import resolve_device

        return resolve_device(self.device)


def env_value(name: str, default: str | None = None) -> str | None:
    """One variable of the environment (unset or empty -> ``default``), for the demo's own defaults."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def process_environment(extra: dict[str, str] | None = None, drop_prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment for a child process: without ``drop_prefixes``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)} if drop_prefixes else dict(os.environ)
    env.update(extra or {})
    return env
