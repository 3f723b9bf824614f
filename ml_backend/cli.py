"""``robustar`` console command: serve | worker | train | import | fetch-weights | demo."""

from __future__ import annotations

import argparse
import logging
import sys

from ml_backend.api.http_limits import uvicorn_limits
from ml_backend.settings import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ml_backend.api.server import build_app

    settings = Settings.from_env()
    uvicorn.run(build_app(), host=args.host, port=args.port, log_level=args.log_level,
                **uvicorn_limits(settings))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from redis import Redis
    from rq import Queue

    from ml_backend.jobs.warm_worker import preload, worker_class

    settings = Settings.from_env()
    redis = Redis.from_url(settings.redis_url)
    queues = [Queue(name, connection=redis) for name in (args.queues or [settings.queue_name])]
    if not args.cold:  # import the job's libraries once, before RQ forks a work-horse per job
        preload()
    worker = worker_class(args.simple)(queues, connection=redis, name=args.name)
    worker.work(burst=args.burst, with_scheduler=False)
    return 0


def _import_source(args: argparse.Namespace, settings: Settings):
    """The folder to upload, or the Local files / S3 storage to register (``ml_backend.labelstudio.storage``)."""
    from ml_backend.labelstudio.storage import ImportErrorWithHint, LocalFilesSource, S3Source

    storage = args.storage or ("s3" if args.dataset.startswith("s3://") else "upload")
    if storage == "upload":
        return args.dataset
    if storage == "local-files":
        return LocalFilesSource.create(args.dataset, args.document_root or settings.local_files_document_root,
                                       args.ls_path)
    if not args.dataset.startswith("s3://"):
        raise ImportErrorWithHint(f"--storage s3 takes an s3://bucket/prefix dataset, not {args.dataset!r}")
    return S3Source.parse(args.dataset, endpoint=args.s3_endpoint or settings.s3_endpoint,
                          region=settings.aws_default_region, access_key_id=settings.aws_access_key_id,
                          secret_access_key=settings.aws_secret_access_key, session_token=settings.aws_session_token,
                          presign=not args.no_presign)


def _import(args: argparse.Namespace) -> int:
    from ml_backend.labelstudio.importer import ImportErrorWithHint, import_dataset

    settings = Settings.from_env()
    api_key = args.api_key or settings.label_studio_api_key
    if not api_key:
        print("error: give --api-key or set LABEL_STUDIO_API_KEY", file=sys.stderr)
        return 2
    try:
        report = import_dataset(
            _import_source(args, settings), args.url, api_key, title=args.title, backend_url=args.backend_url,
            progress=not args.quiet, predict=not args.no_predict, task_batch=max(1, args.batch),
            val_fraction=args.val_fraction,
        )
    except ImportErrorWithHint as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"project {report.project_id} ({len(report.classes)} classes): {report.imported} imported, "
        f"{report.skipped_existing} already there, {len(report.unreadable)} unreadable"
        + (f"; images in place ({report.storage} storage {report.storage_id})" if report.storage_id else "")
        + (f"; ML backend {report.ml_backend_id} connected, model version {report.model_version}" if report.ml_backend_id else "")
    )
    print(report.val)
    if report.input_size is not None:
        print(f"model input: {report.input_size.size} px ({report.input_size.reason})")
    print(f"open {args.url.rstrip('/')}/projects/{report.project_id}/data")
    return 1 if report.unreadable else 0


def _fetch_weights(args: argparse.Namespace) -> int:
    """Download the named weights (``MODEL_WEIGHTS`` for ``MODEL_ARCH``, ``SEGMENTATION_WEIGHTS`` when a name)
    into the torch hub cache, to copy to a machine without internet."""
    from pathlib import Path

    from training import pretrained

    settings = Settings.from_env()
    wanted = []
    for name in args.names or [settings.model_weights, settings.segmentation_weights and str(settings.segmentation_weights)]:
        if not name or (Path(name).is_file() or not pretrained.looks_like_name(name)):
            continue
        seg = "maskrcnn" in name.lower() or name.lower() == "coco" or name == str(settings.segmentation_weights)
        try:
            wanted.append(pretrained.by_full_name(name) if "." in name else
                          pretrained.resolve(settings.segmentation_arch, name, "SEGMENTATION_WEIGHTS") if seg
                          else pretrained.for_arch(settings.model_arch, name))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    if not wanted:
        print("error: no weights named (give names, or set MODEL_WEIGHTS / SEGMENTATION_WEIGHTS)", file=sys.stderr)
        return 1
    for weights in wanted:
        try:
            pretrained.state_dict(weights)
        except pretrained.WeightsUnavailableError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{weights.name}: {weights.file}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ml_backend.local.demo import run_demo

    return run_demo(args)


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(prog="robustar", description=__doc__)
    parser.add_argument("--log-level", default=settings.log_level)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the ML backend HTTP server")
    p.add_argument("--host", default=settings.host)
    p.add_argument("--port", type=int, default=settings.port)
    p.set_defaults(func=_serve)

    p = sub.add_parser("worker", help="run an RQ worker for training jobs")
    p.add_argument("queues", nargs="*", help="queue names (default: RQ_QUEUE or 'robustar')")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.add_argument("--simple", action="store_true", help="run jobs in the worker process (no fork)")
    p.add_argument("--name", default=None)
    p.add_argument("--cold", action="store_true",
                   help="do not preload the job's libraries (each job's work-horse imports them: ~5-10 s more per job)")
    p.set_defaults(func=_worker)

    from ml_backend.jobs.train_cli import add_parser as add_train_parser

    add_train_parser(sub)

    p = sub.add_parser("import", help="import an ImageFolder dataset into a Label Studio project")
    p.add_argument("dataset", help="folder with train/<class>/*, test/<class>/* (and val/<class>/*), or s3://bucket/prefix with the same layout")
    p.add_argument("--storage", choices=("upload", "local-files", "s3"), default=None,
                   help="upload the images (default for a folder), or register the folder as Local files storage / the "
                        "bucket as S3 storage and reference the images in place (docs/storage.md)")
    p.add_argument("--document-root", default=None,
                   help="local-files: Label Studio's LOCAL_FILES_DOCUMENT_ROOT (default: that variable)")
    p.add_argument("--ls-path", default=None,
                   help="local-files: the dataset folder as Label Studio sees it, when mounted elsewhere there")
    p.add_argument("--s3-endpoint", default=None, help="s3: an S3-compatible endpoint URL (default: S3_ENDPOINT; unset: AWS)")
    p.add_argument("--no-presign", action="store_true",
                   help="s3: Label Studio streams the images itself instead of redirecting to presigned URLs")
    p.add_argument("--batch", type=int, default=500, help="tasks per import call (each batch is committed; a re-run resumes)")
    p.add_argument("--url", default=settings.label_studio_url or "http://localhost:8080")
    p.add_argument("--api-key", default=None, help="Label Studio legacy API token (or LABEL_STUDIO_API_KEY)")
    p.add_argument("--title", default="Robustar")
    p.add_argument("--backend-url", default=settings.public_url, help="ML backend URL to connect")
    p.add_argument("--no-predict", action="store_true", help="do not fetch predictions for every task now")
    from ml_backend.labelstudio.val_split import VAL_FRACTION

    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                   help="without a val/ folder: this part of each class's test images becomes the val split, which "
                        "decides (publish gate, kept epoch, suspicion ranking); test is only reported. 0: no val")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_import)

    p = sub.add_parser("fetch-weights", help="download named pretrained weights into the torch hub cache (TORCH_HOME)")
    p.add_argument("names", nargs="*", help="e.g. imagenet (for MODEL_ARCH), ResNet50_Weights.IMAGENET1K_V2, coco "
                                            "(for SEGMENTATION_ARCH); default: MODEL_WEIGHTS and SEGMENTATION_WEIGHTS")
    p.set_defaults(func=_fetch_weights)

    p = sub.add_parser("demo", help="run Label Studio + backend + worker locally with a generated demo project")
    p.add_argument("--data-dir", default=".robustar/demo", help="dataset, Label Studio, Redis, models and logs/ live here")
    p.add_argument("--ls-port", type=int, default=None, help="Label Studio port (default: the data dir's last, else 8080)")
    p.add_argument("--backend-port", type=int, default=None, help="ML backend port (default: the data dir's last, else 9090)")
    p.add_argument("--simulate-annotations", type=int, default=0, metavar="N", help="paint N training images via the SDK")
    p.add_argument("--no-wait", action="store_true", help="set everything up, print the URLs and stop again")
    p.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the SDK logs every request at INFO
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
