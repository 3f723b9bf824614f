"""Hosts an attacker (or a slow network) puts in front of the backend, for tests and benchmarks: a host
that drips its answer a byte at a time, and a host that answers every request as a Label Studio would
(any project, any model version) and counts what it was asked."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

from devkit.servers import LocalServer


class DripServer(LocalServer):
    """Answers every GET 200 with ``size`` bytes, one every ``interval`` seconds, with a Content-Length or
    ``chunked``; counts the GETs (``requests``: their paths)."""

    def __init__(self, size: int = 10_000, interval: float = 2.0, chunked: bool = False) -> None:
        self.stop = threading.Event()
        self.requests: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                with outer._lock:
                    outer.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(size))
                self.end_headers()
                try:
                    for _ in range(size):
                        if outer.stop.wait(interval):
                            return
                        self.wfile.write(b"1\r\nx\r\n" if chunked else b"x")
                        self.wfile.flush()
                    if chunked:
                        self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self._serve(Handler)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        super().__exit__(*exc)


class ImpostorLabelStudio(LocalServer):
    """Answers every request 200 as a Label Studio would: ``GET /api/projects/<id>`` with ``model_version``
    (``v0`` unless given), images as a tiny PNG. ``requests`` records ``(method, path, Authorization)``."""

    def __init__(self, model_version: str = "v0", image: bytes = b"") -> None:
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, method: str) -> None:
                with outer._lock:
                    outer.requests.append((method, self.path, self.headers.get("Authorization")))
                if self.path.startswith("/api/projects/"):
                    pid = self.path.split("/")[3].split("?")[0]
                    body = json.dumps({"id": int(pid) if pid.isdigit() else 1, "model_version": model_version,
                                       "label_config": "<View/>"}).encode()
                    ctype = "application/json"
                else:
                    body, ctype = image, "image/png"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                self._answer("GET")

            def do_PATCH(self):  # noqa: N802
                self._answer("PATCH")

            def do_POST(self):  # noqa: N802
                self._answer("POST")

            def log_message(self, *args):
                pass

        self._serve(Handler)


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
