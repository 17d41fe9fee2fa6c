"""`vintage lab NAME`: run one experiment of the lab (vintagelm/lab/) and write its folder:
a PNG per figure, results.json with every measured number, and a self-contained index.html
that reads those numbers. `--quick` is a small version (under 2 minutes; the tests use it)."""
import importlib

HELP = "run an experiment that shows why (attention cost, KV cache, gradients, LR and batch, ...)"


def add_arguments(p):
    from vintagelm.lab import EXPERIMENTS

    sub = p.add_subparsers(dest="experiment", metavar="NAME")
    for name, module_name in EXPERIMENTS.items():
        module = importlib.import_module(f"vintagelm.lab.{module_name}")
        q = sub.add_parser(name, help=module.HELP, description=module.HELP)
        q.add_argument("--quick", action="store_true", help="a small version: under 2 minutes")
        q.add_argument("--out", metavar="DIR", help=f"folder to write (default lab/{name})")
        q.add_argument("--seed", type=int, default=0, help="seed of every model and batch (default 0)")
        q.add_argument("--no-progress", action="store_true", help="no progress bars")
        module.add_arguments(q)
        q.set_defaults(_experiment=module)


def run(args):
    from vintagelm.common import UserError
    from vintagelm.lab.common import machine
    from vintagelm.lab.page import LabPage

    if not getattr(args, "experiment", None):
        from vintagelm.lab import EXPERIMENTS

        raise UserError(f"name an experiment: vintage lab NAME, one of {', '.join(EXPERIMENTS)}")
    if args.out is not None and not args.out.strip():
        raise UserError("--out is empty; give a folder, or leave --out out for lab/NAME")
    module = args._experiment
    page = LabPage(args.out or f"lab/{args.experiment}", args.experiment, module.TITLE)
    page.results["machine"] = machine()
    page.results["quick"] = bool(args.quick)
    module.run(args, page)
    index = page.write()
    for sentence in page.sentences:
        print(sentence)
    print(f"wrote {index} (figures, results.json); open it in a browser")
    return 0
