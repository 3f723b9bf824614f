"""``TRAIN_GPUS=N``: the RQ job trains under ``torchrun --standalone --nproc_per_node=N`` (one process per
GPU, nccl; gloo on a machine without CUDA), running ``robustar train`` — the same code as the command.

The work-horse has already exported the project; it writes the export, the label config and the job
options into a private folder, starts torchrun in a new session and tails two files the child's rank 0
writes: ``progress.jsonl`` (one ``training.progress.Progress`` state a line; forwarded to the job's
sinks: RQ job meta, the model card) and ``summary.json`` (the job summary). Rank 0 publishes vN
atomically, builds the index and pushes the predictions, as in one process. A rank that fails appends
``{"phase": "failed", ...}`` with its reason; the job then raises that reason (a ``ValueError`` when
the rank's error was one, so the job is not retried). The child's log lines go to the worker's log.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ml_backend.settings import process_environment

log = logging.getLogger(__name__)

POLL_S = 0.2
DIST_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
             "TORCHELASTIC_RUN_ID")


class RankFailed(RuntimeError):
    """A process of the torchrun job failed (not a bad input: the job may be retried)."""


def torchrun_command(nproc: int, workdir: Path, project_id: int, options: dict, job_id: str | None) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N -m ml_backend.cli train ...``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "ml_backend.cli", "train", "--export", str(workdir / "export.json"),
           "--label-config", str(workdir / "config.xml"), "--project-id", str(project_id),
           "--output", str(workdir / "summary.json"), "--progress-file", str(workdir / "progress.jsonl")]
    if job_id:
        cmd += ["--job-id", job_id]
    for key, value in (options or {}).items():
        cmd += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    return cmd


def _relay(stream, tail: collections.deque) -> None:
    """Copy the child's output into this process's stderr (the worker log), keeping the last lines."""
    for line in iter(stream.readline, ""):
        tail.append(line.rstrip("\n"))
        sys.stderr.write(line)
    stream.close()


def _read_new(path: Path, offset: int) -> tuple[list[dict], int]:
    """The complete JSON lines of ``path`` after ``offset``, and the new offset."""
    if not path.is_file():
        return [], offset
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    states = []
    for line in data[:end].splitlines():
        try:
            states.append(json.loads(line))
        except ValueError:
            continue
    return states, offset + end


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the torchrun session (its agent stops the ranks), SIGKILL after 15 s."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def failure(code: int, failed: list[dict], tail: list[str]) -> Exception:
    """The job's exception: the lowest failing rank's reason (ValueError when its error was one), else the
    last error line of the output. (torchrun stops the other ranks when one fails, so which ranks got
    to report is a race; every rank that did is in ``failed``.)"""
    if failed:
        first = min(failed, key=lambda state: state.get("rank", 0))
        reason = f"rank {first.get('rank', '?')} of {first.get('world_size', '?')}: {first.get('error')}"
        return ValueError(reason) if first.get("value_error") else RankFailed(reason)
    errors = [ln.strip() for ln in tail if ln.strip().startswith("error:") or "Error: " in ln]
    errors = [ln for ln in errors if "ChildFailedError" not in ln] or [ln.strip() for ln in tail if ln.strip()][-1:]
    return RankFailed(f"torchrun exited with {code}: {errors[-1] if errors else 'no output'}")


def train_distributed(nproc: int, project_id: int, label_config: str, tasks: list[dict], options: dict,
                      sink: Callable[[dict], None] | None, job_id: str | None = None,
                      env: dict[str, str] | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """Run the job under torchrun with ``nproc`` processes; returns rank 0's summary.

    ``sink`` gets every progress state of rank 0; ``env`` adds variables to the child's environment
    (this process's, without torchrun's own). Raises ``ValueError`` / ``RankFailed`` with the reason.
    """
    with tempfile.TemporaryDirectory(prefix=f"robustar-ddp-p{project_id}-") as tmp:
        workdir = Path(tmp)
        (workdir / "export.json").write_text(json.dumps(tasks))
        (workdir / "config.xml").write_text(label_config)
        cmd = torchrun_command(nproc, workdir, project_id, options, job_id)
        child_env = process_environment(env)
        for name in DIST_VARS:
            child_env.pop(name, None)
        log.info("project %s: training under torchrun with %d processes", project_id, nproc)
        proc = subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, bufsize=1)
        tail: collections.deque = collections.deque(maxlen=200)
        relay = threading.Thread(target=_relay, args=(proc.stdout, tail), daemon=True)
        relay.start()
        offset, failed = 0, []
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                code = proc.poll()
                states, offset = _read_new(workdir / "progress.jsonl", offset)
                for state in states:
                    if state.get("phase") == "failed":
                        failed.append(state)
                    elif sink is not None:
                        sink(state)
                if code is not None:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"torchrun ran past {timeout_s:.0f}s")
                time.sleep(POLL_S)
        finally:
            _stop(proc)  # a job timeout or a kill of the work-horse stops every rank
            relay.join(5)
        if code != 0 or failed:
            raise failure(code, failed, list(tail))
        summary_path = workdir / "summary.json"
        if not summary_path.is_file():
            raise RankFailed(f"torchrun exited with 0 but rank 0 wrote no summary; last output: {list(tail)[-3:]}")
        return json.loads(summary_path.read_text())
