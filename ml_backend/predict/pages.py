"""Read-only HTML the backend serves to the browser: a task's influence or suspicion (shown in Label
Studio by ``<HyperText name="influence" valueType="url">``, links open the tasks), the shared page frame
and style (a version's training report: ``ml_backend.predict.report_page``). Everything interpolated is
escaped."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

STYLE = ("body{font:13px/1.45 system-ui,sans-serif;margin:.4em;color:#222}"
         "table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
         "th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.neg{color:#b00}.pos{color:#070}"
         ".note{color:#666;font-size:12px}.thumbs{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0}"
         "figcaption{font-size:12px}figure img{width:288px;image-rendering:pixelated}details{margin:.4em 0}td.text{text-align:left}")


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


def html_page(title: str, body: str) -> str:
    """A whole page: ``body`` under the shared style (``body`` is already escaped HTML). An empty icon, so a
    browser opening the page on its own asks for no ``/favicon.ico`` (a 404 in its console)."""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{STYLE}</style></head><body>{body}</body></html>')


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
    return html_page(f"influence {version}", body)


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
    return html_page(f"suspicion {version}", body)


def pending_page(what: str) -> str:
    """Shown before the served version has computed the page (the task was not predicted yet)."""
    return html_page("pending", f'<span class="note">{escape(what)}</span>')


def number(x: Any, spec: str = "") -> str:
    """A number of a summary as page text: formatted when it is one, else its text escaped."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return format(x, spec)
    return escape(str(x))
