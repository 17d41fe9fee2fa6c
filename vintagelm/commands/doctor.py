"""`vintage doctor RUN`: name what went wrong in a training run, with the evidence from its
metrics and what to try (vintagelm/doctor.py holds the rules, vintagelm/run_metrics.py reads the run)."""
HELP = "diagnose a run from its metrics: divergence, no learning, plateau, overfitting, spikes, slowdowns"


def add_arguments(p):
    p.add_argument("run", metavar="RUN", help="a run directory (metrics.jsonl and config.json)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args):
    from vintagelm.doctor import diagnose, report_json, report_text
    from vintagelm.run_metrics import load_run

    run_ = load_run(args.run)
    findings = diagnose(run_)
    print(report_json(run_, findings) if args.json else report_text(run_, findings))
    return 0
