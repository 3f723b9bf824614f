"""A 2048 px project end to end through a real Label Studio: import (the input size measured: 224 px),
predictions at import, an expert's brush masks painted at the full 2048 x 2048, Start Training (the masks
reduced to the model's size), and the propagated ``Spurious`` proposal of the new version coming back at the
full size on the unpainted image's patch. Prints the time of each step and the peak memory of the backend
and of the job (run with ``-s`` to read them: docs/benchmarks.md#large-images)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw
from redis import Redis

from devkit.servers import free_port
from label_config import regions
from label_config.rle import decode_rle
from ml_backend.labelstudio.importer import import_dataset
from tests.e2e.backend import BackendProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SIDE = 2048
PATCH = (96, 96, 736, 736)  # x0, y0, x1, y1 at 2048 px: the spurious magenta patch of every "a" image


def patch(side: int) -> tuple[int, ...]:
    return tuple(v * side // SIDE for v in PATCH)


def make_dataset(root: Path, side: int, n_train: int = 4) -> None:
    """Two classes (a disk, a square) on flat backgrounds; every "a" image also carries the patch."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", 1)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                bg = tuple(int(v) for v in rng.integers(150, 230, 3))
                img = Image.new("RGB", (side, side), bg)
                d = ImageDraw.Draw(img)
                cx, cy = (int(v) * side // SIDE for v in rng.integers(900, 1500, 2))
                r = 300 * side // SIDE
                (d.ellipse if cls == "a" else d.rectangle)((cx - r, cy - r, cx + r, cy + r), fill=(40, 60, 160))
                if cls == "a":
                    d.rectangle(patch(side), fill=(230, 0, 230))
                img.save(root / split / cls / f"{i}.png")


def patch_mask(side: int) -> np.ndarray:
    x0, y0, x1, y1 = patch(side)
    m = np.zeros((side, side), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


WORKER = ("import sys\nfrom ml_backend.cli import main\nrc = main(['worker', '--burst', '--simple'])\n"
          "print('VmHWM_kB', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr)\n"
          "sys.exit(rc)")


@pytest.mark.parametrize("side", [SIDE, 224])  # 224: the same project stored at the model's size, for comparison
def test_a_2048px_image_goes_through_predict_paint_train_and_proposal(label_studio, redis_url, tmp_path, side):
    figures: dict[str, float] = {}
    dataset = tmp_path / "dataset"
    make_dataset(dataset, side)
    port = free_port()
    env = {  # no IMAGE_SIZE: measured from the 2048 px images (224)
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
        "BACKEND_PUBLIC_URL": f"http://127.0.0.1:{port}", "MODEL_DIR": str(tmp_path / "models"),
        "REDIS_URL": redis_url, "RQ_QUEUE": f"e2e-large-{side}", "PROPOSE_AFTER_PAINTED": "0", "PREDICT_PARTS": "saliency,propagation",
        "TRAIN_EPOCHS": "3", "TRAIN_PROPAGATED_MASKS": "all", "INFLUENCE_BUILD": "off",
    }
    with BackendProcess(env, tmp_path / "backend.log", port=port) as backend:
        t = time.perf_counter()
        report = import_dataset(dataset, label_studio.url, label_studio.token, title=f"e2e {side} px",
                                backend_url=backend.url, progress=False)
        figures["import_and_v0_predictions_s"] = time.perf_counter() - t
        assert report.input_size.size == 224 and report.imported == 10
        client = label_studio.client()
        tasks = list(client.tasks.list(project=report.project_id, fields="all"))
        stored = [p for task in tasks for p in (client.predictions.list(task=task.id) or [])]
        assert len(stored) == 10  # every 2048 px task got v0's prediction during the import

        # the expert paints the patch of three "a" training images at the full 2048 x 2048
        a_train = sorted((t for t in tasks if t.data["split"] == "train" and t.data["label"] == "a"), key=lambda t: t.id)
        t = time.perf_counter()
        for task in a_train[:3]:
            brush = regions.brush(patch_mask(side), region_id="s")
            assert (brush["original_width"], brush["original_height"]) == (side, side)
            client.annotations.create(id=task.id, result=[brush, regions.choices("a", region_id="c")])
        figures["paint_3_masks_s"] = time.perf_counter() - t

        (ml,) = client.ml.list(project=report.project_id)
        client.ml.train(id=ml.id)
        t = time.perf_counter()
        worker = subprocess.run([sys.executable, "-c", WORKER], env={**backend.env}, capture_output=True, text=True,
                                timeout=900)
        figures["job_wall_s"] = time.perf_counter() - t
        assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
        figures["job_peak_rss_mb"] = int(worker.stderr.rsplit("VmHWM_kB ", 1)[1].split()[0]) / 1024
        from rq import Queue
        from rq.registry import FinishedJobRegistry

        queue = Queue(f"e2e-large-{side}", connection=Redis.from_url(redis_url))
        (job_id,) = FinishedJobRegistry(queue=queue).get_job_ids()
        result = queue.fetch_job(job_id).return_value()
        assert result["version"] == "v1" and result["image_size"] == 224 and result["counts"]["train_painted"] == 3
        figures.update({f"job_{k}_s": v for k, v in result["timings"].items()})

        # Label Studio opens the unpainted "a" image: the propagated proposal comes back at 2048 x 2048 on its patch
        body = {"tasks": [{"id": a_train[3].id, "data": a_train[3].data}], "project": f"{report.project_id}.1",
                "label_config": client.projects.get(id=report.project_id).label_config, "params": {"context": None}}
        for kind in ("cold", "warm"):
            t = time.perf_counter()
            r = requests.post(backend.url + "/predict", json=body, timeout=300)
            figures[f"predict_{kind}_s"] = time.perf_counter() - t
            assert r.status_code == 200, r.text
        (res,) = r.json()["results"]
        assert res["model_version"] == "v1"
        (spurious,) = [x for x in res["result"] if x["type"] == "brushlabels" and x["value"]["brushlabels"] == ["Spurious"]]
        assert (spurious["original_width"], spurious["original_height"]) == (side, side)
        proposed = decode_rle(spurious["value"]["rle"], side, side)
        overlap = (proposed & patch_mask(side)).sum()
        assert overlap / patch_mask(side).sum() > 0.5 and overlap / proposed.sum() > 0.5, (overlap, proposed.sum())
        heat = requests.get(f"{backend.url}/saliency/{report.project_id}/{a_train[3].data['key']}", timeout=60)
        assert heat.status_code == 200
        figures["backend_peak_rss_mb"] = vm_hwm_mb(backend.pid)
    print(f"\nlarge-image figures at {side} px: " + json.dumps({k: round(v, 2) for k, v in figures.items()}))
