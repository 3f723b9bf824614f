"""Read-only HTML the backend serves to the browser: a task's influence or suspicion (shown in Label
Studio by ``<HyperText name="influence" valueType="url">``, links open the tasks), and a version's
training report (curves, accuracy per split parent vs new, what the job used or skipped and why).
Everything interpolated is escaped."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

STYLE = ("body{font:13px/1.45 system-ui,sans-serif;margin:.4em;color:#222}"
         "table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
         "th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.neg{color:#b00}.pos{color:#070}"
         ".note{color:#666;font-size:12px}")


@dataclass
class Neighbour:
    """One training (or test) task related to the shown one."""

    task_id: int
    label: str
    value: float
    url: str | None


def report_url(settings, project_id: int, version: str) -> str | None:
    """Where the backend serves a version's training report (None without BACKEND_PUBLIC_URL)."""
    if not settings.public_url:
        return None
    return f"{settings.public_url.rstrip('/')}/report/{project_id}/{version}"


def _link(n: Neighbour) -> str:
    name = f"#{n.task_id}"
    return f'<a href="{escape(n.url)}" target="_blank" rel="noopener">{name}</a>' if n.url else name


def _rows(items: list[Neighbour]) -> str:
    return "".join(
        f'<tr><td>{_link(n)}</td><td>{escape(n.label)}</td><td class="{"pos" if n.value >= 0 else "neg"}">'
        f"{n.value:+.4g}</td></tr>" for n in items)


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{body}</body></html>")


def _report_link(version: str, report_url: str | None) -> str:
    if not report_url:
        return ""
    return f' <a href="{escape(report_url)}" target="_blank" rel="noopener">{escape(version)}: training report</a>'


def influence_page(version: str, prediction: str, score: str, proponents: list[Neighbour],
                   opponents: list[Neighbour], report_url: str | None = None) -> str:
    """A test task: the training tasks that most supported and most opposed its prediction."""
    body = (f"<b>{escape(version)}</b> predicts <b>{escape(prediction)}</b>.{_report_link(version, report_url)} "
            f'<span class="note">Prediction score = the model\'s confidence. Influence: {escape(score)} '
            "(last layer, TracIn); open a task to paint it.</span>")
    if proponents:
        body += f"<table><tr><th>supports it</th><th>class</th><th>influence</th></tr>{_rows(proponents)}</table>"
    if opponents:
        body += f"<table><tr><th>opposes it</th><th>class</th><th>influence</th></tr>{_rows(opponents)}</table>"
    return _page(f"influence {version}", body)


def suspicion_page(version: str, suspicion: float, formula: str, harmed: list[Neighbour],
                   report_url: str | None = None, class_rank: float | None = None) -> str:
    """A training task: its suspicion score and the misclassified val tasks it harms most."""
    ranked = (f" — more suspicious than {100 * class_rank:.0f}% of its class (the prediction score, so the Data "
              "Manager's sort takes the top of every class in turn)" if class_rank is not None else "")
    body = (f"Suspicion <b>{suspicion:.3f}</b> ({escape(version)}){ranked}.{_report_link(version, report_url)} "
            '<span class="note">For training images the prediction score is this suspicion (how likely the '
            f"image teaches the model a shortcut; sort the Data Manager by it), not a confidence: {escape(formula)}."
            "</span>")
    if harmed:
        body += f"<table><tr><th>harms val task</th><th>class</th><th>influence</th></tr>{_rows(harmed)}</table>"
    return _page(f"suspicion {version}", body)


def pending_page(what: str) -> str:
    """Shown before the served version has computed the page (the task was not predicted yet)."""
    return _page("pending", f'<span class="note">{escape(what)}</span>')


def _accuracy(m: Any) -> str:
    return _number(m["accuracy"], ".3f") if isinstance(m, dict) and m.get("accuracy") is not None else "–"


def _number(x: Any, spec: str = "") -> str:
    """A number of the summary as page text: formatted when it is one, else its text escaped."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return format(x, spec)
    return escape(str(x))


DECISION_NAMES = {"gate": "publish gate", "epoch": "kept epoch", "suspicion": "suspicion ranking"}


def decisions_table(summary: dict[str, Any]) -> str:
    """Which split decided what (``summary["decisions"]``): val decides, test is only reported."""
    decisions = summary.get("decisions") or {}
    rows = "".join(
        f"<tr><td>{escape(DECISION_NAMES[k])}</td><td>{escape(str((d or {}).get('split') or 'nothing (no val split)'))}"
        f"</td><td>{escape(str((d or {}).get('note', '')))}</td></tr>"
        for k, d in ((k, decisions.get(k)) for k in DECISION_NAMES) if isinstance(d, dict))
    if not rows:
        return ""
    return (f"<table><tr><th>decision</th><th>decided on</th><th>how</th></tr>{rows}</table>"
            f"<p class=note>The {escape(str(decisions.get('reported', 'test')))} split is reported only: it "
            "decides nothing.</p>")


def report_page(summary: dict[str, Any], versions: list[str], curves: bool) -> str:
    """A version's training report from its ``summary.json``."""
    v, parent = summary.get("version", "?"), summary.get("parent")
    metrics = summary.get("metrics") or {}
    new, old, delta = metrics.get("new") or {}, metrics.get("parent") or {}, metrics.get("delta_accuracy") or {}
    rows = "".join(
        f"<tr><td>{escape(split)}</td><td>{_accuracy(old.get(split))}</td><td>{_accuracy(m)}</td>"
        f"<td>{_number(delta[split], '+.3f')}</td><td>{_number(m.get('n', ''))}</td><td>{_number(m.get('n_painted', ''))}</td></tr>"
        if split in delta else
        f"<tr><td>{escape(split)}</td><td>{_accuracy(old.get(split))}</td><td>{_accuracy(m)}</td><td>–</td>"
        f"<td>{_number(m.get('n', ''))}</td><td>{_number(m.get('n_painted', ''))}</td></tr>"
        for split, m in sorted(new.items()))
    counts = summary.get("counts") or {}
    skipped = counts.get("skipped") or {}
    skipped_ids = counts.get("skipped_ids") or {}
    ignored = counts.get("ignored_regions") or {}
    skip_rows = "".join(
        f"<tr><td>{escape(reason)}</td><td>{_number(n)}</td><td>{escape(', '.join(f'#{t}' for t in skipped_ids.get(reason, [])[:30]))}"
        f"</td></tr>" for reason, n in sorted(skipped.items()))
    ignored_rows = "".join(
        f"<tr><td>{escape(reason)}</td><td>{len(ids)}</td><td>{escape(', '.join(f'#{t}' for t in ids[:30]))}</td></tr>"
        for reason, ids in sorted(ignored.items()))
    options = summary.get("options") or {}
    others = " ".join(f'<a href="{escape(o)}">{escape(o)}</a>' for o in versions if o != v)
    body = (f"<h3>{escape(v)} <span class=note>from {escape(str(parent))}, {escape(str(summary.get('arch', '')))}, "
            f"{escape(str(summary.get('init', '')))}</span></h3>"
            f"<table><tr><th>split</th><th>{escape(str(parent))}</th><th>{escape(v)}</th><th>Δ accuracy</th>"
            f"<th>images</th><th>painted</th></tr>{rows}</table>"
            f"<p>Training images used: <b>{_number(counts.get('train_images', '–'))}</b>, painted: "
            f"<b>{_number(counts.get('train_painted', '–'))}</b>, with a propagated mask: "
            f"<b>{_number(counts.get('propagated_used', 0))}</b> of {_number(counts.get('propagated', 0))} proposed; "
            f"class corrections: {_number(counts.get('corrected', 0))}.</p>")
    size = summary.get("input_size")
    if isinstance(size, dict) and size.get("size"):
        body += (f"<p>Model input: <b>{int(size['size'])} px</b> <span class=note>({escape(str(size.get('source', '')))}: "
                 f"{escape(str(size.get('reason', '')))})</span></p>")
    body += decisions_table(summary)
    if skip_rows:
        body += f"<table><tr><th>tasks skipped: why</th><th>n</th><th>tasks</th></tr>{skip_rows}</table>"
    if ignored_rows:
        body += f"<table><tr><th>regions ignored: why</th><th>n</th><th>tasks</th></tr>{ignored_rows}</table>"
    if curves:
        body += f'<p><img src="{escape(v)}/curves.png" alt="training curves of {escape(v)}" style="max-width:100%"></p>'
    body += ('<p class="note">' + escape(", ".join(f"{k}={options[k]}" for k in sorted(options))) + "</p>")
    if others:
        body += f"<p>Other versions: {others}</p>"
    return _page(f"report {v}", body)
