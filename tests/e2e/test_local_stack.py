"""The README's main command, run as a user runs it: ``robustar demo`` (what ``make demo`` starts).

The stack starts in a subprocess with its own free ports and data dir; the test waits for its status
line and for health, asks Label Studio for a prediction of a new task (Label Studio calls the
backend's /predict) and checks it is stored, then stops the stack with SIGINT (as Ctrl-C does). The
first start has no Redis at REDIS_URL, so the demo runs a private redis-server; the second start of
the same data dir gets a Redis that was already running and is stopped with SIGTERM. After each stop
no process the command started is left, and the already-running Redis is still up, data intact.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from redis import Redis

from ml_backend.local.demo import READY_LINE
from ml_backend.local.stack import start_private_redis
from devkit.servers import free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
START_TIMEOUT = 600  # a fresh data dir on a loaded 2-core machine: LS migrations + 135 predictions


# ------------------------------------------------------------------ processes, from /proc


def proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, start time in clock ticks, command line) of every process."""
    table = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] == "Z":
                continue  # a zombie holds no resources; its parent reaps it
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            table[int(d.name)] = (int(fields[1]), int(fields[19]), cmd)
        except (OSError, ValueError, IndexError):
            continue
    return table


def descendants(root: int) -> dict[int, tuple[int, str]]:
    """Every live process below ``root``: pid -> (start time, command line)."""
    table = proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out[pid] = table[pid][1:]
        todo.extend(children.get(pid, []))
    return out


def still_running(procs: dict[int, tuple[int, str]]) -> dict[int, str]:
    """Those of ``procs`` that are still alive (same pid *and* start time: a reused pid does not count)."""
    table = proc_table()
    return {pid: cmd for pid, (start, cmd) in procs.items() if pid in table and table[pid][1] == start}


def mentioning(text: str) -> dict[int, str]:
    """Live processes whose command line contains ``text`` (orphans of a stack would show here)."""
    return {pid: cmd for pid, (_, _, cmd) in proc_table().items() if text in cmd and pid != os.getpid()}


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------ the demo as a subprocess


class Demo:
    """``robustar demo`` in its own session (Ctrl-C in a terminal reaches only the foreground group)."""

    def __init__(self, data_dir: Path, env: dict[str, str], *options: str) -> None:
        self.cmd = [str(BIN / "robustar"), "--log-level", "warning", "demo", "--data-dir", str(data_dir), *options]
        self.env = {**os.environ, **env}
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Demo":
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if line.startswith(READY_LINE):
                    return line
            if self.proc.poll() is not None:
                time.sleep(0.5)  # let the reader catch up
                pytest.fail(f"robustar demo exited with {self.proc.returncode} before it was up:\n{self.output[-4000:]}")
            time.sleep(0.5)
        pytest.fail(f"robustar demo not up after {timeout:.0f}s:\n{self.output[-4000:]}")

    def stop(self, sig: int, timeout: float = 120) -> int:
        os.killpg(self.proc.pid, sig)  # the demo's own group only: its children run in their own sessions
        return self.proc.wait(timeout)

    def kill_everything(self, procs: dict[int, tuple[int, str]]) -> None:
        """Clean-up after a failed test: the demo, then whatever it had started."""
        if self.proc.poll() is None:
            try:
                self.stop(signal.SIGTERM, 60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in still_running(procs):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def predict_new_task_through_label_studio(ls_url: str, project_id: int, token: str, key: str) -> dict:
    """Add a task to the demo project and let Label Studio get its prediction from the backend."""
    http = requests.Session()
    http.headers["Authorization"] = f"Token {token}"
    tasks = http.get(f"{ls_url}/api/tasks", params={"project": project_id, "page_size": 1000}, timeout=60).json()["tasks"]
    template = next(t for t in tasks if t["data"].get("split") == "test")
    r = http.post(f"{ls_url}/api/projects/{project_id}/import", json=[{"data": {**template["data"], "key": key}}], timeout=60)
    assert r.status_code in (200, 201), r.text
    tasks = http.get(f"{ls_url}/api/tasks", params={"project": project_id, "page_size": 1000}, timeout=60).json()["tasks"]
    (task,) = [t for t in tasks if t["data"].get("key") == key]
    assert http.get(f"{ls_url}/api/predictions", params={"task": task["id"]}, timeout=30).json() == []
    # the Data Manager's "Retrieve Predictions": Label Studio -> backend /predict -> stored prediction
    r = http.post(f"{ls_url}/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project_id},
                  json={"selectedItems": {"all": False, "included": [task["id"]]}}, timeout=120)
    assert r.status_code == 200, r.text
    stored = http.get(f"{ls_url}/api/predictions", params={"task": task["id"]}, timeout=30).json()
    assert len(stored) == 1, stored
    return stored[0]


@pytest.mark.e2e
def test_local_stack_starts_predicts_and_stops_cleanly(tmp_path_factory, redis_base_url):
    root = tmp_path_factory.mktemp("demo")
    data_dir = root / "stack"
    # the machine's Redis (or the test session's) must come through untouched either way
    shared = Redis.from_url(f"{redis_base_url}/0")
    shared_before = shared.info("server")["run_id"]
    # a Redis that runs before the demo and is handed to it on the second start: used, left running
    existing_proc, existing_url = start_private_redis(root / "existing-redis", root / "existing-redis.log")
    existing = Redis.from_url(existing_url)
    existing_before = existing.info("server")["run_id"]
    existing.set("sentinel", "untouched")
    common = {"MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "64"}

    timings = {}
    ls_port, backend_port = free_port(), free_port()
    runs = [  # (name, how it is stopped, REDIS_URL, options)
        # a fresh data dir, no Redis at REDIS_URL: the demo starts a private redis-server and stops it again
        ("fresh data dir", signal.SIGINT, f"redis://127.0.0.1:{free_port()}/0",
         ["--ls-port", str(ls_port), "--backend-port", str(backend_port)]),
        # the same command again (the data dir's ports are reused), with a Redis already running
        ("second start", signal.SIGTERM, existing_url, []),
    ]
    try:
        for run, sig, redis_url, options in runs:
            demo = Demo(data_dir, {**common, "REDIS_URL": redis_url}, *options).start()
            procs: dict[int, tuple[int, str]] = {}
            try:
                ready = demo.wait_ready(START_TIMEOUT)
                timings[run] = time.monotonic() - demo.t0
                procs = descendants(demo.proc.pid)
                cmds = " | ".join(cmd for _, cmd in procs.values())
                for part in ("label-studio", "robustar serve", "robustar worker"):
                    assert part in cmds, f"{part} is not running under the demo: {cmds}"
                private_redis = redis_url != existing_url
                assert ("redis-server" in cmds) == private_redis, cmds

                ls_url = f"http://127.0.0.1:{ls_port}"
                backend_url = f"http://127.0.0.1:{backend_port}"
                assert f"{ls_url}/projects/" in ready and backend_url in ready, ready
                assert (existing_url in ready) != private_redis, ready
                project_id = int(re.search(r"/projects/(\d+)/data", ready).group(1))
                token = re.search(r"API token (\S+?)\)", demo.output).group(1)
                assert requests.get(f"{ls_url}/health", timeout=10).json()["status"] == "UP"
                assert requests.get(f"{backend_url}/health", timeout=10).json()["status"] == "UP"
                assert {p.name for p in (data_dir / "logs").iterdir()} >= {
                    "redis.log", "label-studio.log", "backend.log", "worker.log"}

                prediction = predict_new_task_through_label_studio(ls_url, project_id, token, key=f"e2e/{run}.png")
                assert prediction["model_version"] == "v0"
                assert any(r.get("type") == "choices" for r in prediction["result"]), prediction["result"]

                assert demo.stop(sig) == 0, demo.output[-3000:]
            finally:
                demo.kill_everything(procs)
            assert "stopping" in demo.output
            left = still_running(procs)
            assert not left, f"{signal.Signals(sig).name} left processes behind: {left}"
            assert not mentioning(str(data_dir)), mentioning(str(data_dir))
            assert not listening(ls_port) and not listening(backend_port)

        # the Redis that was running before was used (the worker registered there) and is still running, data intact
        assert existing_proc.alive() and existing.info("server")["run_id"] == existing_before
        assert existing.get("sentinel") == b"untouched"
        assert existing.dbsize() > 1, "the second start did not use the running Redis"
        assert shared.info("server")["run_id"] == shared_before
    finally:
        existing_proc.stop()
    print("\nrobustar demo start-up (command start -> status line): "
          + ", ".join(f"{run} {t:.1f}s" for run, t in timings.items()))


def test_demo_data_dir_keeps_its_backend_port(tmp_path):
    """The demo project's tasks link heatmaps to the backend URL: another port for the same data dir is refused."""
    (tmp_path / "stack").mkdir()
    (tmp_path / "stack" / "demo.json").write_text('{"ls_port": 18080, "backend_port": 19090}')
    r = subprocess.run([str(BIN / "robustar"), "demo", "--data-dir", str(tmp_path / "stack"), "--backend-port", "19091"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--backend-port 19090" in r.stderr, r.stdout + r.stderr


def test_demo_fails_clearly_on_a_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
        r = subprocess.run([str(BIN / "robustar"), "demo", "--data-dir", str(tmp_path / "stack"), "--ls-port", str(port),
                            "--backend-port", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"port {port}" in r.stderr and "--ls-port" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "stack" / "redis").exists(), "nothing may start before the ports are checked"
    assert not mentioning(str(tmp_path))
