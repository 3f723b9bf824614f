"""What a training run leaves beside its checkpoint: ``curves.png`` (loss per step, accuracy per
epoch) and ``summary.json``, under ``<model_dir>/project-<id>/runs/<version>/``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def save_curves(history: dict[str, Any], path: Path, title: str = "", baseline: dict[str, float] | None = None,
                align: str = "kl") -> Path | None:
    """PNG of the training loss per step and the accuracies per epoch (matplotlib Agg).

    ``baseline`` (split -> parent accuracy) is drawn at epoch 0; ``align`` names the alignment term in the
    legend (``kl``: the symmetric KL, ``l2``: Robustar's ||z - z~||²).
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except Exception as e:
        log.warning("no curves PNG: matplotlib unavailable: %s", e)
        return None
    steps, epochs = history["steps"], history["epochs"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [s["step"] for s in steps]
    align_label = "sym. KL(z, z~) painted" if align == "kl" else "||z-z~||² painted"
    for key, label in (("loss", "loss"), ("ce", "CE(x)"), ("ce_tilde", "CE(x~) painted"), ("align", align_label)):
        if steps and key in steps[0]:
            ax1.plot(xs, [s[key] for s in steps], label=label, lw=1)
    ax1.set_xlabel("step")
    ax1.set_yscale("symlog", linthresh=1e-2)
    ax1.set_title("training loss")
    ax1.legend(fontsize=8)
    ex = [e["epoch"] for e in epochs]
    for key in sorted({k for e in epochs for k in e if k.endswith("_accuracy") or k == "train_acc"}):
        xs_k, ys_k = list(ex), [e.get(key) for e in epochs]
        split = "train" if key == "train_acc" else key[: -len("_accuracy")]
        if baseline and baseline.get(split) is not None:
            xs_k, ys_k = [0] + xs_k, [baseline[split]] + ys_k
        ax2.plot(xs_k, ys_k, marker="o", label=key.replace("train_acc", "train (running)"))
    ax2.set_xlabel("epoch")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_ylim(0, 1.02)
    ax2.set_title("accuracy (epoch 0 = parent)")
    ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def jsonable(obj: Any) -> Any:
    """Plain JSON types only (what torch.load(weights_only=True) and RQ results accept)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    """``summary.json`` of a run (plain JSON types)."""
    path = run_dir / "summary.json"
    path.write_text(json.dumps(jsonable(summary), indent=1))
    return path


def write_version_report(project: str, summary: dict[str, Any], arch: str, opts: Any,
                         history: dict[str, Any], parent_metrics: dict[str, Any], run_dir: Path) -> None:
    """A version's ``curves.png`` and ``summary.json`` under ``run_dir`` (a failure is logged, never raised); records
    ``summary["curves"]`` and the time taken."""
    t = time.perf_counter()
    version, parent_version = summary["version"], summary["parent"]
    title = (f"{project} {version} (from {parent_version}, {arch}, λ={opts.lam} {opts.align.upper()} "
             f"alignment, {opts.noise_mode} fill)")
    try:
        baseline = {k: v.get("accuracy") for k, v in parent_metrics.items() if isinstance(v, dict)}
        png = save_curves(history, run_dir / "curves.png", title, baseline, align=opts.align)
        summary["curves"] = str(png) if png else None
        write_summary(run_dir, summary)
    except Exception as e:  # reporting must not fail a published version
        log.warning("could not write curves/summary under %s: %s", run_dir, e)
    summary["timings"]["report"] = round(time.perf_counter() - t, 3)
