"""``robustar train``: the worker's training job as a command, for a cluster node or a reproducible run.

The tasks come from a Label Studio JSON export file (``--export``, with ``--label-config`` or the
project's config fetched by ``--project-id``) or from the project itself (``--project-id`` alone,
exported through label-studio-sdk like the worker). Images are fetched under the backend's fetch
policy (``ml_backend.labelstudio.fetch``: Label Studio URLs with ``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY``,
``data:`` URIs, ``file://`` under ``IMAGE_ROOT``). The version is written into
``--model-dir``/``project-<id>`` and published; the job summary (JSON) is printed on stdout.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains its shard with DistributedDataParallel
(``training.distributed``); rank 0 reads the export and sends it to the others, and alone publishes
the version, pushes predictions and prints the summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from ml_backend.settings import Settings

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a version from a Label Studio export file or project (torchrun: DDP)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", type=Path, default=None, help="Label Studio JSON export file (a list of tasks)")
    p.add_argument("--label-config", type=Path, default=None, help="the project's labeling config (XML file)")
    p.add_argument("--project-id", type=int, default=None,
                   help="Label Studio project: its export and config when no file is given; names the "
                        "store project-<id> (default 0 with --export)")
    p.add_argument("--model-dir", type=Path, default=None, help="model directory (default MODEL_DIR)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="OPTION=VALUE",
                   help="a job option, as the webhook's (epochs=5, noise_mode=noise, ...); TRAIN_* set defaults")
    p.add_argument("--output", type=Path, default=None, help="also write the summary (JSON) to this file")
    p.add_argument("--progress-file", type=Path, default=None,
                   help="append rank 0's progress states (and any rank's failure) as JSON lines (TRAIN_GPUS jobs)")
    p.add_argument("--job-id", default=None, help="the RQ job this run belongs to (named in the summary)")
    p.set_defaults(func=run)


def progress_file_sink(path: Path):
    """A ``Progress`` sink appending each state as one JSON line to ``path`` (read by ``ml_backend.jobs.launch``)."""

    def write(state: dict) -> None:
        with path.open("a") as f:
            f.write(json.dumps(state, default=str) + "\n")

    return write


def record_failure(path: Path | None, exc: BaseException) -> None:
    """Append ``{"phase": "failed", ...}`` with this rank's reason to the progress file (best effort)."""
    if path is None:
        return
    from training import distributed as dist

    reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    try:
        progress_file_sink(path)({"phase": "failed", "rank": dist.rank(), "world_size": dist.world_size(),
                                  "error": f"{type(exc).__name__}: {reason}", "value_error": isinstance(exc, ValueError)})
    except OSError:
        pass


def _options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {pair!r}: expected OPTION=VALUE")
        out[key.strip()] = value.strip()
    return out


def _read_export(args: argparse.Namespace, settings: Settings, client) -> tuple[str, list[dict]]:
    """(label config XML, export tasks) from the files given, or from Label Studio."""
    if args.label_config is not None:
        label_config = args.label_config.read_text()
    else:
        from ml_backend.labelstudio.client import fetch_project

        label_config = getattr(fetch_project(client, args.project_id), "label_config", None)
        if not label_config:
            raise ValueError(f"project {args.project_id} has no label config")
    if args.export is not None:
        tasks = json.loads(args.export.read_text())
        if not isinstance(tasks, list):
            raise ValueError(f"{args.export}: expected a Label Studio JSON export (a list of tasks)")
    else:
        from ml_backend.labelstudio.client import fetch_export

        tasks = fetch_export(client, args.project_id)
    return label_config, tasks


def train(args: argparse.Namespace, settings: Settings) -> dict:
    """Run the job for ``args``; the summary (rank 0's; another rank's short one under torchrun)."""
    from ml_backend.jobs.train_job import job_options, train_tasks
    from training import distributed as dist
    from training.checkpoints import CheckpointStore
    from training.progress import Progress

    if args.export is None and args.project_id is None:
        raise ValueError("give --export FILE (with --label-config or --project-id) or --project-id")
    if args.export is not None and args.label_config is None and args.project_id is None:
        raise ValueError("--export needs --label-config FILE or --project-id (to fetch the project's config)")
    if args.model_dir is not None:
        settings = dataclasses.replace(settings, model_dir=args.model_dir)
    opts = job_options(settings, _options(args.options))
    device = dist.init(settings.rank, settings.world_size, settings.local_rank, opts.torch_device())
    try:
        if device != opts.device:
            opts = dataclasses.replace(opts, device=device)
        client = None
        if args.project_id is not None and (args.export is None or args.label_config is None or opts.push_predictions):
            if settings.label_studio_url and settings.label_studio_api_key:
                from ml_backend.labelstudio.client import make_client

                client = make_client(settings.label_studio_url, settings.label_studio_api_key)
            elif args.export is None or args.label_config is None:
                raise ValueError("--project-id without files needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        project_id = args.project_id if args.project_id is not None else 0
        store = CheckpointStore(settings.model_dir, project_id)
        label_config, tasks = dist.broadcast(_read_export(args, settings, client) if dist.is_main() else None)
        progress_path = getattr(args, "progress_file", None)
        sink = progress_file_sink(progress_path) if progress_path is not None and dist.is_main() else None
        progress = Progress(sink, project_id=project_id, job_id=getattr(args, "job_id", None))
        return train_tasks(settings, store, project_id, label_config, tasks, opts, progress, client=client)
    except Exception as e:
        record_failure(getattr(args, "progress_file", None), e)
        raise
    finally:
        dist.shutdown()


def run(args: argparse.Namespace) -> int:
    from ml_backend.labelstudio.client import LabelStudioUnavailable

    settings = Settings.from_env()
    try:
        summary = train(args, settings)
    except (ValueError, OSError, LabelStudioUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not summary.get("rank", 0):  # rank 0 (or a single process) prints; under torchrun the others are quiet
        text = json.dumps(summary, indent=1, sort_keys=True, default=str)
        print(text)
        if args.output is not None:
            args.output.write_text(text + "\n")
    return 0
