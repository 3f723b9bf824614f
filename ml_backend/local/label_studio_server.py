"""Run a real Label Studio 1.23.2 server as a subprocess (test fixtures, ``robustar demo``).

Label Studio's dependencies clash with ours, so it lives in its own venv (``ROBUSTAR_LS_VENV`` or
``<repo>/.venv-ls``). The server gets a fixed admin user and legacy API token, SQLite, local-files
serving and the settings the ML backend needs (see ``shared/ls-protocol/README.md``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping

import requests

from ml_backend.settings import Settings, process_environment
from ml_backend.local.stack import free_port, port_busy
from training.checkpoints import pid_alive
from training.files import atomic_path

LS_VERSION = "1.23.2"
REPO_ROOT = Path(__file__).resolve().parents[2]  # ml_backend/local/ -> the repository
DEFAULT_USERNAME = "admin@example.com"
DEFAULT_PASSWORD = "admin12345"
DEFAULT_TOKEN = "0123456789abcdef0123456789abcdef01234567"  # legacy token, 5 < len <= 40


def default_venv() -> Path:
    """The Label Studio venv: env ``ROBUSTAR_LS_VENV`` or ``<repo>/.venv-ls``."""
    return Settings.from_env().ls_venv or REPO_ROOT / ".venv-ls"


def ensure_label_studio(venv: Path | None = None) -> Path:
    """Return the ``label-studio`` executable in ``venv``, creating the venv and installing it if missing."""
    venv = (Path(venv) if venv is not None else default_venv()).absolute()
    exe = venv / "bin" / "label-studio"
    if exe.exists():
        return exe
    steps = [
        [sys.executable, "-m", "venv", str(venv)],  # this interpreter (python3), not a shim on PATH
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"label-studio=={LS_VERSION}"],
    ]
    for cmd in steps:
        print(f"[ls_server] {' '.join(cmd)}", flush=True)
        try:
            subprocess.run(cmd, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise RuntimeError(f"could not install label-studio=={LS_VERSION} into {venv}: {e}") from e
    if not exe.exists():
        raise RuntimeError(f"label-studio=={LS_VERSION} installed into {venv}, but {exe} is missing")
    print(f"[ls_server] installed label-studio=={LS_VERSION} into {venv}", flush=True)
    return exe


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` (any address), from /proc/net/tcp{,6}."""
    inodes: set[str] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "0A":  # 0A = LISTEN
                inodes.add(f[9])
    return inodes


def _pid_listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` owns a socket listening on ``port``; None if /proc can't tell."""
    fd_dir = Path(f"/proc/{pid}/fd")
    if not fd_dir.is_dir():
        return None
    wanted = {f"socket:[{i}]" for i in _listening_inodes(port)}
    try:
        return any(os.readlink(fd) in wanted for fd in fd_dir.iterdir())
    except OSError:
        return None


class LabelStudioError(RuntimeError):
    """Label Studio failed to start or to answer as expected."""


class LabelStudioServer:
    """A ``label-studio start`` subprocess in its own process group; use as a context manager.

    Attributes: ``url``, ``port``, ``token``, ``username``, ``password``, ``data_dir``, ``log_path``.

    With ``use_template`` (default), a fresh ``data_dir`` starts from a copy of a migrated SQLite
    database cached in the venv (same user/password/token), which cuts start-up from ~30 s to ~3 s;
    the first fresh start creates that template.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        token: str = DEFAULT_TOKEN,
        venv: Path | None = None,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 300.0,
        use_template: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.username, self.password, self.token = username, password, token
        self.venv = (Path(venv) if venv is not None else default_venv()).absolute()
        self.log_path = Path(log_path) if log_path is not None else self.data_dir / "label-studio.log"
        self.extra_env = dict(env or {})
        self.timeout = timeout
        self.use_template = use_template and not {"DATABASE_NAME", "DJANGO_DB"} & set(self.extra_env)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def db_path(self) -> Path:
        """The server's SQLite database."""
        return self.data_dir / "label_studio.sqlite3"

    @property
    def template_path(self) -> Path:
        """Cached migrated database for this Label Studio version and user/password/token."""
        installed = sorted(p.name for p in self.venv.glob("lib/python*/site-packages/label_studio-*.dist-info"))
        parts = [*installed, self.username, self.password, self.token]
        key = hashlib.sha256("\0".join(parts).encode()).hexdigest()
        return self.venv / "robustar-templates" / f"ls-{LS_VERSION}-{key[:16]}.sqlite3"

    def environment(self) -> dict[str, str]:
        """The process environment for the server."""
        drop = ("LABEL_STUDIO_", "HEARTEX_", "DJANGO_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        env = process_environment(drop_prefixes=drop)  # ours must not leak into LS
        env.update(
            PYTHONUNBUFFERED="1",  # so the log shows start-up messages (e.g. a port move) at once
            DJANGO_DB="sqlite",
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            COLLECT_ANALYTICS="false",
            LATEST_VERSION_CHECK="false",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
            LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=self.password,
            LABEL_STUDIO_USER_TOKEN=self.token,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            LABEL_STUDIO_HOST=self.url,
            LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(self.data_dir / "files"),
            ML_BLOCK_LOCAL_IP="false",
            SSRF_PROTECTION_ENABLED="false",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> "LabelStudioServer":
        """Start the server and wait until it is healthy on ``self.port`` and the token works."""
        if self.proc is not None:
            raise LabelStudioError("already started")
        exe = self.venv / "bin" / "label-studio"
        if not exe.exists():
            raise LabelStudioError(f"{exe} not found; call ensure_label_studio({str(self.venv)!r}) first")
        if port_busy(self.port):
            raise LabelStudioError(f"port {self.port} is already in use")
        fresh = not self.db_path.exists()
        (self.data_dir / "files").mkdir(parents=True, exist_ok=True)
        if fresh and self.use_template and self.template_path.is_file():
            shutil.copyfile(self.template_path, self.db_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        cmd = [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--enable-legacy-api-token"]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=self.environment(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.data_dir, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        if fresh and self.use_template and not self.template_path.is_file():
            self._save_template()
        return self

    def _save_template(self) -> None:
        """Snapshot the just-migrated database (SQLite backup API, atomic rename); failures are ignored."""
        try:
            with atomic_path(self.template_path) as tmp:
                src, dst = sqlite3.connect(self.db_path), sqlite3.connect(tmp)
                try:
                    src.backup(dst)
                finally:
                    src.close()
                    dst.close()
        except (OSError, sqlite3.Error) as e:
            print(f"[ls_server] could not save DB template {self.template_path}: {e}", file=sys.stderr)

    def _fail(self, msg: str) -> LabelStudioError:
        return LabelStudioError(f"Label Studio at {self.url}: {msg}\n--- last 40 lines of {self.log_path} ---\n"
                                + self.log_tail())  # fmt: skip

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines the server logged since this start."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-n:])

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.timeout
        moved = f"Port {self.port} is in use"
        while True:
            if self.proc.poll() is not None:
                raise self._fail(f"process exited with code {self.proc.returncode} during start-up")
            if moved in self.log_tail(1000):
                raise self._fail(f"port {self.port} was busy and Label Studio moved to another port")
            try:
                r = requests.get(f"{self.url}/health", timeout=5)
                if r.ok and r.json().get("status") == "UP":
                    break
            except (requests.RequestException, ValueError):
                pass
            if time.monotonic() > deadline:
                raise self._fail(f"not healthy after {self.timeout:.0f} s")
            time.sleep(0.5)
        if _pid_listens_on(self.proc.pid, self.port) is False:
            raise self._fail(f"something else answers on port {self.port}; our process does not listen there")
        r = requests.get(f"{self.url}/api/current-user/whoami", headers=self.headers, timeout=30)
        if r.status_code != 200 or r.json().get("email") != self.username:
            raise self._fail(f"token check failed: GET /api/current-user/whoami -> {r.status_code} {r.text[:200]}")

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers that authenticate as the admin user."""
        return {"Authorization": f"Token {self.token}"}

    @property
    def pid(self) -> int | None:
        """Process id (= process group id) of the server, or None if not started."""
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Terminate the server's whole process group: SIGTERM, wait 15 s, then SIGKILL."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            if _wait_group_gone(self.proc, pgid, wait):
                break
        else:
            print(f"[ls_server] process group {pgid} still alive after SIGKILL", file=sys.stderr)
        self.proc.poll()
        self.proc = None

    def client(self) -> Any:
        """A ``label_studio_sdk.LabelStudio`` client authenticated with the legacy token."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.token)

    def __enter__(self) -> "LabelStudioServer":
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def process_group_alive(pgid: int) -> bool:
    """Whether any process is left in process group ``pgid`` (signal 0 to ``-pgid`` reaches the group)."""
    return pid_alive(-pgid)


def _wait_group_gone(proc: subprocess.Popen[bytes], pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so it does not linger as a zombie
        if not process_group_alive(pgid):
            return True
        time.sleep(0.1)
    proc.poll()
    return not process_group_alive(pgid)
