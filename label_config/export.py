"""Label Studio JSON export -> training records (one per task): image URL, split, class, spurious mask.

``parse_export`` is a pure function over the export's task list (fetching it is the Label Studio
client's job, ``ml_backend.labelstudio.client``), so it is tested without a server.

What a record says about a task:

- ``label``: the ground truth from the task data (``data["label"]``), if any;
- ``target``: the class to train on: the expert's correction in the task's latest non-cancelled
  annotation (the ``class_fix`` choice; in older configs without it, the ``pred_class`` choice) when
  there is one, else ``label``. The model's prediction, which Label Studio pre-fills into
  ``pred_class``, is never a training label in configs that have ``class_fix``;
- ``mask``: the union of the ``Spurious`` brush regions of that annotation, decoded with
  ``label_config.rle.decode_rle`` at the region's ``original_height x original_width`` (``None`` when
  nothing is painted). Magic-wand regions paint too; Label Studio stores a labelled wand region as two
  results with the same id and RLE (``magicwand`` plus the label's ``labels``/``brushlabels``), which
  count as one region (``spurious_regions``).

A task that cannot be used (no image URL, a class not in the label config, a malformed or
inconsistently sized RLE) is skipped with a log line naming its id and counted by reason; one bad
task never fails the export.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from label_config.render import (
    ATTENTION_CONTROL,
    ATTENTION_LABEL,
    SPURIOUS_LABEL,
    ParsedConfig,
)
from label_config.rle import RLEError, decode_rle

log = logging.getLogger(__name__)

TRAIN_SPLIT = "train"
TEST_SPLIT = "test"
VAL_SPLIT = "val"  # decides (publish gate, best epoch, suspicion); test is only reported
KNOWN_REGION_TYPES = ("choices", "brushlabels", "magicwand", "labels", "textarea")  # what our configs produce
MAX_LISTED_IDS = 100  # skipped task ids listed per reason in a job result
MAX_MASK_PIXELS = 64_000_000  # a brush region claiming a larger image is refused (decoding it could exhaust memory)


@dataclass
class TaskRecord:
    """What training needs to know about one Label Studio task."""

    task_id: int
    image_url: str
    split: str
    target: str  # class trained on / evaluated against
    label: str | None = None  # ground truth from the task data
    mask: np.ndarray | None = None  # bool H x W at the annotated (original) size; None = not painted
    annotation_id: int | None = None
    corrected: bool = False  # the annotation's class differs from the data label

    @property
    def painted(self) -> bool:
        return self.mask is not None


@dataclass
class ExportResult:
    """Parsed export: usable records and the tasks skipped, by reason."""

    records: list[TaskRecord]
    n_tasks: int
    skipped: dict[str, list[int]] = field(default_factory=dict)
    ignored_regions: dict[str, list[int]] = field(default_factory=dict)  # reason -> task ids (task kept)

    def skip(self, reason: str, task_id: Any, message: str, level: int = logging.WARNING) -> None:
        log.log(level, "task %s skipped (%s): %s", task_id, reason, message)
        self.skipped.setdefault(reason, []).append(task_id)

    def counts(self) -> dict[str, Any]:
        """JSON-friendly counts for job results."""
        splits = Counter(r.split for r in self.records)
        return {
            "tasks": self.n_tasks,
            "records": len(self.records),
            "by_split": dict(splits),
            "painted": sum(r.painted for r in self.records),
            "painted_train": sum(r.painted for r in self.records if r.split == TRAIN_SPLIT),
            "corrected": sum(r.corrected for r in self.records),
            "skipped": {k: len(v) for k, v in self.skipped.items()},
            "skipped_ids": {k: v[:MAX_LISTED_IDS] for k, v in self.skipped.items()},
            "ignored_regions": {k: len(v) for k, v in self.ignored_regions.items()},
        }


# --------------------------------------------------------------------------------------------------
# parsing


def _list(value: Any) -> list:
    """``value`` if it is a list, else [] (exports come from outside: never trust a field's type)."""
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _annotations(task: dict) -> list[dict]:
    return [a for a in _list(task.get("annotations")) if isinstance(a, dict) and not a.get("was_cancelled")]


def _annotation_order(a: dict) -> tuple[str, int]:
    """Sort key of an annotation: last updated (or created), then id."""
    aid = a.get("id")
    return (str(a.get("updated_at") or a.get("created_at") or ""),
            aid if isinstance(aid, int) and not isinstance(aid, bool) else 0)


def _latest_annotation(task: dict) -> dict | None:
    anns = _annotations(task)
    if not anns:
        return None
    return max(anns, key=_annotation_order)


def _class_choice(annotation: dict, config: ParsedConfig) -> str | None:
    """The expert's class: the correction control's choice where the config has one (its class control
    then only shows the model's prediction, which Label Studio pre-fills), else the class control's."""
    control = config.correction_control or config.class_control
    for region in _list(annotation.get("result")):
        if not isinstance(region, dict) or region.get("type") != "choices":
            continue
        if region.get("from_name") != control:
            continue
        choices = _list(_dict(region.get("value")).get("choices"))
        if choices and isinstance(choices[0], str):
            return choices[0]
    return None


def _is_spurious_brush(region: dict, config: ParsedConfig) -> bool:
    """A result that paints spurious pixels: a ``Spurious`` brush stroke; a magic-wand result (``type:
    "magicwand"``, unlabelled: the wand paints only spurious pixels in our configs); or the ``Spurious``
    label of the wand's ``<Labels>`` on a region with an RLE (``type: "labels"``, the twin of a wand result)."""
    if not isinstance(region, dict) or region.get("to_name") not in (None, config.image_name):
        return False
    kind, value = region.get("type"), _dict(region.get("value"))
    if kind == "magicwand":
        return config.magicwand_control is not None and region.get("from_name") == config.magicwand_control
    if kind == "labels":
        return config.wand_label_control is not None and region.get("from_name") == config.wand_label_control \
            and SPURIOUS_LABEL in _list(value.get("labels")) and "rle" in value
    return kind == "brushlabels" and SPURIOUS_LABEL in _list(value.get("brushlabels"))


def _region_key(region: dict) -> tuple | None:
    """What makes two results one painted region: Label Studio's region id and the RLE (None: no id)."""
    rid = region.get("id")
    if not isinstance(rid, str) or not rid:
        return None
    value = _dict(region.get("value"))
    rle = value.get("rle")
    return rid, region.get("original_height"), region.get("original_width"), \
        tuple(rle) if isinstance(rle, list) else repr(rle)


def spurious_regions(results: Iterable[Any], config: ParsedConfig) -> list[dict]:
    """The results of one annotation (or several) that paint spurious pixels, one per painted region: the
    results Label Studio stores for one labelled wand region (same id, same RLE) are kept once."""
    out, seen = [], set()
    for r in results:
        if not _is_spurious_brush(r, config):
            continue
        key = _region_key(r)
        if key is not None and key in seen:
            continue
        seen.add(key)
        out.append(r)
    return out


def _brush_mask(region: dict) -> np.ndarray:
    """Decode one brush region to a bool mask; raises RLEError for anything unusable."""
    value = _dict(region.get("value"))
    fmt = value.get("format", "rle")
    if fmt != "rle":
        raise RLEError(f"brush region {region.get('id')!r} has format {fmt!r}, expected 'rle'")
    rle = value.get("rle")
    if rle is None:
        raise RLEError(f"brush region {region.get('id')!r} has no 'rle'")
    h, w = region.get("original_height"), region.get("original_width")
    if not isinstance(h, int) or not isinstance(w, int) or isinstance(h, bool) or isinstance(w, bool) or h <= 0 or w <= 0:
        raise RLEError(f"brush region {region.get('id')!r} has no valid original_width/height ({w!r}x{h!r})")
    if h * w > MAX_MASK_PIXELS:
        raise RLEError(f"brush region {region.get('id')!r} claims a {w}x{h} image, more than {MAX_MASK_PIXELS} pixels")
    return decode_rle(rle, h, w)


def _unknown_brush(region: dict, config: ParsedConfig) -> str | None:
    """Why a brush region is not one the config defines (None when it is known)."""
    if not isinstance(region, dict) or region.get("type") != "brushlabels":
        return None
    labels = _dict(region.get("value")).get("brushlabels")
    if not isinstance(labels, list) or not labels:
        return f"brush region {region.get('id')!r} has no labels"
    # attention regions are our own prediction output (older configs pre-fill them): known, never trained on
    attention = config.attention_control or ATTENTION_CONTROL
    known = {c: lb for c, lb in ((config.spurious_control, SPURIOUS_LABEL), (attention, ATTENTION_LABEL)) if c}
    frm = region.get("from_name")
    if not isinstance(frm, str) or frm not in known:
        return f"brush region {region.get('id')!r} is on control {frm!r}, which the label config does not define"
    extra = [lb for lb in labels if lb != known[frm]]
    return f"brush region {region.get('id')!r} has label(s) {extra} unknown to control {frm!r}" if extra else None


def _union_mask(regions: Iterable[dict]) -> np.ndarray | None:
    mask = None
    for region in regions:
        m = _brush_mask(region)
        if mask is None:
            mask = m.copy()
        elif mask.shape != m.shape:
            raise RLEError(
                f"brush regions of one image disagree on its size: {mask.shape[1]}x{mask.shape[0]} "
                f"vs {m.shape[1]}x{m.shape[0]}"
            )
        else:
            mask |= m
    return mask if mask is not None and mask.any() else None


def _task_image(task: Any, config: ParsedConfig, out: ExportResult) -> tuple[Any, dict, str] | None:
    """``(task_id, data, image_url)`` of a task; None after skipping a malformed task or one without an image."""
    if not isinstance(task, dict):
        out.skip("malformed", None, f"export entry is a {type(task).__name__}, not a task object")
        return None
    task_id = task.get("id")
    data = task.get("data")
    if not isinstance(data, dict):
        out.skip("malformed", task_id, f"task data is a {type(data).__name__}, not an object")
        return None
    url = data.get(config.image_value)
    if not isinstance(url, str) or not url:
        out.skip("no_image", task_id, f"task data has no {config.image_value!r} image URL")
        return None
    return task_id, data, url


def _choose_target(label: str | None, choice: str | None, label_source: str) -> str | None:
    """The class to train on: the annotation's ``choice`` or the data ``label``, as ``label_source`` prefers."""
    target = choice if (choice is not None and label_source == "annotation") else label
    if label_source == "data" and target is None:
        target = choice
    return target


def _known_target(target: str | None, choice: str | None, task_id: Any, config: ParsedConfig, classes: set[str],
                  label_key: str, out: ExportResult) -> bool:
    """Whether ``target`` is one of the project's classes; skips the task (unlabelled, unknown_label) if not."""
    if target is None:
        out.skip("unlabelled", task_id, "no class in the task data and no class choice in an annotation", logging.INFO)
        return False
    if target not in classes:
        source = "annotation choice" if target == choice else f"task data {label_key!r}"
        out.skip("unknown_label", task_id, f"{source} {target!r} is not one of the project's classes {config.classes}")
        return False
    return True


def _note_ignored_regions(results: list[dict], config: ParsedConfig, task_id: Any, out: ExportResult) -> None:
    """Log and count the regions that paint no spurious pixels (unknown brush labels, other region types)."""
    for r in results:
        why = _unknown_brush(r, config)
        if why is not None and not _is_spurious_brush(r, config):
            log.warning("task %s: %s; region ignored", task_id, why)
            out.ignored_regions.setdefault("unknown_brush_label", []).append(task_id)
        elif r.get("type") not in KNOWN_REGION_TYPES or (r.get("type") in ("magicwand", "labels")
                                                         and not _is_spurious_brush(r, config)):
            log.warning("task %s: a %r region on %r does not paint spurious pixels; region ignored",
                        task_id, r.get("type"), r.get("from_name"))
            out.ignored_regions.setdefault("unsupported_region", []).append(task_id)


def _annotation_mask(task: dict, annotation: dict, config: ParsedConfig, merge_annotations: bool,
                     task_id: Any, out: ExportResult) -> np.ndarray | None:
    """The union of the spurious regions of ``annotation`` (of every annotation with ``merge_annotations``);
    raises RLEError for a region that cannot be decoded."""
    anns = _annotations(task) if merge_annotations else [annotation]
    results = [r for a in anns for r in _list(a.get("result")) if isinstance(r, dict)]
    _note_ignored_regions(results, config, task_id, out)
    return _union_mask(spurious_regions(results, config))


def _task_record(task: Any, config: ParsedConfig, classes: set[str], out: ExportResult, *, label_key: str,
                 split_key: str, default_split: str, label_source: str, merge_annotations: bool) -> TaskRecord | None:
    """One task's record; None after skipping an unusable task (``out.skip`` says why)."""
    checked = _task_image(task, config, out)
    if checked is None:
        return None
    task_id, data, url = checked
    split = data.get(split_key) or default_split
    label = data.get(label_key)
    label = str(label) if label not in (None, "") else None

    annotation = _latest_annotation(task)
    choice = _class_choice(annotation, config) if annotation else None
    target = _choose_target(label, choice, label_source)
    if not _known_target(target, choice, task_id, config, classes, label_key, out):
        return None

    mask = None
    if annotation is not None:
        try:
            mask = _annotation_mask(task, annotation, config, merge_annotations, task_id, out)
        except RLEError as e:
            out.skip("bad_mask", task_id, f"annotation {annotation.get('id')}: {e}")
            return None
    return TaskRecord(
        task_id=task_id,
        image_url=url,
        split=str(split),
        target=target,
        label=label,
        mask=mask,
        annotation_id=annotation.get("id") if annotation else None,
        corrected=choice is not None and label is not None and choice != label,
    )


def parse_export(
    tasks: list[dict],
    config: ParsedConfig,
    *,
    label_key: str = "label",
    split_key: str = "split",
    default_split: str = TRAIN_SPLIT,
    label_source: str = "annotation",
    merge_annotations: bool = False,
) -> ExportResult:
    """Turn a Label Studio JSON export (list of task dicts) into training records.

    ``label_source="annotation"`` trains on the annotation's class choice when there is one (the
    expert's correction); ``"data"`` always trains on the task-data label. ``merge_annotations``
    takes the union of the ``Spurious`` regions of every non-cancelled annotation (several
    annotators) instead of only the latest one. Tasks without a split count as ``default_split``.
    """
    if label_source not in ("annotation", "data"):
        raise ValueError(f"label_source must be 'annotation' or 'data', got {label_source!r}")
    classes = set(config.classes)
    out = ExportResult(records=[], n_tasks=len(tasks))
    for task in tasks:
        record = _task_record(task, config, classes, out, label_key=label_key, split_key=split_key,
                              default_split=default_split, label_source=label_source,
                              merge_annotations=merge_annotations)
        if record is not None:
            out.records.append(record)
    c = out.counts()
    log.info(
        "export: %d tasks -> %d records (%s), %d painted, skipped %s",
        c["tasks"], c["records"], c["by_split"], c["painted"], c["skipped"] or "none",
    )
    return out
