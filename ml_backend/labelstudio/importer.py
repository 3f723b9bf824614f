"""Import an ImageFolder dataset (``train/<class>/*``, ``val/<class>/*``, ``test/<class>/*``) into a Label
Studio project. Without a ``val/`` folder a stratified part of the test split is set aside as val
(``ml_backend.labelstudio.val_split``) and the report says so: val decides, test is only reported.

One task per image with ``split``, ground-truth ``label`` and a stable ``key`` (the path inside the
dataset) in its data. The images are uploaded to Label Studio (so it serves them), or left where they
are and registered as the project's Local files or S3 storage (``ml_backend.labelstudio.storage``). Tasks are
created in batches (``task_batch`` per import call), a progress line after each; an interrupted import
is resumed by running it again: images whose key is already a task are skipped, so nothing is
imported twice. Then the ML backend is connected and the project's model version set to the one the
backend reports, so the Data Manager's prediction-score column fills.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import requests
from label_studio_sdk import LabelStudio
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from label_config.render import parse_config, render_config
from ml_backend.credentials import SECRET_HEADER, basic_auth_header, signed_page_url
from ml_backend.settings import Settings
from training.input_size import SETUP_PARAM, InputSize, file_sizes, from_image_sizes, sample
from ml_backend.labelstudio.storage import ImportErrorWithHint, LocalFilesSource, S3Source, StorageSource, register_storage, split_key
from ml_backend.labelstudio.val_split import VAL_FRACTION, set_aside_val

NO_BACKEND_PAGE = "data:text/html,<i>no ML backend connected: no influence page</i>"

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SPLITS = ("train", "val", "test")


@dataclass
class DatasetItem:
    key: str  # "train/cat/001.png"
    path: Path | None  # None: the image is not on this machine (S3)
    split: str
    label: str


@dataclass
class ImportReport:
    project_id: int
    classes: list[str]
    imported: int = 0
    skipped_existing: int = 0
    unreadable: list[str] = field(default_factory=list)
    ml_backend_id: int | None = None
    model_version: str | None = None
    storage: str = "upload"  # upload | localfiles | s3
    storage_id: int | None = None
    seconds: float = 0.0  # creating the tasks (and uploading the files)
    input_size: InputSize | None = None  # measured from the training images (None: not on this machine)
    n_val: int = 0  # val tasks in the dataset (imported or already there)
    val: str = ""  # where the val split came from (its own folder, set aside from test, none)


IMPORT_MEASURE_SAMPLE = 256  # training images whose headers the importer reads to choose the input size


def measure_input_size(items: list[DatasetItem]) -> InputSize | None:
    """The model input size the training images call for (``training.input_size``: their median short side,
    rounded and bounded), from the headers of up to ``IMPORT_MEASURE_SAMPLE`` of them; None when the images
    are not on this machine (S3: the first job measures)."""
    paths = [it.path for it in items if it.split == "train" and it.path is not None] or \
        [it.path for it in items if it.path is not None]
    sizes = file_sizes(sample(paths, IMPORT_MEASURE_SAMPLE))
    return from_image_sizes(sizes, "training images (measured by robustar import)")


def scan_dataset(root: str | Path) -> tuple[list[str], list[DatasetItem], list[str]]:
    """Return (classes, readable items, unreadable file messages) of an ImageFolder dataset."""
    root = Path(root)
    if not root.is_dir():
        raise ImportErrorWithHint(f"dataset folder {root} does not exist")
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    if not split_dirs:
        raise ImportErrorWithHint(f"{root} has no train/, val/ or test/ (expected train/<class>/*, val/<class>/*, "
                                  "test/<class>/*)")
    classes = sorted({d.name for s in split_dirs for d in s.iterdir() if d.is_dir()})
    if not classes:
        raise ImportErrorWithHint(f"{root}: no class folders under {', '.join(d.name for d in split_dirs)}/")
    items, bad = [], []
    for split_dir in split_dirs:
        for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                    continue
                try:
                    with Image.open(path) as img:
                        img.verify()
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                    bad.append(f"{path}: unreadable image ({e})")
                    continue
                key = path.relative_to(root).as_posix()
                items.append(DatasetItem(key, path, split_dir.name, class_dir.name))
    if not items:
        raise ImportErrorWithHint(f"{root}: no readable images found" + (f" ({len(bad)} unreadable)" if bad else ""))
    return classes, items, bad


def scan_keys(where: str, keys: list[str]) -> tuple[list[str], list[DatasetItem]]:
    """(classes, items) of the ImageFolder keys (``<split>/<class>/<file>``) of a bucket listing; the images
    are not read here (the backend and the worker name a task whose image does not decode)."""
    items = []
    for key in sorted(keys):
        shape = split_key(key)
        if shape and shape[0] in SPLITS and Path(key).suffix.lower() in IMAGE_SUFFIXES:
            items.append(DatasetItem(key, None, *shape))
    if not items:
        raise ImportErrorWithHint(f"{where}: no images under train/<class>/ or test/<class>/ ({len(keys)} objects listed)")
    return sorted({it.label for it in items}), items


class LabelStudioImporter:
    """Creates/reuses the project, uploads images, creates tasks, connects the backend."""

    def __init__(self, url: str, api_key: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.client = LabelStudio(base_url=self.url, api_key=api_key)
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Token {api_key}"
        self.timeout = timeout
        try:
            r = self.http.get(f"{self.url}/api/projects", params={"page_size": 1}, timeout=timeout)
        except requests.RequestException as e:
            raise ImportErrorWithHint(f"cannot reach Label Studio at {self.url}: {e}") from e
        if r.status_code in (401, 403):
            raise ImportErrorWithHint(f"Label Studio at {self.url} rejected the API key (HTTP {r.status_code})")
        r.raise_for_status()

    def find_or_create_project(self, title: str, classes: list[str]) -> int:
        for project in self.client.projects.list(title=title):
            if project.title == title:
                existing = parse_config(project.label_config).classes
                if existing != classes:
                    raise ImportErrorWithHint(
                        f"project {title!r} (id {project.id}) has classes {existing}, the dataset has {classes}"
                    )
                return project.id
        project = self.client.projects.create(
            title=title,
            label_config=render_config(classes),
            description="Robustar: paint the spurious pixels, then Start Training",
        )
        return project.id

    def existing_keys(self, project_id: int) -> set[str]:
        keys, page = set(), 1
        while True:
            r = self.http.get(
                f"{self.url}/api/tasks",
                # only id and data, unresolved: ~10x faster than whole tasks (0.5 s per 1000 on LS 1.23)
                params={"project": project_id, "page": page, "page_size": 1000, "fields": "all", "include": "id,data",
                        "resolve_uri": "false"},
                timeout=self.timeout,
            )
            if r.status_code == 404:
                break
            r.raise_for_status()
            body = r.json()
            tasks = body.get("tasks", body) if isinstance(body, dict) else body
            keys |= {t["data"].get("key") for t in tasks if t.get("data", {}).get("key")}
            if len(tasks) < 1000:
                break
            page += 1
        return keys

    @contextmanager
    def uploads_allowed(self, project_id: int, classes: list[str]):
        """Label Studio takes direct file uploads only while the config has one object tag, so the
        saliency ``<Image>`` is left out of the config during the upload and put back afterwards."""
        self.client.projects.update(id=project_id, label_config=render_config(classes, saliency_view=False))
        try:
            yield
        finally:
            self.client.projects.update(id=project_id, label_config=render_config(classes))

    def restore_config(self, project_id: int, classes: list[str]) -> None:
        """Put the full config back if an import was killed inside ``uploads_allowed`` (no ``finally`` ran)."""
        if self.client.projects.get(id=project_id).label_config != render_config(classes):
            self.client.projects.update(id=project_id, label_config=render_config(classes))

    def upload(self, project_id: int, items: list[DatasetItem]) -> list[str]:
        """Upload files without creating tasks; return their Label Studio URLs in order."""
        files = {
            f"file{i}": (it.key.replace("/", "__"), it.path.read_bytes(), "application/octet-stream")
            for i, it in enumerate(items)
        }
        r = self.http.post(
            f"{self.url}/api/projects/{project_id}/import",
            params={"commit_to_project": "false"},
            files=files,
            timeout=self.timeout,
        )
        if r.status_code >= 400:
            raise ImportErrorWithHint(f"uploading {len(items)} files failed: HTTP {r.status_code}: {r.text[:300]}")
        ids = r.json()["file_upload_ids"]
        r = self.http.get(
            f"{self.url}/api/projects/{project_id}/file-uploads",
            params={"ids": "[" + ",".join(map(str, ids)) + "]"},
            timeout=self.timeout,
        )
        r.raise_for_status()
        # the API returns the storage name ("upload/<pid>/<uuid>-<name>"); Label Studio serves it under /data/
        by_id = {f["id"]: f["file"] if f["file"].startswith(("/", "http")) else "/data/" + f["file"] for f in r.json()}
        return [by_id[i] for i in ids]

    def create_tasks(self, project_id: int, items: list[DatasetItem], urls: list[str], backend_url: str | None) -> None:
        tasks = []
        for it, url in zip(items, urls):
            data = {"image": url, "split": it.split, "label": it.label, "key": it.key}
            user, password = _basic_auth()
            # what the browser loads from the backend: signed when basic auth is on (no credentials there)
            data["saliency"] = (signed_page_url(backend_url, "saliency", project_id, it.key, user, password)
                                if backend_url else url)
            data["influence"] = (signed_page_url(backend_url, "influence", project_id, it.key, user, password)
                                 if backend_url else NO_BACKEND_PAGE)
            tasks.append(data)
        r = self.http.post(f"{self.url}/api/projects/{project_id}/import", json=tasks, timeout=self.timeout)
        if r.status_code >= 400:
            raise ImportErrorWithHint(f"creating {len(tasks)} tasks failed: HTTP {r.status_code}: {r.text[:300]}")

    def connect_backend(self, project_id: int, backend_url: str, title: str = "robustar",
                        input_size: InputSize | None = None) -> tuple[int, str]:
        """Connect the ML backend (once) and set the project's model version to the backend's. ``input_size``
        goes to the backend in ``/setup``'s ``extra_params`` (the size of v0 when IMAGE_SIZE is unset)."""
        user, password = _basic_auth()
        auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": user, "basic_auth_pass": password} if user else {}
        if input_size is not None:
            auth["extra_params"] = {SETUP_PARAM: {"size": input_size.size, "reason": input_size.reason}}
        backend = next((b for b in self.client.ml.list(project=project_id) if b.url.rstrip("/") == backend_url.rstrip("/")), None)
        try:
            if backend is None:
                backend = self.client.ml.create(
                    project=project_id, url=backend_url, title=title, is_interactive=True, auto_update=True, **auth
                )
            elif auth:  # Label Studio 1.23 answers 500 to a PATCH without url and project (its checks need both)
                self.client.ml.update(id=backend.id, url=backend_url, project=project_id, **auth)
        except Exception as e:
            raise ImportErrorWithHint(f"Label Studio could not connect the ML backend at {backend_url}: {e}") from e
        self.secure_webhook(project_id, backend_url)
        backend = self.client.ml.get(id=backend.id)  # GET re-runs /setup, refreshing model_version
        return backend.id, backend.model_version

    def secure_webhook(self, project_id: int, backend_url: str) -> int | None:
        """Give Label Studio's auto-created ``<backend>/webhook`` the headers the backend requires:
        ``X-Robustar-Secret`` (``WEBHOOK_SECRET``) and basic auth (``BASIC_AUTH_USER``/``BASIC_AUTH_PASS``)."""
        headers = {}
        secret = Settings.from_env().webhook_secret
        if secret:
            headers[SECRET_HEADER] = secret
        user, password = _basic_auth()
        if user:
            headers["Authorization"] = basic_auth_header(user, password)
        if not headers:
            return None
        target = backend_url.rstrip("/") + "/webhook"
        hooks = [h for h in self.client.webhooks.list(project=str(project_id)) if (h.url or "").rstrip("/") == target]
        if not hooks:
            log.warning("project %s: no webhook to %s found (Label Studio needs SSRF_PROTECTION_ENABLED=false to "
                        "create it); annotation events will not reach the backend", project_id, target)
            return None
        for hook in hooks:
            self.client.webhooks.update(id=hook.id, headers={**(hook.headers or {}), **headers})
        return hooks[0].id

    def task_ids(self, project_id: int) -> list[int]:
        return [t.id for t in self.client.tasks.list(project=project_id, fields="task_only")]

    def retrieve_predictions(self, project_id: int, task_ids: list[int], chunk: int = 64, progress: bool = True) -> None:
        """Ask Label Studio for predictions as the Data Manager's "Retrieve Predictions" action does."""
        with tqdm(total=len(task_ids), desc="predicting", unit="task", disable=not progress, file=sys.stderr) as bar:
            for start in range(0, len(task_ids), chunk):
                ids = task_ids[start : start + chunk]
                r = self.http.post(
                    f"{self.url}/api/dm/actions",
                    params={"id": "retrieve_tasks_predictions", "project": project_id},
                    json={"selectedItems": {"all": False, "included": ids}},
                    timeout=max(self.timeout, 120),
                )
                if r.status_code >= 400:
                    raise ImportErrorWithHint(f"retrieving predictions failed: HTTP {r.status_code}: {r.text[:300]}")
                bar.update(len(ids))

    def set_model_version(self, project_id: int, version: str) -> None:
        """Make the Data Manager's prediction-score column use ``version`` (needs its predictions stored)."""
        self.client.projects.update(id=project_id, model_version=version)


def _basic_auth() -> tuple[str | None, str | None]:
    """(user, password) from ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` when both are set, else (None, None)."""
    settings = Settings.from_env()
    user, password = settings.basic_auth_user, settings.basic_auth_pass
    return (user, password) if user and password else (None, None)


def import_dataset(
    dataset: str | Path | StorageSource,
    url: str,
    api_key: str,
    title: str = "Robustar",
    backend_url: str | None = None,
    batch_size: int = 50,
    progress: bool = True,
    predict: bool = True,
    task_batch: int = 500,
    val_fraction: float = VAL_FRACTION,
) -> ImportReport:
    """Import a dataset into Label Studio (idempotent, resumable) and connect the backend when given.

    ``dataset``: a folder (its images are uploaded, ``batch_size`` files per request), or a
    ``LocalFilesSource``/``S3Source`` (registered as the project's storage; the tasks reference the images
    in place). Tasks are created ``task_batch`` per import call, each batch as soon as its files are
    uploaded, so an interrupted import loses at most one batch of uploads and a re-run goes on from there.
    ``val_fraction``: the part of each class's test images set aside as val when there is no ``val/``
    folder (0: none; then no version is gated, and the job says so).
    """
    classes, items, bad = _scan(dataset)
    n_val, val_note = set_aside_val(items, val_fraction)
    log.info("%s", val_note)
    if progress:
        print(f"import: {val_note}", file=sys.stderr, flush=True)
    for message in bad:
        log.error(message)
    importer = LabelStudioImporter(url, api_key)
    project_id = importer.find_or_create_project(title, classes)
    report = ImportReport(project_id, classes, unreadable=bad, n_val=n_val, val=val_note,
                          input_size=measure_input_size(items))
    if not isinstance(dataset, (str, Path)):
        report.storage = dataset.kind
        report.storage_id = register_storage(importer.http, importer.url, project_id, dataset, importer.timeout)
    known = importer.existing_keys(project_id)
    todo = [it for it in items if it.key not in known]
    report.skipped_existing = len(items) - len(todo)
    if todo:
        t0 = time.perf_counter()
        uploading = isinstance(dataset, (str, Path))
        with importer.uploads_allowed(project_id, classes) if uploading else nullcontext():
            for start in range(0, len(todo), task_batch):
                chunk = todo[start : start + task_batch]
                if uploading:
                    urls = [u for i in range(0, len(chunk), batch_size)
                            for u in importer.upload(project_id, chunk[i : i + batch_size])]
                else:
                    urls = [dataset.image_url(it.key) for it in chunk]
                importer.create_tasks(project_id, chunk, urls, backend_url)
                report.imported += len(chunk)
                if progress:
                    took = time.perf_counter() - t0
                    print(f"import: {report.imported}/{len(todo)} tasks created in project {project_id} "
                          f"({report.imported / took:.0f} tasks/s, {report.skipped_existing} already there)",
                          file=sys.stderr, flush=True)
        report.seconds = time.perf_counter() - t0
    elif isinstance(dataset, (str, Path)):
        importer.restore_config(project_id, classes)
    if backend_url:
        report.ml_backend_id, report.model_version = importer.connect_backend(project_id, backend_url,
                                                                               input_size=report.input_size)
        if predict and report.model_version:
            importer.retrieve_predictions(project_id, importer.task_ids(project_id), progress=progress)
            importer.set_model_version(project_id, report.model_version)
    return report


def _scan(dataset: str | Path | StorageSource) -> tuple[list[str], list[DatasetItem], list[str]]:
    """(classes, items, unreadable-file messages) of a folder, a Local files folder or an S3 prefix."""
    if isinstance(dataset, S3Source):
        classes, items = scan_keys(dataset.describe(), dataset.list_keys())
        return classes, items, []
    return scan_dataset(dataset.folder if isinstance(dataset, LocalFilesSource) else dataset)
