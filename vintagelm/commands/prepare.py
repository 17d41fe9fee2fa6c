"""`vintage prepare`: turn text sources into a tokenized dataset (train.bin, val.bin, meta.json)."""
HELP = "clean, period-filter and tokenize text sources into a prepared dataset folder"


def add_arguments(p):
    p.add_argument(
        "--source", action="append", metavar="SPEC",
        help="repeatable; builtin:shakespeare (default), FILE, DIR (all *.txt), 'GLOB', "
        "gutenberg:FILE_OR_ID (header/licence stripped; an id is downloaded and cached), jsonl:FILE:FIELD",
    )
    p.add_argument("--tokenizer", required=True, metavar="char|bpe|FILE",
                   help="train a char or bpe tokenizer on the cleaned text, or reuse a saved tokenizer file")
    p.add_argument("--vocab-size", type=int, default=None, metavar="N",
                   help="bpe: vocabulary size (default 2048; 1024-4096 suit a small corpus); char: cap on symbols")
    p.add_argument("--before", type=int, default=None, metavar="YEAR",
                   help="drop text that mentions a year >= YEAR or a term that came into use in or after YEAR")
    p.add_argument("--filter-unit", choices=["paragraph", "document"], default="paragraph",
                   help="what a --before hit drops (default: the paragraph)")
    p.add_argument("--terms", default=None, metavar="FILE",
                   help="extra modern terms for --before, one 'TERM<TAB>YEAR' per line (no year: always modern)")
    p.add_argument("--explain", action="store_true", help="show examples of what --before dropped and why")
    p.add_argument("--unwrap", action="store_true",
                   help="join hard-wrapped prose lines into one line per paragraph (verse and indented lines stay)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F", help="share of documents held out for val (default 0.1)")
    p.add_argument("--seed", type=int, default=1337, metavar="N", help="seed of the train/val split (default 1337)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="dataset folder; an earlier dataset there is replaced only when the new one is complete")


def run(args):
    from vintagelm.data.prepare import format_summary, prepare_dataset

    meta = prepare_dataset(
        args.source or ["builtin:shakespeare"], args.tokenizer, args.out, vocab_size=args.vocab_size,
        before=args.before, filter_unit=args.filter_unit, terms_file=args.terms, unwrap=args.unwrap,
        val_fraction=args.val_fraction, seed=args.seed,
    )
    print("\n".join(format_summary(meta, args.out, explain=args.explain)))
    return 0
