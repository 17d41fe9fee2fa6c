"""How well the period filter separates modern from period text, and what it costs.

    python benchmarks/bench_period_filter.py                          # this checkout's filter
    python benchmarks/bench_period_filter.py --compare aa097d4        # ... and the filter of a commit
    python benchmarks/bench_period_filter.py --book gutenberg:/work/shared/data/pride-and-prejudice.txt@1813

1. The team's labelled set (vintagelm/data/period_eval.jsonl), each part (tune, test) at the
   cut-offs 1800, 1850 and 1900: recall = the share of modern paragraphs the filter drops (and
   how many of those the modernity score dropped, not a year or a term); period kept = the share
   of period paragraphs dated before the cut-off that it keeps. The score is fitted on the tune
   part, so its tune recall is in-sample; its held-out estimate (5-fold, on the tune part and the
   team's texts) is printed from modernity.json. And the fresh set (benchmarks/data/
   period_fresh.jsonl), written after the filter was built, without sight of its lexicon, its
   score's texts or the labelled set, and never tuned on: the part to quote.
2. Whole period books (SPEC@YEAR, the year the book was written): the share of their paragraphs
   kept at each cut-off after that year. The builtin plays always, plus any --book.
3. The time of `vintage prepare --tokenizer char --before 1900` on the builtin corpus, as CPU
   seconds of the child process (user + system, the least of --rounds runs; rounds alternate
   between the checkouts so a busy machine slows both alike).

--compare REV checks REV out into a temporary git worktree and measures its filter the same way
(its period.py and term list, imported under another name; the labelled set is this checkout's).
--show-misses lists the modern paragraphs of the TUNE part that pass at 1900; the test part's
misses are never printed, so that nobody tunes on them.
"""
import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from vintagelm.data.clean import split_paragraphs
from vintagelm.data.period import EVAL_FORMAT, EvalItem, eval_items
from vintagelm.data.sources import iter_documents

ROOT = Path(__file__).resolve().parent.parent
CUTOFFS = (1800, 1850, 1900)
BUILTIN_BOOK = ("builtin:shakespeare", 1613)
FRESH_FILE = ROOT / "benchmarks" / "data" / "period_fresh.jsonl"
PARTS = ("tune", "test", "fresh")


def fresh_items():
    """The fresh held-out set as EvalItems of the part "fresh"."""
    lines = FRESH_FILE.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    if (header.get("format"), header.get("version")) != EVAL_FORMAT:
        sys.exit(f"{FRESH_FILE}: not a {EVAL_FORMAT[0]} v{EVAL_FORMAT[1]} file")
    return [EvalItem(row["id"], row["label"], row["topic"], row["text"], row.get("year"), "fresh")
            for row in map(json.loads, lines[1:])]


def period_module(checkout):
    """The period filter module of a checkout's source tree, imported under its own name."""
    path = Path(checkout) / "vintagelm" / "data" / "period.py"
    spec = importlib.util.spec_from_file_location(f"period_at_{abs(hash(str(checkout)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def labelled_rows(module, items):
    """-> [(part, cutoff, recall, caught, by score, modern, kept share, kept, period)]."""
    terms = module.load_terms()
    rows = []
    for cutoff in CUTOFFS:
        flt = module.PeriodFilter(cutoff, terms)
        for part in (p for p in PARTS if any(it.part == p for it in items)):
            modern = [it for it in items if it.part == part and it.label == "modern"]
            period = [it for it in items if it.part == part and it.label == "period" and it.year < cutoff]
            hits = [flt.find(it.text) for it in modern]
            caught = sum(hit is not None for hit in hits)
            by_score = sum(hit is not None and hit.reason == "score" for hit in hits)
            kept = sum(flt.find(it.text) is None for it in period)
            rows.append((part, cutoff, caught / len(modern), caught, by_score, len(modern), kept / len(period), kept,
                         len(period)))
    return rows


def book_paragraphs(spec):
    return [p for doc in iter_documents(spec, unwrap=True) for p in split_paragraphs(doc.text)]


def book_rows(module, books):
    """-> [(spec, cutoff, kept share, kept, paragraphs)] for each cut-off after the book's year."""
    terms = module.load_terms()
    rows = []
    for spec, year, paragraphs in books:
        for cutoff in (c for c in CUTOFFS if c > year):
            flt = module.PeriodFilter(cutoff, terms)
            kept = sum(flt.find(p) is None for p in paragraphs)
            rows.append((spec, cutoff, kept / len(paragraphs), kept, len(paragraphs)))
    return rows


def prepare_cpu_seconds(checkout, out_dir):
    """CPU seconds (user + system) of one `vintage prepare --before 1900` run from `checkout`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": str(checkout)}  # the checkout's package before the installed one
    subprocess.run([sys.executable, "-m", "vintagelm", "prepare", "--tokenizer", "char", "--before", "1900",
                    "--out", str(out_dir)], cwd=checkout, env=env, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def parse_book(text):
    spec, sep, year = text.rpartition("@")
    if not sep or not year.isdigit():
        raise argparse.ArgumentTypeError(f"write SPEC@YEAR, e.g. gutenberg:book.txt@1813, not {text!r}")
    return spec, int(year)


def print_report(name, module, items, books):
    print(f"\n== {name}")
    print("labelled set   cut-off  recall (modern dropped; by score)   period kept (dated before the cut-off)")
    for part, cutoff, recall, caught, by_score, n_modern, kept_share, kept, n_period in labelled_rows(module, items):
        print(f"  {part:<5}        {cutoff}   {recall:6.1%} ({caught:3d}/{n_modern}; {by_score:2d})          "
              f"{kept_share:6.1%} ({kept:3d}/{n_period})")
    score_file = getattr(module, "SCORE_FILE", None)
    if score_file is not None:
        calibration = json.loads(score_file.read_text(encoding="utf-8"))["calibration"]
        print(f"score held out ({calibration['folds']}-fold): {calibration['held_out_modern_caught']:.1%} of modern "
              f"paragraphs caught by the score alone, {calibration['held_out_period_kept']:.1%} of period kept")
    print("period books   cut-off  paragraphs kept")
    for spec, cutoff, share, kept, n in book_rows(module, books):
        print(f"  {spec}  {cutoff}   {share:7.2%} ({kept}/{n})")


def show_tune_misses(module, items):
    flt = module.PeriodFilter(1900, module.load_terms())
    print("\nmodern TUNE paragraphs kept at 1900:")
    for it in items:
        if it.part == "tune" and it.label == "modern" and flt.find(it.text) is None:
            print(f"  {it.id}: {it.text}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--book", action="append", type=parse_book, default=[], metavar="SPEC@YEAR",
                    help="a period book as a prepare source, with the year it was written (repeatable)")
    ap.add_argument("--compare", metavar="REV", help="also measure the filter of this git revision")
    ap.add_argument("--rounds", type=int, default=3, help="timed prepare runs per checkout (default 3; 0: no timing)")
    ap.add_argument("--show-misses", action="store_true", help="list the tune part's modern paragraphs kept at 1900")
    args = ap.parse_args()

    items = eval_items() + fresh_items()
    books = [(spec, year, book_paragraphs(spec)) for spec, year in [BUILTIN_BOOK, *args.book]]
    with tempfile.TemporaryDirectory() as tmp:
        checkouts = {"this checkout": ROOT}
        if args.compare:
            worktree = Path(tmp) / "compare"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.compare],
                           check=True, capture_output=True)
            checkouts[f"revision {args.compare}"] = worktree
        try:
            for name, checkout in checkouts.items():
                print_report(name, period_module(checkout), items, books)
            if args.show_misses:
                show_tune_misses(period_module(ROOT), items)
            if args.rounds > 0:
                seconds = {name: [] for name in checkouts}
                for _ in range(args.rounds):
                    for name, checkout in checkouts.items():
                        seconds[name].append(prepare_cpu_seconds(checkout, Path(tmp) / "prepared"))
                print("\nvintage prepare --tokenizer char --before 1900 (builtin corpus), CPU seconds, least of "
                      f"{args.rounds}:")
                for name, runs in seconds.items():
                    print(f"  {name:<24} {min(runs):6.2f}   (all: {', '.join(f'{s:.2f}' for s in runs)})")
        finally:
            if args.compare:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                               check=True, capture_output=True)


if __name__ == "__main__":
    main()
