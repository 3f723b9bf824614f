"""Influence index and part: flagged training images rank first; ranking equals captum's TracInCPFast."""

from __future__ import annotations

import dataclasses
import random
import re
import threading

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch.utils.data import TensorDataset

from label_config import render_config
from label_config.render import parse_config
from ml_backend.predict.influence import (
    InfluenceIndex,
    InfluencePart,
    InfluenceRecord,
    build_influence_index,
    delta_for,
    embed_records,
    index_path,
    load_influence_index,
    rank,
)
from ml_backend.predict.parts import PredictContext
from ml_backend.predict.registry import ServedModel
from ml_backend.settings import Settings
from ml_backend.predict.influence.suspicion import SELF
from training.checkpoints import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CheckpointMeta,
    CheckpointStore,
)
from training.dataset import PairedDataset
from training.images import normalize, to_batch
from training.models import build_model
from training.synthetic import render_sample

CLASSES = ["circle", "square", "triangle"]
CONFIG = parse_config(render_config(CLASSES))
# configs of earlier versions showed influence as a TextArea in the prediction
LEGACY_CONFIG = parse_config(render_config(CLASSES).replace(
    '<HyperText name="influence" value="$influence" valueType="url" inline="true" clickableLinks="true"/>',
    '<TextArea name="influence" toName="image" editable="false" readonly="true" rows="5"/>'))
S = 32
PATCH = (255, 0, 255)


class Data:
    """3 shape classes; 3 squares labelled 'circle' (M); 6 circles with a magenta patch labelled 'triangle' (P)."""

    def __init__(self, seed: int = 0) -> None:
        rng = random.Random(seed)

        def sample(ci: int, patch: bool = False) -> Image.Image:
            img, _ = render_sample(CLASSES[ci], 0, S, rng, patch=False)
            if patch:
                ImageDraw.Draw(img).rectangle([0, 0, 9, 9], fill=PATCH)
            return img

        self.train, self.test = [], []
        self.mislabelled, self.poisoned, self.patched_tests = set(), set(), set()
        tid = 100
        for ci in range(3):
            for k in range(24):
                tid += 1
                img, label = sample(ci), ci
                if ci == 1 and k < 3:
                    label = 0
                    self.mislabelled.add(tid)
                if ci == 0 and 3 <= k < 9:
                    img, label = sample(ci, patch=True), 2
                    self.poisoned.add(tid)
                self.train.append(InfluenceRecord(tid, CLASSES[label], image=img))
        for ci in range(3):
            for k in range(4):
                tid += 1
                patched = ci in (0, 1) and k < 2
                if patched:
                    self.patched_tests.add(tid)
                self.test.append(InfluenceRecord(tid, CLASSES[ci], image=sample(ci, patch=patched)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add contention on a shared CPU
    try:
        yield _setup(tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _setup(tmp_path_factory):
    data = Data()
    torch.manual_seed(0)
    x = normalize(to_batch([r.image for r in data.train], S), IMAGENET_MEAN, IMAGENET_STD)
    y = torch.tensor([CLASSES.index(r.target) for r in data.train])
    model = build_model("tiny-cnn", 3)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(250):
        idx = torch.randint(0, len(y), (32,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    meta = CheckpointMeta(version="v0", arch="tiny-cnn", classes=CLASSES, image_size=S)
    root = tmp_path_factory.mktemp("models")
    store = CheckpointStore(root, 1)
    store.save(model, meta)
    store.publish("v0")
    index = build_influence_index(store, "v0", data.train, data.test)
    test_emb = embed_records(model, meta, data.test)
    return data, model, meta, store, index, test_emb, x, y


def _tags(index: InfluenceIndex, rows) -> list[int]:
    return [int(index.task_ids[i]) for i in rows]


def test_index_is_stored_beside_the_checkpoint_and_reloads(setup):
    data, _, _, store, index, _, _, _ = setup
    path = index_path(store, "v0")
    assert path == store.root / "influence" / "v0.pt" and path.is_file()
    loaded = load_influence_index(store, "v0")
    assert loaded.version == "v0" and len(loaded) == len(data.train)
    assert torch.equal(loaded.delta, index.delta) and torch.equal(loaded.feats, index.feats)
    assert torch.equal(loaded.suspicion, index.suspicion) and loaded.suspicion_formula == index.suspicion_formula
    assert load_influence_index(store.root, "v0").version == "v0"  # a project folder works too
    assert load_influence_index(store, "v7") is None


def test_poisoned_images_are_the_top_proponents_for_patched_tests(setup):
    data, _, _, _, index, te, _, _ = setup
    # circles with the patch: the test images the poisoned training images (patched circles labelled
    # 'triangle') affect
    patched = [j for j, r in enumerate(data.test) if r.task_id in data.patched_tests and r.target == "circle"]
    preds = te.preds[patched]
    assert (preds == CLASSES.index("triangle")).all()  # the patch fools the model
    _, rows = index.top_k(delta_for(te.probs[patched], preds), te.feats[patched], 5, "proponents")
    hits = [t in data.poisoned for r in rows for t in _tags(index, r)]
    assert np.mean(hits) >= 0.6, hits  # 6 of 72 training images are poisoned: chance is 0.08


def test_mislabelled_images_are_the_top_opponents_for_their_true_class(setup):
    data, _, _, _, index, te, _, _ = setup
    squares = [j for j, r in enumerate(data.test) if r.target == "square" and r.task_id not in data.patched_tests]
    _, rows = index.top_k(delta_for(te.probs[squares], te.preds[squares]), te.feats[squares], 3, "opponents")
    hits = [t in data.mislabelled for r in rows for t in _tags(index, r)]
    assert np.mean(hits) >= 0.5, hits  # 3 of 72 are mislabelled: chance is 0.04


def test_suspicion_puts_the_flagged_training_images_first(setup):
    data, _, _, _, index, _, _, _ = setup
    assert index.suspicion_formula.startswith("harmful_cosine") and index.info["n_test_misclassified"] > 0
    assert 0.9 <= float(index.suspicion.max()) <= 1.0 and float(index.suspicion.min()) > 0.0  # 0.9 harm + 0.1 self
    top = _tags(index, index.suspicion.argsort(descending=True)[:6])
    flagged = data.poisoned | data.mislabelled
    assert sum(t in flagged for t in top) >= 4, top


@pytest.mark.parametrize("proponents", [True, False])
def test_raw_tracin_ranking_equals_captum_tracincpfast(setup, tmp_path, proponents):
    from captum.influence import TracInCPFast

    data, model, meta, _, index, te, x, y = setup
    ckpt = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), ckpt)

    def load(m, path):
        m.load_state_dict(torch.load(path, weights_only=True))
        m.eval()
        return 1.0  # learning rate

    tracin = TracInCPFast(model, model.fc, TensorDataset(x, y), [str(ckpt)], checkpoints_load_func=load,
                          loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"), batch_size=32)
    xt = normalize(to_batch([r.image for r in data.test], S), meta.mean, meta.std)
    c_idx, c_val = tracin.influence((xt, te.preds), k=5, proponents=proponents)
    values, rows = index.top_k(delta_for(te.probs, te.preds), te.feats, 5,
                               "proponents" if proponents else "opponents", score="tracin")
    assert torch.equal(rows, c_idx)  # same training rows, same order
    assert torch.allclose(values, c_val, rtol=1e-4, atol=1e-7)
    full = tracin.influence((xt, te.preds))
    assert torch.allclose(index.scores(delta_for(te.probs, te.preds), te.feats, "tracin"), full, rtol=1e-4, atol=1e-7)


def test_index_from_the_training_jobs_paired_dataset(setup):
    data, model, meta, store, index, _, _, _ = setup
    images = torch.stack([torch.from_numpy(np.array(r.image)).permute(2, 0, 1) for r in data.train])
    dataset = PairedDataset(images, torch.zeros(len(images), 1, S, S, dtype=torch.bool),
                            torch.tensor([CLASSES.index(r.target) for r in data.train]), [r.task_id for r in data.train])
    again = build_influence_index(store, "v0", dataset, data.test, model=model, meta=meta, save=False)
    assert torch.equal(again.task_ids, index.task_ids)
    assert torch.allclose(again.delta, index.delta, atol=1e-5) and torch.allclose(again.feats, index.feats, atol=1e-5)


def test_self_influence_without_misclassified_tests(setup):
    data, model, meta, store, _, _, _, _ = setup
    index = build_influence_index(store, "v0", data.train, None, model=model, meta=meta, save=False)
    assert index.suspicion_formula == SELF and float(index.suspicion.max()) == 1.0


def _ctx(setup, tasks, images, settings, config=CONFIG) -> PredictContext:
    _, model, meta, _, _, _, _, _ = setup
    with torch.no_grad():
        probs = torch.softmax(model(normalize(to_batch(images, S), meta.mean, meta.std)), 1)
    return PredictContext(1, settings, config, ServedModel(model, meta, "cpu"), tasks, images, probs)


def test_part_pages_for_test_tasks_and_suspicion_scores_for_training_tasks(setup):
    """Our config shows influence as a read-only page (``<HyperText valueType="url">``) with links to the
    tasks; the prediction carries no form field for it."""
    from ml_backend.predict.task_files import InfluencePages

    data, _, meta, store, index, _, _, _ = setup
    settings = Settings(model_dir=store.root.parent, label_studio_url="http://ls.example:8080", influence_top_k=3)
    part = InfluencePart(settings, mode="off")
    test_rec = next(r for r in data.test if r.task_id in data.patched_tests)
    train_rec = next(r for r in data.train if r.task_id in data.poisoned)
    tasks = [{"id": test_rec.task_id, "data": {"split": "test"}}, {"id": train_rec.task_id, "data": {"split": "train"}}]
    out = part(_ctx(setup, tasks, [test_rec.image, train_rec.image], settings))
    assert out.regions == [[], []]
    row = index.row(train_rec.task_id)
    raw = float(index.suspicion[row])
    assert out.scores[0] is None and out.scores[1] == pytest.approx(index.class_rank(raw, int(index.targets[row])))
    pages = InfluencePages(store.root.parent, 1)
    test_page = pages.find(str(test_rec.task_id), meta.version)[0].read_text()
    links = re.findall(r'href="(http://ls\.example:8080/projects/1/data\?task=(\d+))"', test_page)
    assert len(links) == 6 and all(int(t) in index._row for _, t in links)  # 3 proponents + 3 opponents
    assert "supports it" in test_page and "opposes it" in test_page and "confidence" in test_page
    train_page = pages.find(str(train_rec.task_id), meta.version)[0].read_text()
    assert f"Suspicion <b>{raw:.3f}</b>" in train_page and "not a confidence" in train_page
    assert f"more suspicious than {100 * out.scores[1]:.0f}% of its class" in train_page


def test_part_text_for_test_tasks_and_suspicion_scores_for_training_tasks(setup):
    data, _, _, store, index, _, _, _ = setup
    settings = Settings(model_dir=store.root.parent, label_studio_url="http://ls.example:8080", influence_top_k=3)
    part = InfluencePart(settings, mode="off")
    test_rec = next(r for r in data.test if r.task_id in data.patched_tests)
    train_rec = next(r for r in data.train if r.task_id in data.poisoned)
    new_train = {"id": 999, "data": {"split": "train", "label": "circle"}}  # not in the index
    tasks = [{"id": test_rec.task_id, "data": {"split": "test"}}, {"id": train_rec.task_id, "data": {"split": "train"}},
             new_train]
    out = part(_ctx(setup, tasks, [test_rec.image, train_rec.image, data.train[0].image], settings, LEGACY_CONFIG))
    (region,) = out.regions[0]
    assert region["from_name"] == "influence" and region["to_name"] == "image" and region["type"] == "textarea"
    lines = region["value"]["text"]
    assert len(lines) == 1 + 3 + 3  # header, 3 proponents, 3 opponents
    first = lines[1].split()
    assert first[0].startswith("#") and int(first[0][1:]) in index._row and first[1] in CLASSES
    assert float(first[2]) >= float(lines[2].split()[2])
    assert first[3] == f"http://ls.example:8080/projects/1/data?task={first[0][1:]}"
    assert out.scores[0] is None  # test tasks keep the classifier's confidence
    row = index.row(train_rec.task_id)
    assert out.scores[1] == pytest.approx(index.class_rank(float(index.suspicion[row]), int(index.targets[row])))
    assert 0.0 <= out.scores[2] <= 1.0  # a training task added later is scored on the fly
    assert out.regions[1][0]["value"]["text"][0].startswith("suspicion")


def test_part_builds_a_missing_index_once_in_the_background(setup, tmp_path):
    data, model, meta, _, _, _, _, _ = setup
    store = CheckpointStore(tmp_path, 1)
    store.save(model, meta)
    calls = []
    release = threading.Event()

    def source(project_id, config):
        calls.append(project_id)
        release.wait(10)
        return data.train[:30], data.test

    settings = Settings(model_dir=tmp_path)
    part = InfluencePart(settings, record_source=source, mode="background")
    tasks = [{"id": data.test[0].task_id, "data": {"split": "test"}}]
    ctx = _ctx(setup, tasks, [data.test[0].image], settings, LEGACY_CONFIG)
    outs = []
    threads = [threading.Thread(target=lambda: outs.append(part(ctx))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert [o.regions for o in outs] == [[[]]] * 3  # nothing yet, and the requests did not wait
    release.set()
    part.manager.wait(1, "v0", 30)
    assert calls == [1]  # built once
    assert index_path(store, "v0").is_file()
    out = part(ctx)
    assert out.regions[0][0]["type"] == "textarea"


def test_training_tasks_wait_for_the_index_so_their_score_is_always_the_suspicion(setup, tmp_path):
    """A batch with a training task builds the missing index in the request (test-only batches do not
    wait): a training task never goes out with the classifier's confidence as its score."""
    data, model, meta, _, _, _, _, _ = setup
    store = CheckpointStore(tmp_path, 1)
    store.save(model, meta)
    settings = Settings(model_dir=tmp_path)
    part = InfluencePart(settings, record_source=lambda pid, config: (data.train[:30], data.test), mode="background")
    rec = data.train[0]
    out = part(_ctx(setup, [{"id": rec.task_id, "data": {"split": "train"}}], [rec.image], settings))
    assert index_path(store, "v0").is_file()
    index = load_influence_index(store, "v0")
    row = index.row(rec.task_id)
    assert out.scores == [pytest.approx(index.class_rank(float(index.suspicion[row]), int(index.targets[row])))]
    raw = InfluencePart(dataclasses.replace(settings, suspicion_ranking="raw"), mode="off")
    assert raw(_ctx(setup, [{"id": rec.task_id, "data": {"split": "train"}}], [rec.image], settings)).scores == [
        pytest.approx(float(index.suspicion[row]))]


def test_the_class_balanced_ranking_takes_the_top_of_every_class_in_turn(setup):
    """Sorting by the score (the Data Manager's order) reaches every class within the first few images;
    the raw suspicion's top is dominated by a few classes (why painting its top taught less than random)."""
    _, _, _, _, index, _, _, _ = setup
    n_classes = len(index.classes)
    first = index.ranking(balanced=True)[:n_classes]
    classes_of = {int(t): int(c) for t, c in zip(index.task_ids.tolist(), index.targets.tolist())}
    assert {classes_of[t] for t in first} == set(range(n_classes))
    ranks = [index.class_rank(float(v), int(c)) for v, c in zip(index.suspicion.tolist(), index.targets.tolist())]
    assert 0.0 <= min(ranks) and max(ranks) <= 1.0


def test_rank_signs():
    s = torch.tensor([[0.1, -3.0, 2.0, -0.5]])
    assert rank(s, 2, "proponents")[1].tolist() == [[2, 0]]
    assert rank(s, 2, "opponents")[1].tolist() == [[1, 3]]
    assert rank(s, 2, "abs")[1].tolist() == [[1, 2]]
    with pytest.raises(ValueError):
        InfluencePart(Settings(), sign="sideways")


def test_index_from_export_task_records_with_urls(setup):
    """The training job's ``TaskRecord`` (task_id, image_url, target) works with an ImageFetcher; a bad
    image or an unknown class skips that task only."""
    import base64
    import io

    from label_config.export import TaskRecord
    from ml_backend.labelstudio.fetch import FetchPolicy, ImageFetcher
    from ml_backend.settings import Settings

    data, model, meta, _, index, _, _, _ = setup

    def uri(img):
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    records = [TaskRecord(r.task_id, uri(r.image), "train", r.target) for r in data.train[:10]]
    records.append(TaskRecord(5000, "data:image/png;base64,bm90IGFuIGltYWdl", "train", "circle"))
    records.append(TaskRecord(5001, uri(data.train[0].image), "train", "hexagon"))
    built = build_influence_index(None, "v0", records, fetcher=ImageFetcher(None, None, FetchPolicy.from_settings(Settings())), model=model, meta=meta,
                                  save=False)
    assert built.task_ids.tolist() == [r.task_id for r in data.train[:10]]
    assert torch.allclose(built.feats, index.feats[:10], atol=1e-5)
