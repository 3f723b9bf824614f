"""Deployment files: docker-compose.yml, Dockerfile, .env.example, .dockerignore, docker/*.

No Docker engine is needed: the compose file is parsed and checked for its services, volumes, GPU
reservation and health checks (and validated by ``docker-compose config -q`` when that executable
exists); the image's server command (gunicorn + docker/gunicorn.conf.py) and the containers' health
checks (docker/healthcheck.py) are run here against real processes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from devkit.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
# read by the code but not deployment settings: the local Label Studio venv of `robustar demo`/tests
NOT_DEPLOYMENT = {"ROBUSTAR_LS_VENV"}
LOCAL_ONLY = "ml_backend/local"  # the local stack (demo, Label Studio launcher): not configured by the images


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_example() -> dict[str, str | None]:
    """Variables in .env.example: ``VAR=value`` -> value, commented ``# VAR=value`` -> None."""
    out: dict[str, str | None] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if m:
            out.setdefault(m.group(2), None if m.group(1) else m.group(3))
    return out


def split_volume(spec: str) -> tuple[str, str]:
    """``source:target[:mode]`` -> (source, target); a ``${VAR:-default}`` source is kept whole."""
    m = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(:\w+)?", spec)
    assert m, f"cannot parse volume {spec!r}"
    return m.group(1), m.group(2)


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Dockerfile instructions per stage name: [(INSTRUCTION, args)], continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.search(r"\bAS\s+(\S+)", args, re.I)
            current = m.group(1) if m else f"stage{len(stages)}"
            stages[current] = [(instr, args)]
        elif current is not None:
            stages[current].append((instr, args))
    return stages


def stage_chain(stages: dict, name: str) -> list[tuple[str, str]]:
    """A stage's instructions including those of the stages it is built FROM (base first)."""
    base = stages[name][0][1].split()[0]
    return (stage_chain(stages, base) if base in stages else []) + stages[name]


# ------------------------------------------------------------------ docker-compose.yml


def test_compose_has_the_stack(services):
    assert {"label-studio", "redis", "backend", "worker"} <= set(services)
    ls = services["label-studio"]
    assert re.fullmatch(r"heartexlabs/label-studio:1\.23\.\d+", ls["image"]), ls["image"]
    env = ls["environment"]
    for name, value in {"LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "ML_BLOCK_LOCAL_IP": "false",
                        "SSRF_PROTECTION_ENABLED": "false"}.items():
        assert env[name] == value, name
    for name in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        assert f"${{{name}" in env[name], f"{name} must come from .env"

    backend = services["backend"]
    assert backend["build"]["target"] == "backend"
    command = " ".join(backend["command"])
    assert "gunicorn" in command and "ml_backend.api.server:build_app()" in command
    benv = backend["environment"]
    assert "http://label-studio:8080" in benv["LABEL_STUDIO_URL"]
    assert "BACKEND_PUBLIC_URL" in benv and "GUNICORN_THREADS" in benv
    assert "${LABEL_STUDIO_USER_TOKEN" in benv["LABEL_STUDIO_API_KEY"]
    assert services["worker"]["build"]["target"] == "worker"
    for name in ("backend", "worker"):
        assert "redis:6379" in services[name]["environment"]["REDIS_URL"]
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_is_persistent_with_aof(compose, services):
    redis = services["redis"]
    command = redis["command"] if isinstance(redis["command"], str) else " ".join(redis["command"])
    assert "--appendonly yes" in command
    (volume,) = redis["volumes"]
    source, target = split_volume(volume)
    assert target == "/data" and source in compose["volumes"]


def test_worker_reserves_an_nvidia_gpu(services):
    gpu_workers = [n for n, s in services.items() if n.startswith("worker") and "cpu" not in n]
    assert "worker" in gpu_workers and len(gpu_workers) >= 2  # one by default, more by profile
    for name in gpu_workers:
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert device.get("device_ids") or device.get("count"), name
    ids = [services[n]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for n in gpu_workers]
    assert len({tuple(i) for i in ids}) == len(ids), "two GPU workers on one host must get different GPUs"
    assert "deploy" not in services["worker-cpu"]


def test_models_volume_is_shared_and_volumes_declared(compose, services):
    declared = set(compose["volumes"])

    def mounts(name):
        return {split_volume(v)[1]: split_volume(v)[0] for v in services[name].get("volumes", [])}

    models = {mounts(n)["/data/models"] for n in services if n in ("backend",) or n.startswith("worker")}
    assert len(models) == 1, f"backend and workers must share one models volume: {models}"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = split_volume(volume)[0]
            if not source.startswith(("/", ".", "${")) or source.startswith("${MODELS_PATH:-"):
                named = re.sub(r"^\$\{MODELS_PATH:-(\w[\w-]*)\}$", r"\1", source)
                assert named in declared, f"{name}: volume {named} is not declared"
    assert "/label-studio/data" in mounts("label-studio")
    assert mounts("label-studio")["/label-studio/data"] in declared


def test_every_service_has_a_healthcheck(services):
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert check.get("start_period"), f"{name}: give slow starters a start_period"
    assert "/health" in " ".join(services["label-studio"]["healthcheck"]["test"])
    assert services["backend"]["healthcheck"]["test"][-2:] == ["/app/healthcheck.py", "backend"]
    assert services["worker"]["healthcheck"]["test"][-2:] == ["/app/healthcheck.py", "worker"]
    assert "/health" in (ROOT / "docker" / "healthcheck.py").read_text()


def test_compose_variables_are_in_env_example():
    documented = env_example()
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))
    missing = sorted(used - set(documented))
    assert not missing, f"docker-compose.yml uses variables .env.example does not document: {missing}"
    for name in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        assert documented[name], f"{name} must have an example value (compose requires it)"
    assert 5 < len(documented["LABEL_STUDIO_USER_TOKEN"]) <= 40


def test_env_example_documents_every_variable_the_code_reads():
    documented = env_example()
    pattern = re.compile(r"""(?:_env(?:_list)?|environ\.get|getenv)\(\s*["']([A-Z][A-Z0-9_]*)["']"""
                         r"""|environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\]|["'](TRAIN_[A-Z0-9_]+)["']""")
    read: dict[str, str] = {}
    for path in [*ROOT.glob("ml_backend/**/*.py"), *ROOT.glob("training/*.py")]:
        if path.relative_to(ROOT).as_posix().startswith(LOCAL_ONLY):
            continue
        for m in pattern.finditer(path.read_text()):
            read.setdefault(next(g for g in m.groups() if g), path.name)
    from ml_backend.settings import Settings

    for name in Settings.env_names().values():  # every Settings field is set by its variable
        read.setdefault(name, "settings.py")
    assert {"REDIS_URL", "MODEL_DIR", "TRAIN_EPOCHS", "CORS_ORIGINS"} <= set(read), "the scan finds nothing: fix the pattern"
    missing = {name: where for name, where in read.items() if name not in documented and name not in NOT_DEPLOYMENT}
    assert not missing, f"variables read by the code but not in .env.example: {missing}"


def test_env_example_comments_every_variable():
    lines = ENV_EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.fullmatch(r"(#\s*)?[A-Z][A-Z0-9_]*=.*", line.strip()):
            block = lines[:i]
            while block and re.fullmatch(r"(#\s*)?[A-Z][A-Z0-9_]*=.*", block[-1].strip()):
                block.pop()  # variables grouped under one comment
            assert block and block[-1].startswith("#") and not block[-1].startswith("# ="), \
                f".env.example line {i + 1} ({line}) has no comment above it"
            value = line.split("=", 1)[1]
            assert not re.search(r"\s#", value) and not value.startswith(("'", '"')), \
                f".env.example line {i + 1}: no quotes or trailing comments (compose reads them literally)"


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose not installed (.ci/run installs Debian's docker-compose)")
@pytest.mark.parametrize("profiles", [[], ["gpu2", "cpu"]])
def test_docker_compose_config_validates(profiles, tmp_path):
    env = {**os.environ, "ROBUSTAR_ENV_FILE": str(ENV_EXAMPLE)}
    cmd = ["docker-compose", "--project-directory", str(ROOT), "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE)]
    for p in profiles:
        cmd += ["--profile", p]
    r = subprocess.run([*cmd, "config", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*cmd, "config", "--services"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert {"label-studio", "redis", "backend", "worker"} <= set(r.stdout.split()), r.stdout + r.stderr


# ------------------------------------------------------------------ Dockerfile, .dockerignore


def test_dockerfile_stages_non_root_with_healthchecks(services):
    stages = dockerfile_stages()
    assert {"builder", "runtime", "backend", "worker"} <= set(stages)
    runtime_base = stages["runtime"][0][1].split()[0]
    assert "slim" in runtime_base, "final images build on a slim base"
    assert not any(i == "RUN" and "pip install" in a for i, a in stages["runtime"]), "no installs in the final stage"
    assert any(i == "COPY" and "--from=builder" in a for i, a in stages["runtime"])
    for target in ("backend", "worker"):
        chain = stage_chain(stages, target)
        users = [a for i, a in chain if i == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{target} runs as root"
        checks = [a for i, a in stages[target] if i == "HEALTHCHECK"]
        assert checks and f'"/app/healthcheck.py", "{target}"' in checks[-1], target
        assert any(i == "CMD" for i, _ in stages[target])
    backend_cmd = [a for i, a in stages["backend"] if i == "CMD"][-1]
    assert "gunicorn" in backend_cmd and "ml_backend.api.server:build_app()" in backend_cmd
    assert "torch==" in " ".join(a for i, a in stages["builder"]) or "TORCH_VERSION" in DOCKERFILE.read_text()


def test_dockerfile_copies_only_what_the_context_holds():
    ignore = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert ignore[0] == "*", ".dockerignore is a whitelist"
    allowed = {l[1:].rstrip("/") for l in ignore if l.startswith("!")}
    for name, instrs in dockerfile_stages().items():
        for instr, args in instrs:
            if instr != "COPY" or "--from=" in args:
                continue
            *sources, _dest = [a for a in args.split() if not a.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"stage {name}: COPY {src}: no such file in the repo"
                top = src.split("/")[0]
                assert src in allowed or top in allowed, f"stage {name}: COPY {src} is excluded by .dockerignore"
    for secret in (".env", ".venv", ".venv-ls", ".git", ".robustar"):
        assert secret not in allowed


# ------------------------------------------------------------------ the image's commands, run here


def _healthcheck(kind: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "docker" / "healthcheck.py"), kind], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=30)


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@pytest.mark.slow  # gunicorn + uvicorn worker processes
def test_gunicorn_serves_the_backend_with_the_image_config(tmp_path, redis_url):
    """The backend image's CMD, run here: gunicorn + uvicorn workers + docker/gunicorn.conf.py."""
    assert (BIN / "gunicorn").exists(), "gunicorn is missing: pip install -e '.[test]' (the test extra includes it)"
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "GUNICORN_THREADS": "3", "MODEL_DIR": str(tmp_path / "models"),
           "MODEL_ARCH": "tiny-cnn", "IMAGE_SIZE": "32", "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    assert _healthcheck("backend", {"PORT": str(port)}).returncode == 1  # nothing there yet
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "gunicorn"), "-c", str(ROOT / "docker" / "gunicorn.conf.py"), "ml_backend.api.server:build_app()"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["status"] == "UP"
        check = _healthcheck("backend", {"PORT": str(port)})
        assert check.returncode == 0, check.stderr
        assert "3 threads for blocking work" in log.read_text()
    finally:
        assert _stop(proc) == 0, log.read_text()[-3000:]


@pytest.mark.slow  # a real `robustar worker` process
def test_worker_healthcheck_sees_its_own_worker(tmp_path, redis_url):
    """The worker image's CMD names the worker "<WORKER_NAME or hostname>-<start time>"; the check finds it."""
    env = {"REDIS_URL": redis_url, "RQ_QUEUE": "t-deploy-health", "WORKER_NAME": f"hc{os.getpid()}"}
    assert _healthcheck("worker", env).returncode == 1
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "robustar"), "worker", "--name", f"hc{os.getpid()}-{int(time.time())}"],
                                env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while (check := _healthcheck("worker", env)).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, check.stderr + log.read_text()[-2000:]
            time.sleep(0.5)
        other = _healthcheck("worker", {**env, "WORKER_NAME": "someone-else"})
        assert other.returncode == 1 and "no RQ worker" in other.stderr
    finally:
        assert _stop(proc) == 0, log.read_text()[-2000:]
    assert _healthcheck("worker", env).returncode == 1  # a stopped worker unregisters
    down = _healthcheck("worker", {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert down.returncode == 1 and "unhealthy" in down.stderr


def test_backend_healthcheck_sends_basic_auth_when_configured():
    """With BASIC_AUTH_USER/PASS set every endpoint, /health included, needs them: so does the health check."""
    import base64
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    want = "Basic " + base64.b64encode(b"expert:s3cret").decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/health" and self.headers.get("Authorization") == want
            body = json.dumps({"status": "UP"} if ok else {"status": "error"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = str(server.server_address[1])
        creds = {"BASIC_AUTH_USER": "expert", "BASIC_AUTH_PASS": "s3cret"}
        assert _healthcheck("backend", {"PORT": port, **creds}).returncode == 0
        no_creds = {**os.environ, "PORT": port}
        no_creds.pop("BASIC_AUTH_USER", None), no_creds.pop("BASIC_AUTH_PASS", None)
        r = subprocess.run([sys.executable, str(ROOT / "docker" / "healthcheck.py"), "backend"], env=no_creds,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and "401" in r.stderr, r.stderr
    finally:
        server.shutdown()


def test_gunicorn_workers_get_the_same_server_limits_as_robustar_serve(monkeypatch):
    """The image's gunicorn runs uvicorn workers with the request-head deadline and header limits."""
    monkeypatch.setenv("HTTP_HEADER_TIMEOUT", "3.5")
    import importlib

    import ml_backend.api.gunicorn_worker as worker

    kwargs = importlib.reload(worker).RobustarUvicornWorker.CONFIG_KWARGS
    assert kwargs["http"].header_timeout == 3.5 and kwargs["h11_max_incomplete_event_size"] == 16 * 1024
    assert "ml_backend.api.gunicorn_worker.RobustarUvicornWorker" in (ROOT / "docker" / "gunicorn.conf.py").read_text()
