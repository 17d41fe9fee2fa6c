"""`vintage bench`: training speed, memory and MFU against the PyTorch reference."""
HELP = "benchmark training speed, peak memory and MFU against the torch reference (tiny, baby)"


def add_arguments(p):
    from vintagelm.bench import BENCH_CONFIGS

    p.add_argument("--config", action="append", choices=list(BENCH_CONFIGS),
                   help="benchmark config (repeatable; default: all)")
    p.add_argument("--threads", type=int, default=2, help="BLAS/torch threads for both (default 2)")
    p.add_argument("--rounds", type=int, default=7, help="alternating timing rounds (default 7)")
    p.add_argument("--no-torch", action="store_true", help="skip the torch reference")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child processes")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def run(args):
    from vintagelm.bench import BENCH_CONFIGS, format_report, run_bench, to_json, torch_available
    from vintagelm.common import UserError

    if args.threads < 1 or args.rounds < 1:
        raise UserError("--threads and --rounds must be at least 1")
    names = args.config or list(BENCH_CONFIGS)
    if not args.no_torch and not torch_available() and not args.json:
        print("torch reference not available (needs a source checkout with `pip install -e '.[test]'`); "
              "timing vintagelm alone")
    result = run_bench(names, args.threads, args.rounds, with_torch=not args.no_torch, with_memory=not args.no_memory)
    print(to_json(result) if args.json else format_report(result, names))
    return 0
