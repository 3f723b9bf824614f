"""``robustar`` console command: serve | worker | train | import | demo."""

from __future__ import annotations

import argparse
import logging
import sys

from ml_backend.http_limits import uvicorn_limits
from ml_backend.settings import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ml_backend.server import build_app

    settings = Settings.from_env()
    uvicorn.run(build_app(), host=args.host, port=args.port, log_level=args.log_level,
                **uvicorn_limits(settings))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from redis import Redis
    from rq import Queue, SimpleWorker, Worker

    settings = Settings.from_env()
    redis = Redis.from_url(settings.redis_url)
    queues = [Queue(name, connection=redis) for name in (args.queues or [settings.queue_name])]
    worker_cls = SimpleWorker if args.simple else Worker
    worker = worker_cls(queues, connection=redis, name=args.name)
    worker.work(burst=args.burst, with_scheduler=False)
    return 0


def _import(args: argparse.Namespace) -> int:
    from ml_backend.importer import ImportErrorWithHint, import_dataset

    api_key = args.api_key or Settings.from_env().label_studio_api_key
    if not api_key:
        print("error: give --api-key or set LABEL_STUDIO_API_KEY", file=sys.stderr)
        return 2
    try:
        report = import_dataset(
            args.dataset, args.url, api_key, title=args.title, backend_url=args.backend_url,
            progress=not args.quiet, predict=not args.no_predict,
        )
    except ImportErrorWithHint as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"project {report.project_id} ({len(report.classes)} classes): {report.imported} imported, "
        f"{report.skipped_existing} already there, {len(report.unreadable)} unreadable"
        + (f"; ML backend {report.ml_backend_id} connected, model version {report.model_version}" if report.ml_backend_id else "")
    )
    print(f"open {args.url.rstrip('/')}/projects/{report.project_id}/data")
    return 1 if report.unreadable else 0


def _demo(args: argparse.Namespace) -> int:
    from ml_backend.demo import run_demo

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
    p.set_defaults(func=_worker)

    from ml_backend.train_cli import add_parser as add_train_parser

    add_train_parser(sub)

    p = sub.add_parser("import", help="import an ImageFolder dataset into a Label Studio project")
    p.add_argument("dataset", help="folder with train/<class>/* and test/<class>/*")
    p.add_argument("--url", default=settings.label_studio_url or "http://localhost:8080")
    p.add_argument("--api-key", default=None, help="Label Studio legacy API token (or LABEL_STUDIO_API_KEY)")
    p.add_argument("--title", default="Robustar")
    p.add_argument("--backend-url", default=settings.public_url, help="ML backend URL to connect")
    p.add_argument("--no-predict", action="store_true", help="do not fetch predictions for every task now")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_import)

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
