"""`vintage eval CKPT`: loss, perplexity and bits per byte of a checkpoint over a whole split
(or a text file). Bits per byte count only the text, so char and BPE models compare fairly.

`vintage eval RUN --choices FILE` / `--documents FILE`: a task's items scored as
lm-evaluation-harness scores them through `vintage serve` (vintagelm/harness.py): acc and
acc_norm of multiple-choice items, or word and byte perplexity and bits per byte of documents.

`vintage eval RUN --era`: the era card instead (vintagelm/era/metrics.py): is the model
vintage? Surprise at period vs modern text, anachronisms in samples, minimal pairs, cloze and
which word from the val split, and the period filter's precision and recall. It is also
written to RUN/era.json, for the report card."""
from vintagelm.commands import non_negative

HELP = "measure loss, perplexity and bits per byte of a checkpoint on a dataset split or a text file"


def add_arguments(p):
    p.add_argument("ckpt", metavar="CKPT", help="a run directory (its latest checkpoint) or a checkpoint directory")
    p.add_argument("--data", metavar="SPEC_OR_PREPARED_DIR",
                   help="a prepared dataset folder or a source spec (prepared with the checkpoint's tokenizer); "
                        "default: the dataset the checkpoint was trained on")
    p.add_argument("--split", choices=["val", "train"], default="val", help="which split of --data (default val)")
    p.add_argument("--text", metavar="FILE", help="evaluate the whole of this UTF-8 text file instead of a split "
                                                  "(with --era: a period text the model never saw, scored too)")
    p.add_argument("--choices", metavar="FILE.jsonl",
                   help='multiple-choice items, one {"context", "choices", "answer"} a line: acc and acc_norm, '
                        "as lm-eval scores them")
    p.add_argument("--documents", metavar="FILE.jsonl",
                   help='documents, one {"text"} a line, each scored whole from <|endoftext|>: word and byte '
                        "perplexity and bits per byte, as lm-eval's rolling log-likelihood")
    p.add_argument("--context", type=int, metavar="N",
                   help="with --choices or --documents: the most tokens the model sees at once (default: its "
                        "block_size; lm-eval with max_length=M gives M-1)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="windows per forward pass (default 16)")
    p.add_argument("--max-batches", type=int, default=None, metavar="N",
                   help="stop after N batches (default: all; with --era, each text's first 1 MB)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--era", action="store_true",
                   help="the era card: is the model vintage? (also written to RUN/era.json)")
    p.add_argument("--samples", type=non_negative, default=20, metavar="N",
                   help="with --era: samples checked for anachronisms (default 20, at most 1000)")
    p.add_argument("--before", type=int, metavar="YEAR",
                   help="with --era: the period filter's cut-off (default: the one the run's data was prepared "
                        "with, else 1900)")
    p.add_argument("--seed", type=non_negative, default=0, metavar="N",
                   help="with --era: seed of the samples and of the cloze and word items (default 0)")


def run(args):
    from pathlib import Path

    import numpy as np

    from vintagelm.checkpoint import load_checkpoint
    from vintagelm.common import UserError, regular_file
    from vintagelm.data.resolve import resolve_dataset
    from vintagelm.chat.dataset import is_chat_spec, load_chat_dataset
    from vintagelm.evaluate import evaluate_batches, evaluate_split, token_byte_lengths

    if args.batch_size < 1 or (args.max_batches is not None and args.max_batches < 1):
        raise UserError("--batch-size and --max-batches must be at least 1")
    task = args.choices or args.documents
    if task and (args.choices and args.documents or args.era or args.text or args.data):
        raise UserError("--choices and --documents each score one task file alone: leave out --documents or "
                        "--choices, --era, --text and --data")
    if args.context is not None and not task:
        raise UserError("--context sets the window of --choices or --documents; give one of them")
    if args.era:
        from vintagelm.era.metrics import check_samples

        check_samples(args.samples)  # before the checkpoint and the data are read
    ckpt = load_checkpoint(args.ckpt, with_optimizer=False, finite=True)
    tok = ckpt.tokenizer
    if tok is None:
        raise UserError(f"{ckpt.path} has no tokenizer.json to encode the evaluation text with")
    quiet = (lambda msg: None) if args.json else print
    train_config = ckpt.state.get("train_config", {})
    if args.era:
        return era(args, ckpt, quiet)
    if task:
        return harness_task(args, ckpt)
    if args.text:
        try:
            text = regular_file(args.text, "--text").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read --text {args.text}: {e}") from None
        try:
            ids = tok.encode(text, allowed_special="none")
        except UserError as e:
            raise UserError(f"--text {args.text} cannot be encoded with {ckpt.path}'s tokenizer: {e}") from None
        tokens, what = np.asarray(ids, dtype=np.int64), args.text
    elif is_chat_spec(args.data or train_config.get("data", "")):
        # a fine-tuned run: its conversations, scored on the assistant's tokens alone
        spec = args.data or train_config["data"]
        chat = load_chat_dataset(spec, tok, ckpt.model.config.block_size, bool(train_config.get("skip_bad")), quiet)
        x, y = getattr(chat, args.split)
        rows = range(0, len(x), args.batch_size)
        batches = [(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in rows][:args.max_batches]
        result = evaluate_batches(ckpt.model, batches, token_byte_lengths(tok))
        return report(args, ckpt, f"{spec} ({args.split} split, the assistant's tokens)", result)
    else:
        saved = ckpt.state.get("data", {}).get("dataset")
        if args.data is None and saved and Path(saved, "meta.json").is_file():
            spec = saved
        else:
            spec = args.data or train_config.get("data") or "builtin:shakespeare"
        dataset = resolve_dataset(spec, str(ckpt.path / "tokenizer.json"), progress=not args.json, log=quiet)
        if dataset.tokenizer.fingerprint() != tok.fingerprint():
            raise UserError(f"{dataset.path} was tokenized with a different tokenizer than {ckpt.path}")
        tokens, what = getattr(dataset, args.split), f"{dataset.path} ({args.split} split)"
    block = ckpt.model.config.block_size
    if len(tokens) < block + 1:
        raise UserError(f"{what} has {len(tokens)} tokens, fewer than the model's block_size + 1 = {block + 1}; "
                        "evaluate a longer text")
    result = evaluate_split(ckpt.model, tokens, tok, args.batch_size, args.max_batches, progress=not args.json)
    return report(args, ckpt, what, result)


def report(args, ckpt, what, result):
    import json

    result = {"checkpoint": str(ckpt.path), "step": ckpt.step, "data": str(what), **result}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"checkpoint {ckpt.path} (step {ckpt.step}) on {what}: "
              f"{result['tokens']:,} tokens, {result['bytes']:,} bytes")
        print(f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.3f}  "
              f"bits per byte {result['bits_per_byte']:.4f}")
    return 0


def harness_task(args, ckpt):
    """--choices or --documents: the task file's items scored, printed as one line of metrics."""
    import json

    from vintagelm.common import UserError
    from vintagelm.harness import read_choice_items, read_documents, score_choices, score_documents

    size = ckpt.model.config.block_size if args.context is None else args.context
    if not 2 <= size <= ckpt.model.config.block_size:
        raise UserError(f"--context must be from 2 to the model's block_size ({ckpt.model.config.block_size}), "
                        f"got {size}")
    if args.choices:
        result = score_choices(ckpt.model, ckpt.tokenizer, read_choice_items(args.choices), size)
        what, metrics, count = args.choices, ("acc", "acc_norm"), f"{result['items']} items"
    else:
        result = score_documents(ckpt.model, ckpt.tokenizer, read_documents(args.documents), size)
        what, metrics = args.documents, ("word_perplexity", "byte_perplexity", "bits_per_byte")
        count = f"{result['documents']} documents, {result['words']:,} words, {result['bytes']:,} bytes"
    if args.json:
        print(json.dumps({"checkpoint": str(ckpt.path), "step": ckpt.step, "data": what, "context": size, **result}))
    else:
        print(f"checkpoint {ckpt.path} (step {ckpt.step}) on {what}: {count}, windows of {size} tokens")
        print("  ".join(f"{m} {result[m]:.4f}" for m in metrics))
    return 0


def era(args, ckpt, quiet):
    """The era card of a checkpoint on the dataset it was trained on (or --data), printed and
    written to RUN/era.json."""
    import json

    from vintagelm.common import write_json_atomic
    from vintagelm.checkpoint import run_dir_of
    from vintagelm.era.metrics import era_report, format_card, run_dataset

    dataset = run_dataset(ckpt, args.data, progress=not args.json, log=quiet)
    report = era_report(ckpt, dataset, text_file=args.text, samples=args.samples, before=args.before,
                        seed=args.seed, batch_size=args.batch_size, max_batches=args.max_batches,
                        progress=not args.json, log=quiet)
    out = run_dir_of(ckpt.path) / "era.json"
    write_json_atomic(out, report)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_card(report))
        print(f"wrote {out}")
    return 0
