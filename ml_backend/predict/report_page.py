"""A version's training report (``GET /report/{project}/{version}``), from its ``summary.json``: what the
expert looks at first — what changed (test images the version fixed or broke, each with both versions'
heatmaps) and the attention-on-spurious share before and after — then the accuracy per split, which
split decided what, what the job used or skipped, the curves and the recipe. Everything interpolated is
escaped; the pictures are files of the run folder, named by ``training.changes``."""

from __future__ import annotations

from html import escape
from typing import Any

from ml_backend.predict.pages import html_page, number
from training.changes import CHANGES_DIR, FILE_NAME

DECISION_NAMES = {"gate": "publish gate", "epoch": "kept epoch", "suspicion": "suspicion ranking"}
RECIPE_KEYS = ("mode", "epochs", "batch_size", "optimizer", "lr", "lr_schedule", "augment", "lam", "align",
               "noise_mode", "painted_share", "propagated_masks")


def _accuracy(m: Any) -> str:
    return number(m["accuracy"], ".3f") if isinstance(m, dict) and m.get("accuracy") is not None else "–"


def _share(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) and not isinstance(x, bool) else "–"


def decisions_table(summary: dict[str, Any]) -> str:
    """Which split decided what (``summary["decisions"]``): val decides, test is only reported."""
    decisions = summary.get("decisions") or {}
    rows = "".join(
        f"<tr><td>{escape(DECISION_NAMES[k])}</td><td>{escape(str((d or {}).get('split') or 'nothing (no val split)'))}"
        f"</td><td class=text>{escape(str((d or {}).get('note', '')))}</td></tr>"
        for k, d in ((k, decisions.get(k)) for k in DECISION_NAMES) if isinstance(d, dict))
    if not rows:
        return ""
    return (f"<table><tr><th>decision</th><th>decided on</th><th>how</th></tr>{rows}</table>"
            f"<p class=note>The {escape(str(decisions.get('reported', 'test')))} split is reported only: it "
            "decides nothing.</p>")


def _figure(version: str, parent: str, kind: str, row: Any) -> str:
    """One fixed or broken image: its side-by-side picture and who predicted what (a bad file name: nothing)."""
    name = str(row.get("image", "")) if isinstance(row, dict) else ""
    if not (name.startswith(f"{CHANGES_DIR}/") and FILE_NAME.fullmatch(name.removeprefix(f"{CHANGES_DIR}/"))):
        return ""
    true, old, new = (escape(str(row.get(k, "?"))) for k in ("true", "parent", "new"))
    return (f'<figure class="{kind}"><img src="{escape(version)}/{escape(name)}" alt="{kind}: task '
            f'{escape(str(row.get("task", "?")))}, image, {escape(parent)} heatmap, {escape(version)} heatmap">'
            f"<figcaption>task {escape(str(row.get('task', '?')))} · true <b>{true}</b> · {escape(parent)}: "
            f'<span class="{"neg" if kind == "fixed" else "pos"}">{old}</span> → {escape(version)}: '
            f'<span class="{"pos" if kind == "fixed" else "neg"}">{new}</span></figcaption></figure>')


def changes_section(summary: dict[str, Any]) -> str:
    """"What changed": the test images the version fixed and broke, each picture image | parent's heatmap |
    new heatmap."""
    v, parent = str(summary.get("version", "?")), str(summary.get("parent"))
    changes = summary.get("changes")
    body = "<h4>What changed</h4>"
    if not isinstance(changes, dict):
        return body + f"<p class=note>Not compared with {escape(parent)} (other classes, or no test split).</p>"
    split, method = escape(str(changes.get("split", "test"))), escape(str(changes.get("method", "")))
    body += (f"<p>On the {split} split {escape(v)} <b class=pos>fixed {number(changes.get('fixed', 0))}</b> "
             f"and <b class=neg>broke {number(changes.get('broken', 0))}</b> of {escape(parent)}'s predictions. "
             f"<span class=note>Each picture: the image, {escape(parent)}'s heatmap, {escape(v)}'s heatmap "
             f"({method} saliency, each for its own predicted class).</span></p>")
    shown = changes.get("shown") or {}
    for kind in ("fixed", "broken"):
        rows = shown.get(kind) or []
        figures = "".join(_figure(v, parent, kind, row) for row in rows)
        if figures:
            more = (f" <span class=note>(the {len(rows)} largest changes of the true class's probability of "
                    f"{number(changes.get(kind))})</span>" if len(rows) != changes.get(kind) else "")
            body += f'<p><b>{kind}</b>{more}</p><div class="thumbs" id="{kind}">{figures}</div>'
    return body


def attention_section(summary: dict[str, Any]) -> str:
    """"Attention on spurious pixels": the share of the saliency mass on the masked pixels, per class,
    before (parent) and after (this version), beside the mask's area (what uniform attention scores)."""
    att = summary.get("attention")
    body = "<h4>Attention on spurious pixels</h4>"
    if not isinstance(att, dict) or not att.get("overall"):
        note = att.get("note") if isinstance(att, dict) else "not measured"
        return body + f"<p class=note>{escape(str(note or 'not measured'))}.</p>"
    v, parent = escape(str(summary.get("version", "?"))), escape(str(summary.get("parent")))
    rows = [(escape(str(c)), r) for c, r in sorted((att.get("classes") or {}).items())]
    rows.append(("<b>all</b>", att["overall"]))
    body += (f'<table id="attention"><tr><th>class</th><th>before ({parent})</th><th>after ({v})</th>'
             f"<th>uniform (mask area)</th><th>images</th></tr>"
             + "".join(f"<tr><td>{name}</td><td>{_share(r.get('before'))}</td><td>{_share(r.get('after'))}</td>"
                       f"<td>{_share(r.get('area'))}</td><td>{number(r.get('images', ''))}</td></tr>"
                       for name, r in rows if isinstance(r, dict)) + "</table>")
    return body + (f"<p class=note>The share of each model's {escape(str(att.get('method', '')))} saliency (for its "
                   f"predicted class) that falls on the spurious mask, averaged over the {escape(str(att.get('split')))} "
                   f"images with one ({number(att.get('measured', ''))} of {number(att.get('masked', ''))}: painted "
                   f"{number(att.get('painted', ''))}, the rest proposed by mask propagation). Lower is better; "
                   "the mask's area share is what a model looking everywhere alike would score.</p>")


def recipe_section(summary: dict[str, Any]) -> str:
    """One line of what the job trained with, and every option (with the recipe's reasons) folded away."""
    options = summary.get("options") or {}
    reasons = summary.get("recipe") or {}
    line = ", ".join(f"{k} {number(options[k])}" for k in RECIPE_KEYS if options.get(k) is not None)
    rows = "".join(
        f"<tr><td>{escape(str(k))}</td><td>{number(options[k])}</td>"
        f"<td class=text>{escape(str(reasons[k][1]) if isinstance(reasons.get(k), list) and len(reasons[k]) > 1 else '')}"
        "</td></tr>"
        for k in sorted(options))
    return (f"<p>Recipe: {escape(str(summary.get('arch', '')))} · {line}</p>"
            f"<details><summary>all options</summary><table><tr><th>option</th><th>value</th><th>why</th></tr>"
            f"{rows}</table></details>")


def _accuracy_table(summary: dict[str, Any]) -> str:
    v, parent = str(summary.get("version", "?")), str(summary.get("parent"))
    metrics = summary.get("metrics") or {}
    new, old, delta = metrics.get("new") or {}, metrics.get("parent") or {}, metrics.get("delta_accuracy") or {}
    rows = "".join(
        f"<tr><td>{escape(split)}</td><td>{_accuracy(old.get(split))}</td><td>{_accuracy(m)}</td>"
        f"<td>{number(delta[split], '+.3f') if split in delta else '–'}</td><td>{number(m.get('n', ''))}</td>"
        f"<td>{number(m.get('n_painted', ''))}</td></tr>"
        for split, m in sorted(new.items()) if isinstance(m, dict))
    return (f"<table><tr><th>split</th><th>{escape(parent)}</th><th>{escape(v)}</th><th>Δ accuracy</th>"
            f"<th>images</th><th>painted</th></tr>{rows}</table>")


def _used_and_skipped(summary: dict[str, Any]) -> str:
    counts = summary.get("counts") or {}
    skipped, skipped_ids = counts.get("skipped") or {}, counts.get("skipped_ids") or {}
    ignored = counts.get("ignored_regions") or {}
    body = (f"<p>Training images used: <b>{number(counts.get('train_images', '–'))}</b>, painted: "
            f"<b>{number(counts.get('train_painted', '–'))}</b>, with a propagated mask: "
            f"<b>{number(counts.get('propagated_used', 0))}</b> of {number(counts.get('propagated', 0))} proposed; "
            f"class corrections: {number(counts.get('corrected', 0))}.</p>")
    size = summary.get("input_size")
    if isinstance(size, dict) and size.get("size"):
        body += (f"<p>Model input: <b>{number(size['size'])} px</b> <span class=note>({escape(str(size.get('source', '')))}: "
                 f"{escape(str(size.get('reason', '')))})</span></p>")
    body += decisions_table(summary)
    skip_rows = "".join(
        f"<tr><td>{escape(reason)}</td><td>{number(n)}</td><td>{escape(', '.join(f'#{t}' for t in skipped_ids.get(reason, [])[:30]))}"
        f"</td></tr>" for reason, n in sorted(skipped.items()))
    ignored_rows = "".join(
        f"<tr><td>{escape(reason)}</td><td>{len(ids)}</td><td>{escape(', '.join(f'#{t}' for t in ids[:30]))}</td></tr>"
        for reason, ids in sorted(ignored.items()))
    if skip_rows:
        body += f"<table><tr><th>tasks skipped: why</th><th>n</th><th>tasks</th></tr>{skip_rows}</table>"
    if ignored_rows:
        body += f"<table><tr><th>regions ignored: why</th><th>n</th><th>tasks</th></tr>{ignored_rows}</table>"
    return body


def report_page(summary: dict[str, Any], versions: list[str], curves: bool) -> str:
    """A version's training report from its ``summary.json``."""
    v, parent = str(summary.get("version", "?")), summary.get("parent")
    body = (f"<h3>{escape(v)} <span class=note>from {escape(str(parent))}, {escape(str(summary.get('arch', '')))}, "
            f"{escape(str(summary.get('init', '')))}</span></h3>")
    body += _accuracy_table(summary) + changes_section(summary) + attention_section(summary)
    body += "<h4>Training</h4>" + _used_and_skipped(summary)
    if curves:
        body += f'<p><img src="{escape(v)}/curves.png" alt="training curves of {escape(v)}" style="max-width:100%"></p>'
    body += recipe_section(summary)
    others = " ".join(f'<a href="{escape(o)}">{escape(o)}</a>' for o in versions if o != v)
    if others:
        body += f"<p>Other versions: {others}</p>"
    return html_page(f"report {v}", body)
