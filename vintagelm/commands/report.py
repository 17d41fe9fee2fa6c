"""`vintage report RUN`: a self-contained HTML report card of a training run (curves, gradient
norms per layer, config, data, samples at checkpoints, attention maps, the doctor's findings)."""
HELP = "write a self-contained HTML report card of a run (opens in a browser with no server)"


def add_arguments(p):
    p.add_argument("run", metavar="RUN", help="a run directory")
    p.add_argument("--out", metavar="FILE.html", help="where to write it (default RUN/report.html)")
    p.add_argument("--prompt", help="text whose attention maps are shown (default: a line of the val split)")


def run(args):
    from vintagelm.report_card import write_report

    out = write_report(args.run, args.out, args.prompt)
    print(f"wrote {out}; open it in a browser")
    return 0
