"""Stand-ins the tests (and benchmarks) run against: free ports, a private ``redis-server``, a file
server that checks Label Studio's ``Token`` auth, and a fake Label Studio API for the training job.

All of them are real servers on 127.0.0.1, so the product talks to them over its ordinary clients.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from redis import Redis

LS_TOKEN = "0123456789abcdef0123456789abcdef01234567"  # the API key FakeLabelStudio accepts by default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# redis-server


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    try:
        with Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout) as conn:
            return bool(conn.ping())
    except Exception:
        return False


def start_redis_server(workdir: Path, port: int | None = None, timeout: float = 10) -> tuple[subprocess.Popen, str]:
    """Start ``redis-server`` on 127.0.0.1 (no persistence, files in ``workdir``) and wait until it answers.

    Returns the process and its ``redis://127.0.0.1:<port>`` URL (no DB number). ``port`` restarts a
    server on the port a stopped one had. Raises ``RuntimeError`` if the executable is missing or the
    server does not come up within ``timeout`` seconds.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server executable not found")
    port = port or free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if redis_answers(url + "/0", 0.2):
            return proc, url
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"redis-server on port {port} did not start")


# --------------------------------------------------------------------------------------------------
# HTTP servers


class LocalServer:
    """A ``ThreadingHTTPServer`` on a free 127.0.0.1 port, served from a daemon thread while in ``with``."""

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FileServer(LocalServer):
    """Serves ``files`` (URL path -> bytes) as Label Studio serves task images: only with ``Token <token>``
    (401 otherwise, 404 for an unknown path). HTTP/1.1 keep-alive, as Label Studio's server. Every
    request is recorded in ``requests`` as ``(path, Authorization header)``."""

    def __init__(self, files: dict[str, bytes], token: str) -> None:
        self.files, self.token = files, token
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each response waits ~40 ms for a delayed ACK

            def do_GET(self):  # noqa: N802
                auth = self.headers.get("Authorization")
                outer.requests.append((self.path, auth))
                ok = auth == f"Token {outer.token}"
                body = outer.files.get(self.path) if ok else None
                self.send_response(401 if not ok else 200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._serve(Handler)


class FakeLabelStudio(LocalServer):
    """Serves the Label Studio API paths the training job uses (project, export, images, predictions,
    project PATCH, task PATCH), token-checked, and records every request (``requests``), pushed prediction
    (``predictions``), project PATCH (``patches``) and task PATCH (``task_patches``)."""

    def __init__(self, tasks: list[dict], files: dict[str, bytes], label_config: str, project_id: int = 1,
                 fail_predictions: bool = False, token: str = LS_TOKEN):
        self.project = {  # the fields of GET /api/projects/<id> the job reads, plus a few for realism
            "id": project_id, "title": "Robustar", "label_config": label_config, "model_version": "Robustar",
            "task_number": len(tasks), "show_collab_predictions": True, "maximum_annotations": 1,
            "created_by": {"id": 1, "first_name": "", "last_name": "", "email": "admin@example.com", "avatar": None},
        }
        self.tasks, self.files, self.pid, self.token = tasks, files, project_id, token
        self.fail_predictions = fail_predictions
        self.requests: list[tuple[str, str, str | None]] = []
        self.predictions: list[dict] = []
        self.patches: list[dict] = []
        self.task_patches: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body=None, ctype="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"null")

            def _route(self, method):
                url = urlparse(self.path)
                path = url.path.rstrip("/")
                outer.requests.append((method, self.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != f"Token {outer.token}":
                    return self._send(401, {"detail": "Authentication credentials were not provided."})
                proj = f"/api/projects/{outer.pid}"
                if method == "GET" and path == proj:
                    return self._send(200, outer.project)
                if method == "GET" and path == proj + "/export":
                    q = parse_qs(url.query)
                    if q.get("download_all_tasks") != ["true"]:
                        return self._send(200, [t for t in outer.tasks if t["annotations"]])
                    return self._send(200, outer.tasks)
                if method == "GET" and url.path in outer.files:
                    return self._send(200, outer.files[url.path], "image/png")
                if method == "POST" and path in (proj + "/import/predictions", "/api/predictions"):
                    body = self._body()
                    if outer.fail_predictions:
                        return self._send(500, {"detail": "boom"})
                    items = body if isinstance(body, list) else [body]
                    outer.predictions.extend(items)
                    if isinstance(body, list):
                        return self._send(201, {"created": len(items)})
                    return self._send(201, {"id": len(outer.predictions), **body})
                if method == "PATCH" and path == proj:
                    body = self._body()
                    outer.patches.append(body)
                    outer.project.update(body)
                    return self._send(200, outer.project)
                task = next((t for t in outer.tasks if path == f"/api/tasks/{t['id']}"), None)
                if method == "PATCH" and task is not None:  # the worker's suspicion column (task data)
                    body = self._body()
                    outer.task_patches.append({"id": task["id"], **body})  # recorded; the export stays as given
                    return self._send(200, {**task, **body})
                return self._send(404, {"detail": "not found"})

            def do_GET(self):  # noqa: N802
                self._route("GET")

            def do_POST(self):  # noqa: N802
                self._route("POST")

            def do_PATCH(self):  # noqa: N802
                self._route("PATCH")

            def log_message(self, *args):
                pass

        self._serve(Handler)
