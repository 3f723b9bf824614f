"""Gunicorn settings for the ML backend image: ``gunicorn -c docker/gunicorn.conf.py 'ml_backend.api.server:build_app()'``.

Each of ``GUNICORN_WORKERS`` processes runs the FastAPI app on uvicorn's event loop and does the
blocking work (image fetch, inference, saliency) in a pool of ``GUNICORN_THREADS`` threads. Every
process loads its own copy of the model, so raise threads before processes.
"""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '9090')}"
workers = int(os.environ.get("GUNICORN_WORKERS", "1"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
worker_class = "ml_backend.api.gunicorn_worker.RobustarUvicornWorker"  # uvicorn with the request-head deadline
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))  # Label Studio waits up to 100 s for /predict
graceful_timeout = 30
keepalive = 5
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
control_socket_disable = True  # gunicorn >= 25: no control socket under $HOME (read-only for our user)


def _thread_limited(app, n: int):
    """Wrap the ASGI app so its first call sizes anyio's default thread pool (used by run_in_threadpool)."""
    done = False

    async def wrapped(scope, receive, send):
        nonlocal done
        if not done:
            import anyio.to_thread

            anyio.to_thread.current_default_thread_limiter().total_tokens = n
            done = True
        await app(scope, receive, send)

    return wrapped


def post_worker_init(worker):
    worker.wsgi = _thread_limited(worker.wsgi, threads)
    worker.log.info("backend worker %s: %d threads for blocking work", worker.pid, threads)
