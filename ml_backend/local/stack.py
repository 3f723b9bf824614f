"""Run the local stack's processes: a private Redis when none answers, the backend, the workers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from redis import Redis

from ml_backend.settings import process_environment

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_busy(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``host:port`` or the port cannot be bound there."""
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex((host, port)) == 0:
            return True
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT left by our last run is not "busy"
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def redis_answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except Exception:
        return False


class ManagedProcess:
    """A child process in its own process group, logging to a file; ``stop()`` ends the whole group."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.cmd, self.log_path = name, cmd, log_path
        self.env = process_environment(env)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def wait_http(self, url: str, timeout: float = 60) -> None:
        """Wait until ``url`` answers 2xx; fail with the log's tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); log {self.log_path}:\n{self.tail()}")
            try:
                user, password = self.env.get("BASIC_AUTH_USER"), self.env.get("BASIC_AUTH_PASS")
                if requests.get(url, timeout=1, auth=(user, password) if user and password else None).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} did not answer {url} within {timeout:.0f}s; log {self.log_path}:\n{self.tail()}")


def start_private_redis(data_dir: Path, log_path: Path, started: list | None = None) -> tuple[ManagedProcess, str]:
    """Start ``redis-server`` on a free loopback port (AOF on, data in ``data_dir``).

    The process is appended to ``started`` before it is launched, so a caller that is interrupted
    while Redis boots still stops it.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("no Redis answers at REDIS_URL and redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess(
        "redis", [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir), "--appendonly", "yes", "--save", ""],
        log_path,
    )
    if started is not None:
        started.append(proc)
    proc.start()
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while not redis_answers(url):
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"private redis-server did not start:\n{proc.tail()}")
        time.sleep(0.1)
    return proc, url


def backend_process(port: int, env: dict[str, str], log_path: Path) -> ManagedProcess:
    return ManagedProcess("backend", [str(BIN / "robustar"), "serve", "--host", "127.0.0.1", "--port", str(port)], log_path, env)


def worker_process(name: str, env: dict[str, str], log_path: Path) -> ManagedProcess:
    return ManagedProcess(name, [str(BIN / "robustar"), "worker", "--name", f"{name}-{os.getpid()}"], log_path, env)
