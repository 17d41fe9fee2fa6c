"""`vintage plot RUN`: draw a run's training and validation loss curves to a PNG."""
HELP = "plot the train/val loss curves of a run (RUN_DIR/metrics.jsonl) to a PNG (needs matplotlib)"


def add_arguments(p):
    p.add_argument("run", metavar="RUN_DIR", help="a run directory written by `vintage train`")
    p.add_argument("--out", metavar="PNG", help="image file (default RUN_DIR/loss.png)")


def run(args):
    from pathlib import Path

    from vintagelm.plots import plot_losses

    out = plot_losses(args.run, args.out or Path(args.run) / "loss.png")
    print(f"wrote {out}")
    return 0
