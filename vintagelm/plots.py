"""Pictures of a run: the training and validation loss curves from metrics.jsonl, and what
every picture of the project shares (pyplot off-screen, the smoothing of a noisy curve).

matplotlib is an optional extra (`pip install 'vintagelm[plot]'`), imported only when a plot
is drawn; it renders off-screen (Agg), so no display is needed.
"""
from pathlib import Path

from vintagelm.common import UserError


def pyplot():
    """pyplot on the off-screen Agg backend; a UserError naming the extra when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'vintagelm[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(values, weight=0.9):
    """Exponential moving average with bias correction, so the first points are not dragged to 0.
    About the last 1 / (1 - weight) values count; a NaN (a step with no finite value) carries on."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def loss_figure(rows, title):
    """Train loss (raw and smoothed) and val loss against step, from metrics rows -> a figure."""
    plt = pyplot()
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
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
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    return fig


def plot_losses(run_dir, out_png):
    """Draw a run's loss curves (loss_figure) into a PNG -> its path."""
    from vintagelm.run_metrics import read_metrics

    plt = pyplot()  # before reading: a missing matplotlib is said first
    rows, _ = read_metrics(run_dir)
    if not any(r.get("loss") is not None or r.get("val_loss") is not None for r in rows.values()):
        raise UserError(f"{Path(run_dir) / 'metrics.jsonl'} has no loss values to plot")
    fig = loss_figure(list(rows.values()), f"{Path(run_dir).resolve().name}: loss")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out_png
