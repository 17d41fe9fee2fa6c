"""tokenizers: what a bigger BPE vocabulary buys, and whether it beats characters at equal time.

Part 1, compression. Byte-level BPE (vintagelm.tokenizers.BPETokenizer) is trained on a slice of
the builtin Shakespeare's training plays at several vocabulary sizes (256 bytes + extra ids:
merged tokens and the 5 special tokens), and each one encodes held-out plays (the two that
`vintage prepare` puts in val): bytes of text per token. Every merge joins a frequent pair into
one id, so the held-out text takes fewer tokens; the gain shrinks as the merges left to learn
get rarer.

Part 2, modelling. Two models of the same shape (n_layer, n_head, n_embd, block_size) are trained
for the same wall time (short_run with seconds=S and a step count it never reaches), one on
characters, one on BPE tokens, and evaluated in bits per byte on the same held-out plays. Their
parameter counts differ only by the embedding table (V x C, tied with the output head): the BPE
model's is larger and its softmax wider, so each step costs more; but each of its T positions
holds several bytes, so a block covers several times more text and each step sees more of the
corpus. Which effect wins depends on the budget; this measures it. Time-based runs are the one
part of the lab that is not deterministic: the step counts depend on the machine's speed.
"""
TITLE = "Tokenizers: bytes per token against BPE vocabulary size; characters against BPE at equal time"
HELP = "bytes per token vs BPE vocabulary size; bits per byte of char vs BPE models trained for equal time"
QUICK = dict(slice_chars=300_000, heldout_chars=100_000, extra=[64, 128, 256, 512], bpe_extra=256,
             train_chars=600_000, n_layer=2, n_head=4, n_embd=64, block_size=64, batch_size=16, lr=2e-3,
             warmup=20, seconds=4.0, eval_batches=8)
DEFAULT = dict(slice_chars=2_000_000, heldout_chars=None, extra=[64, 128, 256, 512, 1024, 2048], bpe_extra=512,
               train_chars=None, n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=16, lr=2e-3,
               warmup=100, seconds=180.0, eval_batches=16)
MAX_STEPS = 10**7  # short_run stops on the clock long before this
WARMUP_STEPS = 3
GRAD_CLIP = 1.0


def add_arguments(p):
    p.add_argument("--seconds", type=float, help="wall time each model trains for")
    p.add_argument("--extra", type=int, nargs="+", metavar="N",
                   help="BPE vocabulary sizes to measure, as ids beyond the 256 bytes (e.g. 64 128 256)")
    p.add_argument("--bpe-extra", type=int, metavar="N", help="the BPE model's vocabulary: 256 + N ids")


def settings(args):
    from vintagelm.common import UserError

    size = dict(QUICK if args.quick else DEFAULT)
    for key in ("seconds", "extra", "bpe_extra"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    size["extra"] = sorted(set(size["extra"]))
    if size["seconds"] <= 0:
        raise UserError(f"--seconds must be positive, not {size['seconds']}")
    for n in [*size["extra"], size["bpe_extra"]]:
        if n < 8:  # the 5 special tokens come out of these ids; leave a few merges
            raise UserError(f"a BPE vocabulary needs at least 256 + 8 ids; got 256 + {n}")
    return size


def bytes_per_token(tokenizer, text):
    return len(text.encode("utf-8")) / len(tokenizer.encode_ordinary(text))


def sweep(train_text, heldout, extras, progress):
    """BPE trained on train_text at vocab 256 + n for each n -> ([row], {n: tokenizer})."""
    import time

    from vintagelm.tokenizers import BPETokenizer

    rows, tokenizers = [], {}
    for n in extras:
        t0 = time.perf_counter()
        tok = BPETokenizer.train(train_text, vocab_size=256 + n)
        seconds = time.perf_counter() - t0
        tokenizers[n] = tok
        rows.append({"extra": n, "vocab_size": tok.vocab_size, "merges": len(tok.merges),
                     "bytes_per_token": bytes_per_token(tok, heldout), "train_seconds": seconds})
        progress.update(1)
    return rows, tokenizers


def run(args, page):
    import numpy as np

    from vintagelm.lab.measure import bar
    from vintagelm.lab.short_run import SplitData, held_out_split, short_run
    from vintagelm.model import GPTConfig
    from vintagelm.tokenizers import CharTokenizer

    size = settings(args)
    plays, val_text = held_out_split()
    train_text = "\n\n".join(plays)
    heldout = val_text[:size["heldout_chars"]]
    extras = sorted(set(size["extra"]) | {size["bpe_extra"]})

    with bar(len(extras), "tokenizers: BPE", not args.no_progress) as progress:
        rows, bpe_tokenizers = sweep(train_text[:size["slice_chars"]], heldout, extras, progress)
    char_tok = CharTokenizer.train([train_text, val_text])
    char_row = {"vocab_size": char_tok.vocab_size, "bytes_per_token": bytes_per_token(char_tok, heldout)}

    model_text = train_text[:size["train_chars"]]
    runs = {}
    for name, tok in (("char", char_tok), ("bpe", bpe_tokenizers[size["bpe_extra"]])):
        data = SplitData(np.asarray(tok.encode_ordinary(model_text), dtype=np.uint16),
                         np.asarray(tok.encode_ordinary(val_text), dtype=np.uint16), tok)
        config = GPTConfig(vocab_size=tok.vocab_size, block_size=size["block_size"], n_layer=size["n_layer"],
                           n_head=size["n_head"], n_embd=size["n_embd"])
        # a few untimed steps first: the first steps of a process compile kernels and grow
        # buffers, a cost that would otherwise come out of the first model's time
        short_run(config, data, WARMUP_STEPS, size["lr"], size["batch_size"], seed=args.seed)
        runs[name] = (data, config)
    models = {}
    for name, (data, config) in runs.items():
        with bar(size["seconds"], f"tokenizers: {name} model", not args.no_progress, unit="s") as progress:
            record = short_run(config, data, MAX_STEPS, size["lr"], size["batch_size"], seed=args.seed,
                               warmup=size["warmup"], grad_clip=GRAD_CLIP, seconds=size["seconds"], progress=progress)
        models[name] = describe_model(record, data, size, args.seed, config)

    page.results.update(size=size, heldout_chars=len(heldout), bpe=[r for r in rows if r["extra"] in size["extra"]],
                        char=char_row, models=models)
    draw(page, page.results["bpe"], char_row, models, size)
    tabulate(page, page.results["bpe"], char_row, models)
    interpret(page, page.results["bpe"], char_row, models, size)


def describe_model(record, data, size, seed, config):
    """What one equal-time run measured: steps, text seen, val bits per byte, parameters."""
    import math

    import numpy as np

    from vintagelm.evaluate import token_byte_lengths
    from vintagelm.lab.short_run import validate

    train_bpt = float(token_byte_lengths(data.tokenizer)[np.asarray(data.train)].mean())  # bytes per training token
    steps = len(record.losses)
    tokens = steps * size["batch_size"] * size["block_size"]
    val_loss, val_bpb = (None, None) if record.diverged else validate(
        record.model, data, size["batch_size"], size["eval_batches"], seed, token_byte_lengths(data.tokenizer))
    step_seconds = record.seconds / max(1, steps)
    # the training loss per token as bits per byte: nats / (ln 2 * bytes per token)
    curve = [[round((i + 1) * step_seconds, 3), None if x is None else x / (math.log(2) * train_bpt)]
             for i, x in enumerate(record.losses)]
    V, C = config.vocab_size, config.n_embd
    return {"vocab_size": V, "params": record.params, "embedding_params": V * C, "steps": steps,
            "seconds": record.seconds, "tokens_seen": tokens, "bytes_per_token": train_bpt,
            "bytes_seen": tokens * train_bpt, "block_bytes": size["block_size"] * train_bpt,
            "diverged": record.diverged, "val_loss": val_loss, "val_bpb": val_bpb, "train_bpb_curve": curve}


def draw(page, rows, char_row, models, size):
    import numpy as np

    from vintagelm.plots import smooth

    fig, ax = page.figure("bytes_per_token", "Bytes of held-out text per token against vocabulary size")
    ax.semilogx([r["vocab_size"] for r in rows], [r["bytes_per_token"] for r in rows], "o-", base=2, label="byte-level BPE")
    ax.semilogx([char_row["vocab_size"]], [char_row["bytes_per_token"]], "s", color="C3", base=2, label="characters")
    for r in rows:
        ax.annotate(f"{r['bytes_per_token']:.2f}", (r["vocab_size"], r["bytes_per_token"]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)
    ax.set(xlabel="vocabulary size (ids)", ylabel="bytes per token", title="compression on held-out plays")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)

    fig, (ax_curve, ax_bar) = page.figure("char_vs_bpe", f"Models of the same shape trained for {size['seconds']:g} s "
                                          "each: training loss as bits per byte against time; held-out bits per byte",
                                          ncols=2)
    for i, (name, m) in enumerate(models.items()):
        t = [c[0] for c in m["train_bpb_curve"]]
        bpb = [np.nan if c[1] is None else c[1] for c in m["train_bpb_curve"]]
        ax_curve.plot(t, smooth(bpb, weight=0.95), color=f"C{i}", label=f"{name} (V = {m['vocab_size']}, {m['steps']} steps)")
    ax_curve.set(xlabel="seconds", ylabel="training bits per byte", title="training")
    ax_curve.legend()
    ax_curve.grid(True, alpha=0.3)
    names = list(models)
    bars = ax_bar.bar(names, [models[n]["val_bpb"] or 0.0 for n in names], color=[f"C{i}" for i in range(len(names))])
    ax_bar.bar_label(bars, labels=[f"{models[n]['val_bpb']:.3f}\n{models[n]['params']:,} params"
                                   if models[n]["val_bpb"] is not None else "diverged" for n in names])
    ax_bar.set(ylabel="bits per byte", title="held-out plays")
    ax_bar.margins(y=0.2)
    ax_bar.grid(True, axis="y", alpha=0.3)


def tabulate(page, rows, char_row, models):
    page.table("bytes per token on the held-out plays", ["tokenizer", "vocabulary", "bytes per token"],
               [["char", char_row["vocab_size"], char_row["bytes_per_token"]]]
               + [["bpe", r["vocab_size"], r["bytes_per_token"]] for r in rows])
    page.table("equal-time models", ["model", "vocabulary", "parameters", "embedding parameters", "steps",
                                     "MB of text seen", "bytes per block", "held-out bits per byte"],
               [[n, m["vocab_size"], m["params"], m["embedding_params"], m["steps"], m["bytes_seen"] / 1e6,
                 m["block_bytes"], m["val_bpb"]] for n, m in models.items()])


def interpret(page, rows, char_row, models, size):
    first, last = rows[0], rows[-1]
    gains = [r["bytes_per_token"] - q["bytes_per_token"] for q, r in zip(rows, rows[1:])]
    shrinking = len(gains) > 1 and gains[-1] < gains[0]
    page.say(f"Bytes per token on held-out plays rose from {first['bytes_per_token']:.2f} at {first['vocab_size']} ids "
             f"to {last['bytes_per_token']:.2f} at {last['vocab_size']} (characters: {char_row['bytes_per_token']:.2f} "
             f"at {char_row['vocab_size']} ids); each step of the sweep added "
             + ", ".join(f"{g:+.2f}" for g in gains) + " bytes per token"
             + (": diminishing returns, since the most frequent pairs are merged first and what is left is rarer."
                if shrinking else ": at these sizes every step still pays, since the slice still has frequent "
                "words left to merge."))
    c, b = models["char"], models["bpe"]
    step_ratio = (b["seconds"] / b["steps"]) / (c["seconds"] / c["steps"])
    page.say(f"So a block of {size['block_size']} positions covers about {c['block_bytes']:.0f} bytes of text for the "
             f"character model and {b['block_bytes']:.0f} for the BPE model ({b['vocab_size']} ids). In "
             f"{size['seconds']:g} s each the character model made {c['steps']} steps and saw "
             f"{c['bytes_seen'] / 1e6:.2f} MB of text, the BPE model {b['steps']} steps and "
             f"{b['bytes_seen'] / 1e6:.2f} MB: a step of its wider embedding and softmax took "
             f"{step_ratio:.2f}x as long as the character model's, and each covers "
             f"{b['bytes_per_token'] / c['bytes_per_token']:.2f}x the text, so it read "
             f"{b['bytes_seen'] / c['bytes_seen']:.2f}x as much in the same time.")
    if c["val_bpb"] is None or b["val_bpb"] is None:
        page.say("The " + " and ".join(n for n, m in models.items() if m["val_bpb"] is None)
                 + f" model diverged at learning rate {size['lr']}, so no held-out bits per byte are compared.")
        return
    winner, loser = ("bpe", "char") if b["val_bpb"] < c["val_bpb"] else ("char", "bpe")
    page.say(f"On the held-out plays the BPE model reached {b['val_bpb']:.3f} bits per byte and the character model "
             f"{c['val_bpb']:.3f}: {winner} won by {abs(b['val_bpb'] - c['val_bpb']):.3f} bits per byte at this "
             f"budget, with {models[winner]['params']:,} parameters against {models[loser]['params']:,} (the "
             f"embedding table alone is {b['embedding_params']:,} for BPE, {c['embedding_params']:,} for characters).")
