"""Run our backend (``robustar serve``) as a real subprocess for end-to-end tests."""

from __future__ import annotations

from pathlib import Path

from ml_backend.local.stack import BIN, ManagedProcess, backend_process
from devkit.servers import free_port

__all__ = ["BIN", "BackendProcess"]


class BackendProcess(ManagedProcess):
    """``robustar serve`` on a free port with the given environment; ``stop()`` kills its process group.

    Health is polled with basic auth when ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` are in ``env``.
    """

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None, timeout: float = 60) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.timeout = timeout
        template = backend_process(self.port, env, log_path)
        super().__init__(template.name, template.cmd, log_path, env)

    def start(self) -> "BackendProcess":
        super().start()
        self.wait_http(self.url + "/health", self.timeout)
        return self

    def __enter__(self) -> "BackendProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
