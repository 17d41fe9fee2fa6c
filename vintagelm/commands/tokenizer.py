"""`vintage tokenizer`: train a tokenizer, and encode, decode or inspect with one.

    vintage tokenizer train --type bpe --vocab-size 4096 --input plays.txt --out tok.json
    vintage tokenizer encode tok.json --text "To be, or not to be"
    vintage tokenizer decode tok.json 1026 279 11
    vintage tokenizer info tok.json [--tokens 20]
    vintage tokenizer export-hf tok.json --out tokenizer.json
"""
from vintagelm.common import UserError, regular_file

HELP = "train a char or byte-level BPE tokenizer; encode, decode and inspect with one"


def add_arguments(p):
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train a tokenizer on text files or corpus sources")
    t.add_argument("--type", choices=["char", "bpe"], default="bpe", help="tokenizer kind (default bpe)")
    t.add_argument("--vocab-size", type=int, help="bpe: total ids (256 bytes + merges + specials), e.g. 4096; "
                   "char: optional cap (the text decides the size)")
    t.add_argument("--input", action="append", default=[], metavar="FILE", help="UTF-8 text file (repeatable)")
    t.add_argument("--source", action="append", default=[], metavar="SPEC",
                   help="corpus source of the data pipeline, e.g. builtin:shakespeare (repeatable)")
    t.add_argument("--pattern", default="gpt4", help="bpe split regex: gpt4 (default), gpt2, or a regex of your own")
    t.add_argument("--unknown", choices=["error", "reserve"], default="error",
                   help="char: unseen characters raise an error (default) or map to a reserved <|unk|> id")
    t.add_argument("--special", action="append", metavar="TOKEN",
                   help="a special token (repeatable); default: <|endoftext|> and the chat-role tokens")
    t.add_argument("--no-special", action="store_true", help="no special tokens at all")
    t.add_argument("--out", required=True, metavar="TOKENIZER.json", help="where to write the tokenizer")

    e = sub.add_parser("encode", help="print the ids of a text")
    e.add_argument("tokenizer", metavar="TOKENIZER.json")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to encode")
    src.add_argument("--file", help="a UTF-8 file to encode")
    e.add_argument("--allow-special", action="store_true",
                   help="encode special-token strings as their ids (default: refuse them)")
    e.add_argument("--json", action="store_true", help="print a JSON list instead of space-separated ids")

    d = sub.add_parser("decode", help="print the text of some ids")
    d.add_argument("tokenizer", metavar="TOKENIZER.json")
    d.add_argument("ids", nargs="+", type=int, metavar="ID")

    i = sub.add_parser("info", help="print type, vocab size, specials, pattern and fingerprint")
    i.add_argument("tokenizer", metavar="TOKENIZER.json")
    i.add_argument("--tokens", type=int, default=0, metavar="N", help="also list the last N ordinary tokens")

    x = sub.add_parser("export-hf", help="write a Hugging Face tokenizer.json with identical ids")
    x.add_argument("tokenizer", metavar="TOKENIZER.json")
    x.add_argument("--out", required=True, metavar="tokenizer.json")


def run(args):
    return {"train": train, "encode": encode, "decode": decode, "info": info, "export-hf": export_hf}[args.action](args)


def train(args):
    from vintagelm.tokenizers import DEFAULT_SPECIAL_TOKENS, BPETokenizer, CharTokenizer

    texts = training_texts(args.input, args.source)
    specials = [] if args.no_special else (args.special or list(DEFAULT_SPECIAL_TOKENS))
    if args.type == "bpe":
        if args.vocab_size is None:
            raise UserError("--vocab-size is required for a bpe tokenizer (e.g. 4096)")
        tok = BPETokenizer.train(texts, args.vocab_size, specials, pattern=args.pattern, progress=True)
    else:
        tok = CharTokenizer.train(texts, args.vocab_size, specials, unknown=args.unknown)
    if tok.n_ordinary <= (256 if args.type == "bpe" else 0):
        raise UserError("the training text is empty (or too short to learn a single merge)")
    out = tok.save(args.out)
    print(f"trained {describe(tok)}")
    print(f"fingerprint {tok.fingerprint()}; saved to {out}")
    return 0


def training_texts(files, specs):
    """Yield the text of each --input file, then each document of each --source spec."""
    if not files and not specs:
        raise UserError("give the training text with --input FILE or --source SPEC")
    for path in files:
        yield read_text(path)
    if specs:
        from vintagelm.data.sources import iter_documents

        for spec in specs:
            for doc in iter_documents(spec):
                yield doc.text


def encode(args):
    tok = load(args.tokenizer)
    text = args.text if args.text is not None else read_text(args.file)
    ids = tok.encode(text, allowed_special="all" if args.allow_special else "none_raise")
    if args.json:
        import json

        print(json.dumps(ids))
    else:
        print(" ".join(map(str, ids)))
    return 0


def decode(args):
    print(load(args.tokenizer).decode(args.ids))
    return 0


def info(args):
    from vintagelm.tokenizers.pretokenize import pattern_name

    tok = load(args.tokenizer)
    print(f"file         {args.tokenizer}")
    print(f"tokenizer    {describe(tok)}")
    if tok.type_name == "bpe":
        print(f"pattern      {pattern_name(tok.pattern)}: {tok.pattern}")
    else:
        print(f"unknown      {tok.unknown}" + (f" (<|unk|> = {tok.unk_id})" if tok.unk_id is not None else ""))
        print(f"chars        {''.join(tok.chars)!r}")
    specials = ", ".join(f"{s}={i}" for s, i in tok.special_tokens.items())
    print(f"specials     {specials or '(none)'}")
    print(f"fingerprint  {tok.fingerprint()}")
    if args.tokens > 0:
        first = max(0, tok.n_ordinary - args.tokens)
        print(f"last {tok.n_ordinary - first} ordinary tokens:")
        for token_id in range(first, tok.n_ordinary):
            print(f"  {token_id:>6}  {tok.decode_bytes([token_id]).decode('utf-8', errors='backslashreplace')!r}")
    return 0


def export_hf(args):
    tok = load(args.tokenizer)
    out = tok.export_hf(args.out)
    print(f"wrote {out} (Hugging Face tokenizers; ids identical to {args.tokenizer})")
    return 0


def describe(tok):
    """One line: kind and how the vocab splits into ordinary and special ids."""
    if tok.type_name == "bpe":
        parts = f"256 bytes + {tok.n_ordinary - 256} merged tokens"
    else:
        parts = f"{len(tok.chars)} characters" + (" + <|unk|>" if tok.unk_id is not None else "")
    return f"{tok.type_name}, vocab size {tok.vocab_size} ({parts} + {len(tok.special_tokens)} specials)"


def load(path):
    from vintagelm.tokenizers import load_tokenizer

    return load_tokenizer(path)


def read_text(path):
    """A UTF-8 file's text exactly as stored: newline="" keeps "\r\n" (no newline translation)."""
    try:
        with open(regular_file(path), encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
