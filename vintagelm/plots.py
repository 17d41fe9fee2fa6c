"""Pictures of a run: the training and validation loss curves from metrics.jsonl.

matplotlib is an optional extra (`pip install 'vintagelm[plot]'`), imported only when a plot
is drawn; it renders off-screen (Agg), so no display is needed.
"""
import json
from pathlib import Path

from vintagelm.common import UserError


def read_metrics(run_dir):
    """metrics.jsonl -> {step: row}. When a step appears twice (a run restored an earlier
    checkpoint and went over it again) the later row wins: it is the history that continued."""
    file = Path(run_dir) / "metrics.jsonl"
    if not file.is_file():
        raise UserError(f"no metrics in {run_dir}: {file} not found (is it a run directory of `vintage train`?)")
    rows = {}
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            rows[int(row["step"])] = row
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{file} line {n} is not a metrics record") from None
    return dict(sorted(rows.items()))


def smooth(values, weight=0.9):
    """Exponential moving average with bias correction, so the first points are not dragged to 0."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def plot_losses(run_dir, out_png):
    """Draw train loss (raw and smoothed) and val loss against step; return the PNG path."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'vintagelm[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    train = [(s, r["loss"]) for s, r in rows.items() if r.get("loss") is not None]
    val = [(s, r["val_loss"]) for s, r in rows.items() if r.get("val_loss") is not None]
    if not train and not val:
        raise UserError(f"{Path(run_dir) / 'metrics.jsonl'} has no loss values to plot")
    fig, ax = plt.subplots(figsize=(8, 5))
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
        ax.plot(steps, smooth(losses), color="tab:blue", linewidth=1.5, label="train (smoothed)")
    if val:
        steps, losses = zip(*val)
        ax.plot(steps, losses, "o-", color="tab:orange", linewidth=1.5, markersize=4, label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(f"{Path(run_dir).resolve().name}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out_png
