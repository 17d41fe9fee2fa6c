"""The `vintage` command line: one subcommand per module in `vintagelm/commands/`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
This file only wires them together and turns a `UserError` into one line on stderr with
exit status 2, and a reader that closes the pipe early into a quiet exit (status 141, as for any
program `head` stops). Heavy imports happen inside each `run`, so `vintage --help` stays fast.
"""
import argparse
import importlib
import os
import sys

from vintagelm.common import UserError, set_blas_threads

# subcommand name -> module under vintagelm.commands (in the order `--help` lists them)
COMMANDS = {
    "gradcheck": "gradcheck",
    "tokenizer": "tokenizer",
    "corpus": "corpus",
    "prepare": "prepare",
    "train": "train",
    "finetune": "finetune",
    "eval": "eval",
    "plot": "plot",
    "export": "export",
    "sample": "sample",
    "chat": "chat",
    "serve": "serve",
    "lab": "lab",
    "report": "report",
    "doctor": "doctor",
}
SIGPIPE_STATUS = 141  # 128 + SIGPIPE: how a shell reports a program that wrote into a closed pipe


def build_parser():
    parser = argparse.ArgumentParser(
        prog="vintage", description="vintagelm: a vintage GPT written from scratch in NumPy."
    )
    parser.add_argument(
        "--threads", type=int, metavar="N",
        help="BLAS threads for matrix multiplies (default: all cores). Use 1 when other programs "
             "keep the CPU busy: OpenBLAS workers that wait for a busy core slow every step.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"vintagelm.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def abort_other_ranks(code):
    """Under mpirun, a rank that stops on an error must not leave the others waiting in a
    collective: end the whole job (dist.py)."""
    from vintagelm import dist

    if dist.launched_by_mpi() and dist.world().size > 1:
        dist.world().abort(code)


def main(argv=None):
    try:
        try:
            return run_command(argv)
        finally:
            sys.stdout.flush()  # what is still buffered goes out here, where a closed pipe is caught
    except BrokenPipeError:
        return reader_went_away()


def reader_went_away():
    """The reader of our output closed it (`vintage doctor RUN | head -3`): stop without a word,
    as a C program killed by SIGPIPE does, and with the status a shell gives that program (what
    `set -o pipefail` sees). Standard output now points at /dev/null so that the interpreter's
    own flush at exit does not meet the closed pipe again (the recipe in Python's documentation
    of the signal module, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    abort_other_ranks(SIGPIPE_STATUS)
    return SIGPIPE_STATUS


def run_command(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print("vintage: error: --threads must be at least 1", file=sys.stderr)
            return 2
        set_blas_threads(args.threads)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"vintage {args.command}: error: {e}", file=sys.stderr)
        abort_other_ranks(2)
        return 2
    except KeyboardInterrupt:
        print(f"vintage {args.command}: interrupted", file=sys.stderr)
        return 130
