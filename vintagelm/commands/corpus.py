"""`vintage corpus`: a period corpus from Project Gutenberg's catalog (vintagelm/data/catalog.py).

    vintage corpus --before 1900 --language en --subject fiction --limit 50 --out corpus1900
    vintage prepare --source corpus1900 --tokenizer bpe --out data1900
"""
from vintagelm.data.catalog import DEFAULT_DELAY_S  # (stdlib only: cheap for `vintage --help`)

HELP = "select Project Gutenberg books by language, subject and authors' dates; download, clean and period-filter them"


def add_arguments(p):
    p.add_argument("--before", type=int, required=True, metavar="YEAR",
                   help="cut-off: keep books whose every named person died before YEAR, and drop their "
                        "paragraphs that the period filter dates YEAR or later")
    p.add_argument("--language", action="append", metavar="CODE",
                   help="repeatable; a book must be in these languages only (default: en)")
    p.add_argument("--subject", action="append", default=[], metavar="WORDS",
                   help="repeatable; keep books with a subject or bookshelf containing WORDS, e.g. fiction "
                        "(default: any subject)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="the first N selected books by number")
    p.add_argument("--catalog", default=None, metavar="FILE|URL",
                   help="pg_catalog.csv, a file or a URL downloaded once into the cache "
                        "(default: the mirror's /cache/epub/feeds/pg_catalog.csv)")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="where books come from (default: $VINTAGELM_GUTENBERG_URL, else https://www.gutenberg.org)")
    p.add_argument("--delay", type=float, default=DEFAULT_DELAY_S, metavar="SECONDS",
                   help=f"pause between two requests (default {DEFAULT_DELAY_S:g}; books in the cache need none)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="downloaded books (default: $VINTAGELM_CACHE/gutenberg, else ~/.cache/vintagelm/gutenberg)")
    p.add_argument("--terms", default=None, metavar="FILE",
                   help="extra modern terms for the period filter, one 'TERM<TAB>YEAR' per line")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="corpus folder (pgID.txt + manifest.json); an earlier corpus there is replaced at the end")


def run(args):
    from vintagelm.data.catalog import Rule, build_corpus, format_summary

    rule = Rule(args.before, tuple(args.language or ["en"]), tuple(args.subject), args.limit)
    manifest = build_corpus(
        args.out, rule, catalog=args.catalog, base_url=args.mirror, cache=args.cache,
        delay=args.delay, terms_file=args.terms,
    )
    print("\n".join(format_summary(manifest, args.out)))
    return 0
