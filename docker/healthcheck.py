"""Container health checks (Dockerfile HEALTHCHECK): ``python healthcheck.py backend|worker``.

backend: ``GET http://127.0.0.1:$PORT/health`` answers ``{"status": "UP"}`` (with basic auth when
         ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` are set).
worker:  Redis at ``$REDIS_URL`` answers and an RQ worker started in this container (its name
         starts with ``$WORKER_NAME`` or the hostname, see the worker image's command) is registered;
         RQ drops a worker's registration when its heartbeat stops.
Exit 0 = healthy, 1 = unhealthy (the reason on stderr).
"""

import base64
import json
import os
import socket
import sys
import urllib.request


def backend() -> str | None:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '9090')}/health"
    request = urllib.request.Request(url)
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    if user and password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    with urllib.request.urlopen(request, timeout=5) as r:
        status = json.load(r).get("status")
    return None if status == "UP" else f"{url} says status={status!r}"


def worker() -> str | None:
    from redis import Redis

    redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), socket_timeout=5, socket_connect_timeout=5)
    redis.ping()
    prefix = f"rq:worker:{os.environ.get('WORKER_NAME') or socket.gethostname()}-"
    for key in redis.smembers("rq:workers"):
        key = key.decode()
        if key.startswith(prefix) and redis.exists(key):
            return None
    return f"no RQ worker registered under {prefix}*"


if __name__ == "__main__":
    try:
        problem = {"backend": backend, "worker": worker}[sys.argv[1]]()
    except Exception as e:  # unreachable, refused, bad JSON, Redis down
        problem = f"{type(e).__name__}: {e}"
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
    sys.exit(1 if problem else 0)
