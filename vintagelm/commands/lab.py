"""`vintage lab NAME`: run one experiment of the lab (vintagelm/lab/) and write its folder:
a PNG per figure, results.json with every measured number, and a self-contained index.html
that reads those numbers. `--quick` is a small version (under 2 minutes; the tests use it).

--out is checked before the experiment starts (a file, a folder of the user's, a disk that
refuses writes: one line, no work lost), and the page replaces an earlier one only whole
(lab/page.py: check_out, LabPage.staged)."""
import importlib
from pathlib import Path

from vintagelm.commands import non_negative

HELP = "run an experiment that shows why (attention cost, KV cache, gradients, LR and batch, ...)"


def add_arguments(p):
    from vintagelm.lab import EXPERIMENTS

    sub = p.add_subparsers(dest="experiment", metavar="NAME")
    for name, module_name in EXPERIMENTS.items():
        module = importlib.import_module(f"vintagelm.lab.{module_name}")
        q = sub.add_parser(name, help=module.HELP, description=module.HELP)
        q.add_argument("--quick", action="store_true", help="a small version: under 2 minutes")
        q.add_argument("--out", metavar="DIR", help=f"folder to write (default lab/{name})")
        q.add_argument("--seed", type=non_negative, default=0, help="seed of every model and batch (default 0)")
        q.add_argument("--no-progress", action="store_true", help="no progress bars")
        module.add_arguments(q)
        q.set_defaults(_experiment=module)


def run(args):
    from vintagelm.common import UserError, disk_errors
    from vintagelm.lab.measure import machine
    from vintagelm.lab.page import LabPage, check_out

    if not getattr(args, "experiment", None):
        from vintagelm.lab import EXPERIMENTS

        raise UserError(f"name an experiment: vintage lab NAME, one of {', '.join(EXPERIMENTS)}")
    if args.out is not None and not args.out.strip():
        raise UserError("--out is empty; give a folder, or leave --out out for lab/NAME")
    out = Path(args.out or f"lab/{args.experiment}")
    folder = check_out(out, args.experiment)
    module = args._experiment
    page = LabPage(folder, args.experiment, module.TITLE)
    page.results["machine"] = machine()
    page.results["quick"] = bool(args.quick)
    with disk_errors(out), page.staged(folder):
        module.run(args, page)
        page.write()
    for sentence in page.sentences:
        print(sentence)
    print(f"wrote {out / 'index.html'} (figures, results.json); open it in a browser")
    return 0
