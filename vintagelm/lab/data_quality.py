"""data-quality: what duplicated passages, OCR noise and modern text in the training data do.

The same small model (same config, steps, learning rate and seed) is trained on four versions
of the builtin Shakespeare's training plays, each the same number of characters long:
    clean       the plays as they are
    duplicated  a few short passages (dup_chars characters in all) copied over and over until
                the copies are dup_share of the text; the rest is clean. `vintage prepare`
                drops exact duplicate paragraphs; this experiment builds its splits itself to
                show what a corpus without that step does to a model.
    ocr         every character is, with probability ocr_rate, the site of one OCR-style error
                (a look-alike glyph: rn->m, l->1, e->c ...; a dropped or stray character; a
                word broken in two or two run together): `ocr_noise`
    modern      original modern-English paragraphs (modern_paragraphs.txt beside this module,
                written for this experiment:
                email, smartphones, airports, software ...) cycled in until they are
                modern_share of the text
All four are encoded by ONE character tokenizer trained on the union of their characters (and
the validation text's), so every model has the same vocabulary and the same output layer, and
all are evaluated on the SAME clean held-out plays (the two `vintage prepare` puts in val) in
bits per byte. The train/val gap is the validation loss minus the loss on the model's own
training text, both measured at the end on fixed random windows: a model that learned copies
by heart has a low training loss and a high validation loss. Each model then writes a few
samples, and the period filter (data/period.py, with the shipped term list) counts the modern
terms in them.
"""
from collections import Counter

TITLE = "Data quality: duplicated passages, OCR noise and modern text against clean Shakespeare"
HELP = "one model trained on clean, duplicated, OCR-noisy and modern-mixed text: val bits per byte, gap, samples"
QUICK = dict(n_layer=2, n_head=4, n_embd=64, block_size=64, batch_size=16, steps=250, lr=2e-3, warmup=40,
             eval_every=25, eval_batches=8, train_chars=600_000, dup_chars=4_000, samples=4, sample_tokens=200)
DEFAULT = dict(n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=16, steps=1000, lr=2e-3, warmup=100,
               eval_every=100, eval_batches=12, train_chars=None, dup_chars=20_000, samples=10, sample_tokens=400)
SETTINGS = dict(dup_share=0.8, ocr_rate=0.08, modern_share=0.2, before=1900)  # both sizes; options override
VARIANTS = ("clean", "duplicated", "ocr", "modern")
# what `vintage doctor` should find in each saved run: the duplicated one learns its copies by
# heart. The noisy and mixed runs train normally; what is wrong with them is in their text (their
# data summaries say what), not in a loss curve, so they carry a label of their own.
EXPECTED = {"clean": "healthy", "duplicated": "overfit", "ocr": "noisy-data", "modern": "mixed-data"}
GRAD_CLIP = 1.0
EXCERPT_CHARS = 160
# below `vintage sample`'s 0.8: at 0.8 a small model misspells most long words it knows, and the
# period filter counts only a term spelled out ("smotphone" is no smartphone)
SAMPLE_TEMPERATURE = 0.6

# original sentences of everyday modern life, one paragraph each; every paragraph names at least
# one term of the shipped list that is modern for a cut-off of 1900, or a year after it
MODERN_FILE = "modern_paragraphs.txt"
# glyphs an OCR engine confuses on worn or badly inked type (the first two letters of a pair count as one site)
LOOKALIKES = {
    "rn": "m", "m": "rn", "cl": "d", "d": "cl", "vv": "w", "w": "vv",
    "l": "1", "1": "l", "I": "l", "i": "l", "e": "c", "c": "e", "o": "0", "O": "0",
    "h": "b", "b": "h", "n": "u", "u": "n", "f": "t", "t": "f", "a": "o", "s": "5", "S": "5", "B": "8",
}
STRAY = ".,'-~^"  # specks of ink or dirt read as marks
OCR_KINDS = ("lookalike", "drop", "stray", "break")


def add_arguments(p):
    p.add_argument("--steps", type=int, help="training steps of every model")
    p.add_argument("--dup-share", type=float, metavar="F", help=f"share of the duplicated text made of copies "
                   f"(default {SETTINGS['dup_share']})")
    p.add_argument("--ocr-rate", type=float, metavar="F", help=f"OCR errors per character (default {SETTINGS['ocr_rate']})")
    p.add_argument("--modern-share", type=float, metavar="F", help=f"share of modern text in the modern variant "
                   f"(default {SETTINGS['modern_share']})")
    p.add_argument("--before", type=int, metavar="YEAR", help=f"cut-off year that makes a term modern in the samples' "
                   f"count (default {SETTINGS['before']})")


def ocr_noise(text, rate, seed):
    """text -> (noisy text, Counter of edits by kind). Each character is, independently with
    probability `rate`, the site of one edit: with probability 1/2 a look-alike glyph where it
    (or it and the next character, as "rn") has one; otherwise a dropped character, a stray
    mark inserted before it, or a broken word (a space inside a word after it, or a space
    between two words lost), one of the three at random. A site inside a pair just replaced
    is skipped, so the edits per character are `rate` less a hair. Deterministic for a seed."""
    import numpy as np

    rng = np.random.default_rng([seed, 7])
    sites = np.flatnonzero(rng.random(len(text)) < rate)  # (n_sites,) positions to corrupt
    lookalike_u, kind_u, stray_i = rng.random(len(sites)), rng.random(len(sites)), rng.integers(len(STRAY), size=len(sites))
    pieces, edits, at = [], Counter(), 0  # `at`: the first character not yet copied or replaced
    for site, u, v, s in zip(sites.tolist(), lookalike_u.tolist(), kind_u.tolist(), stray_i.tolist()):
        if site < at:
            continue
        pieces.append(text[at:site])
        pair, ch = text[site:site + 2], text[site]
        if u < 0.5 and pair in LOOKALIKES:
            pieces.append(LOOKALIKES[pair])
            kind, at = "lookalike", site + 2
        elif u < 0.5 and ch in LOOKALIKES:
            pieces.append(LOOKALIKES[ch])
            kind, at = "lookalike", site + 1
        elif v < 1 / 3:
            kind, at = "drop", site + 1
        elif v < 2 / 3:
            pieces.append(STRAY[s] + ch)
            kind, at = "stray", site + 1
        else:
            pieces.append("" if ch == " " else ch + " ")
            kind, at = "break", site + 1
        edits[kind] += 1
    pieces.append(text[at:])
    return "".join(pieces), edits


def modern_text():
    """The modern paragraphs (MODERN_FILE), joined by blank lines."""
    from pathlib import Path

    return Path(__file__).with_name(MODERN_FILE).read_text(encoding="utf-8").rstrip("\n")


def modern_paragraphs():
    from vintagelm.data.clean import split_paragraphs

    return split_paragraphs(modern_text())


def training_paragraphs(plays, limit):
    """Paragraphs of whole plays, in order, until `limit` characters (None: every play)."""
    from vintagelm.data.clean import split_paragraphs

    paragraphs, total = [], 0
    for play in plays:
        if limit is not None and total >= limit:
            break
        paragraphs += split_paragraphs(play)
        total += len(play)
    return paragraphs


def mix_in(base, extra, share, rng):
    """A list of paragraphs as long (in characters) as `base`: base's paragraphs from the start
    until (1 - share) of that length, and `extra`'s, cycled in a fresh random order each round,
    until `share`; the extras are scattered among the base paragraphs, whose order stays."""
    total = sum(len(p) + 2 for p in base)  # + 2: the blank line that joins paragraphs
    kept, n = [], 0
    for p in base:
        if n >= (1 - share) * total:
            break
        kept.append(p)
        n += len(p) + 2
    added, n = [], 0
    while n < share * total:
        for i in rng.permutation(len(extra)):
            added.append(extra[i])
            n += len(extra[i]) + 2
            if n >= share * total:
                break
    is_extra = rng.permutation([False] * len(kept) + [True] * len(added))  # where each paragraph goes
    kept_it, added_it = iter(kept), iter(added)
    return [next(added_it) if e else next(kept_it) for e in is_extra]


def duplicated_passages(paragraphs, chars, rng):
    """Random paragraphs of the training text, about `chars` characters in all: what gets copied."""
    chosen, n = [], 0
    for i in rng.permutation(len(paragraphs)):
        if n >= chars:
            break
        chosen.append(paragraphs[i])
        n += len(paragraphs[i]) + 2
    return chosen


def build_variants(paragraphs, size, seed):
    """-> {variant: training text}, {variant: what was done to it}."""
    import numpy as np

    from vintagelm.data.clean import join_paragraphs

    rng = np.random.default_rng([seed, 5])
    passages = duplicated_passages(paragraphs, size["dup_chars"], rng)
    clean = join_paragraphs(paragraphs)
    noisy, edits = ocr_noise(clean, size["ocr_rate"], seed)
    modern = modern_paragraphs()
    modern_chars = len(modern_text())
    texts = {
        "clean": clean,
        "duplicated": join_paragraphs(mix_in(paragraphs, passages, size["dup_share"], rng)),
        "ocr": noisy,
        "modern": join_paragraphs(mix_in(paragraphs, modern, size["modern_share"], rng)),
    }
    copied = sum(len(p) + 2 for p in passages)
    notes = {
        "clean": {},
        "duplicated": {"dup_share": size["dup_share"], "passages": len(passages), "passage_chars": copied,
                       "copies_of_each": round(size["dup_share"] * len(clean) / copied, 1)},
        "ocr": {"ocr_rate": size["ocr_rate"], "edits": dict(edits), "edits_per_char": sum(edits.values()) / len(clean)},
        "modern": {"modern_share": size["modern_share"], "modern_chars": modern_chars,
                   "copies_of_each": round(size["modern_share"] * len(clean) / modern_chars, 1)},
    }
    return texts, notes


def modern_hits(text, period):
    """Every anachronism the period filter finds in `text`, line by line -> [Hit]. The filter
    names the first one in a piece of text; each found is blanked out and the line searched again."""
    hits = []
    for line in text.splitlines():
        hit = period.find(line)
        while hit is not None:
            hits.append(hit)
            line = line.replace(hit.matched, " ", 1)
            hit = period.find(line)
    return hits


def flagged_share(paragraphs, period):
    """The share of paragraphs `vintage prepare --before` would drop."""
    return sum(period.find(p) is not None for p in paragraphs) / max(1, len(paragraphs))


def write_samples(model, tokenizer, n, n_tokens, seed):
    """n samples of n_tokens characters each, every one from a newline, at SAMPLE_TEMPERATURE,
    special tokens banned (the training text has none) -> [str]."""
    import numpy as np

    from vintagelm.generate import generate

    banned = sorted(tokenizer.special_tokens.values())
    prompt = tokenizer.encode_ordinary("\n")
    return [tokenizer.decode(list(generate(model, prompt, n_tokens, np.random.default_rng([seed, 6, i]),
                                           temperature=SAMPLE_TEMPERATURE, banned_ids=banned)))
            for i in range(n)]


def settings(args):
    from vintagelm.common import UserError

    size = dict(QUICK if args.quick else DEFAULT, **SETTINGS, sample_temperature=SAMPLE_TEMPERATURE)
    for key in ("steps", "dup_share", "ocr_rate", "modern_share", "before"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    for key in ("dup_share", "modern_share"):
        if not 0 < size[key] < 1:
            raise UserError(f"--{key.replace('_', '-')} must be between 0 and 1 (exclusive), not {size[key]}")
    if not 0 <= size["ocr_rate"] <= 1:
        raise UserError(f"--ocr-rate must be between 0 and 1, not {size['ocr_rate']}")
    if size["steps"] < 1:
        raise UserError(f"--steps must be at least 1, not {size['steps']}")
    return size


def run(args, page):
    import numpy as np

    from vintagelm.data.clean import split_paragraphs
    from vintagelm.data.period import PeriodFilter, load_terms
    from vintagelm.evaluate import token_byte_lengths
    from vintagelm.lab.measure import bar
    from vintagelm.lab.short_run import SplitData, Validation, held_out_split, save_run, short_run
    from vintagelm.model import GPTConfig
    from vintagelm.tokenizers import CharTokenizer

    size = settings(args)
    plays, val_text = held_out_split()
    paragraphs = training_paragraphs(plays, size["train_chars"])
    texts, notes = build_variants(paragraphs, size, args.seed)
    tokenizer = CharTokenizer.train([*texts.values(), val_text])  # one vocabulary for every variant
    val = np.asarray(tokenizer.encode_ordinary(val_text), dtype=np.uint16)
    modern = np.asarray(tokenizer.encode_ordinary(modern_text()), dtype=np.uint16)
    byte_lengths = token_byte_lengths(tokenizer)
    period = PeriodFilter(size["before"], load_terms())
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=size["block_size"], n_layer=size["n_layer"],
                       n_head=size["n_head"], n_embd=size["n_embd"])
    train_settings = {"learning_rate": size["lr"], "batch_size": size["batch_size"], "warmup_iters": size["warmup"],
                      "max_iters": size["steps"], "grad_clip": GRAD_CLIP}

    measured, records, runs = {}, {}, {}
    with bar(size["steps"] * len(VARIANTS), "data-quality", not args.no_progress) as progress:
        for name in VARIANTS:
            data = SplitData(np.asarray(tokenizer.encode_ordinary(texts[name]), dtype=np.uint16), val, tokenizer)
            record = short_run(config, data, size["steps"], size["lr"], size["batch_size"], seed=args.seed,
                               warmup=size["warmup"], grad_clip=GRAD_CLIP,
                               validation=Validation(steps=size["eval_every"], batches=size["eval_batches"]),
                               progress=progress)
            summary = {"variant": name, "train_chars": len(texts[name]), "val_chars": len(val_text),
                       "tokenizer": "char, trained on the union of every variant's characters",
                       "paragraphs_flagged": flagged_share(split_paragraphs(texts[name]), period), **notes[name]}
            save_run(record, page.out_dir / "runs" / name, config, train_settings, summary)
            runs[name] = {"folder": f"runs/{name}", "expected": EXPECTED[name]}
            records[name] = record
            measured[name] = measure(record, data, modern, size, args.seed, byte_lengths, period, summary)

    page.results.update(config=config.to_dict(), size=size, tokenizer_vocab=tokenizer.vocab_size,
                        val_chars=len(val_text), variants=measured, runs=runs)
    draw(page, measured, records, size)
    tabulate(page, measured)
    interpret(page, measured, size)


def measure(record, data, modern, size, seed, byte_lengths, period, summary):
    """The numbers of one trained variant: losses, gap, samples and the modern terms in them.
    modern: (N,) the token ids of the modern paragraphs."""
    from vintagelm.lab.short_run import loss_on

    model = record.model
    if record.diverged:
        train_loss = train_bpb = val_loss = val_bpb = gap = modern_bpb = None
    else:
        train_loss, train_bpb = loss_on(model, data.train, size["batch_size"], size["eval_batches"], seed, byte_lengths)
        _, val_loss, val_bpb, _ = record.val[-1]
        gap = val_loss - train_loss
        modern_bpb = loss_on(model, modern, size["batch_size"], size["eval_batches"], seed, byte_lengths)[1]
    samples = write_samples(model, data.tokenizer, size["samples"], size["sample_tokens"], seed)
    hits = [modern_hits(s, period) for s in samples]
    n_chars = sum(len(s) for s in samples)
    terms = Counter(h.matched.lower() for found in hits for h in found)
    return {
        "diverged": record.diverged,
        "final_train_loss": record.final_loss(),  # mean training-batch loss of the last 10 steps
        "train_loss": train_loss, "train_bpb": train_bpb,  # on fixed windows of its own training text
        "val_loss": val_loss, "val_bpb": val_bpb,  # on the clean held-out plays
        "gap": gap,  # val_loss - train_loss, nats per token
        "modern_bpb": modern_bpb,  # on the modern paragraphs: how likely the model finds modern English
        "val_curve": [[int(p.step), float(p.loss), float(p.bpb)] for p in record.val],
        "seconds": record.seconds,
        "data": summary,
        "modern_terms": sum(map(len, hits)),
        "modern_terms_per_1000_chars": 1000 * sum(map(len, hits)) / max(1, n_chars),
        "samples_with_modern_terms": sum(bool(h) for h in hits) / len(samples),
        "terms_found": dict(terms.most_common()),
        "sample_excerpts": [s[:EXCERPT_CHARS] for s in samples[:3]],
    }


def draw(page, measured, records, size):
    import numpy as np

    from vintagelm.plots import smooth

    fig, (ax_loss, ax_bpb) = page.figure("curves", "Training loss (thin) and validation loss on the clean "
                                         "held-out plays (dots) per step; validation bits per byte", ncols=2)
    for i, name in enumerate(VARIANTS):
        color = f"C{i}"
        losses = [np.nan if x is None else x for x in records[name].losses]
        ax_loss.plot(range(1, len(losses) + 1), smooth(losses), color=color, lw=0.8, alpha=0.7)
        curve = measured[name]["val_curve"]
        ax_loss.plot([c[0] for c in curve], [c[1] for c in curve], "o-", color=color, ms=3, label=name)
        ax_bpb.plot([c[0] for c in curve], [c[2] for c in curve], "o-", color=color, ms=3, label=name)
    ax_loss.set(xlabel="step", ylabel="loss (nats per character)", title="train (thin) and clean val (dots)")
    ax_bpb.set(xlabel="step", ylabel="bits per byte", title="clean validation text")
    for ax in (ax_loss, ax_bpb):
        ax.legend()
        ax.grid(True, alpha=0.3)

    fig, (ax_gap, ax_modern, ax_terms) = page.figure(
        "summary", "Train/val gap per variant; how well each model predicts the modern paragraphs; modern text "
        f"in, modern terms out (the period filter, before {size['before']})", ncols=3, size=(5.0, 4.0))
    x = np.arange(len(VARIANTS))
    colors = [f"C{i}" for i in x]
    ax_gap.bar_label(ax_gap.bar(x, [measured[n]["gap"] or 0.0 for n in VARIANTS], color=colors), fmt="%.3f")
    ax_gap.axhline(0, color="black", lw=0.8)
    ax_gap.set(ylabel="val loss - train loss (nats)", title="train/val gap")
    ax_modern.bar_label(ax_modern.bar(x, [measured[n]["modern_bpb"] or 0.0 for n in VARIANTS], color=colors), fmt="%.3f")
    ax_modern.set(ylabel="bits per byte", title="on the modern paragraphs")
    width = 0.4
    ax_terms.bar(x - width / 2, [100 * measured[n]["data"]["paragraphs_flagged"] for n in VARIANTS], width,
                 label="training paragraphs flagged", color="0.6")
    ax_terms.bar(x + width / 2, [100 * measured[n]["samples_with_modern_terms"] for n in VARIANTS], width,
                 label="samples naming a modern term", color="C3")
    highest = max(100 * max(m["data"]["paragraphs_flagged"], m["samples_with_modern_terms"]) for m in measured.values())
    ax_terms.set(ylabel="percent", title="modern text in, modern terms out", ylim=(0, 1.4 * highest or 1),
                 xlabel=f"{size['samples']} samples of {size['sample_tokens']} characters per model, "
                        f"temperature {size['sample_temperature']}")
    ax_terms.legend(fontsize=8, loc="upper left")
    for ax in (ax_gap, ax_modern, ax_terms):
        ax.set(xticks=x, xticklabels=VARIANTS)
        ax.grid(True, axis="y", alpha=0.3)


def tabulate(page, measured):
    rows = [[n, m["train_loss"], m["val_loss"], m["gap"], m["val_bpb"], m["modern_bpb"],
             f"{m['data']['paragraphs_flagged']:.0%}", m["modern_terms_per_1000_chars"],
             f"{m['samples_with_modern_terms']:.0%}"] for n, m in measured.items()]
    page.table("per variant (losses in nats per character on fixed windows; val = the clean held-out plays)",
               ["variant", "train loss", "val loss", "gap", "val bits/byte", "modern text bits/byte",
                "train paragraphs flagged", "modern terms / 1000 sample chars", "samples with a modern term"], rows)
    page.table("sample excerpts (line breaks shown as /)", ["variant", "sample"],
               [[n, " / ".join(line for line in e.splitlines() if line)] for n, m in measured.items()
                for e in m["sample_excerpts"][:2]])


def interpret(page, measured, size):
    clean, dup, ocr, modern = (measured[n] for n in VARIANTS)
    failed = [n for n, m in measured.items() if m["diverged"]]
    if failed:
        page.say(f"Diverged, so no losses are recorded for: {', '.join(failed)} (learning rate {size['lr']}).")
    if clean["diverged"]:
        return
    others = ", ".join(f"{n} {measured[n]['val_bpb']:.3f} ({measured[n]['val_bpb'] - clean['val_bpb']:+.3f})"
                       for n in VARIANTS[1:] if not measured[n]["diverged"])
    best = min((n for n in VARIANTS if not measured[n]["diverged"]), key=lambda n: measured[n]["val_bpb"])
    page.say(f"On the same clean held-out plays the model trained on clean text reached {clean['val_bpb']:.3f} "
             f"bits per byte after {size['steps']} steps; {others}. Best: {best}.")
    if not dup["diverged"]:
        d = dup["data"]
        wider = f"{dup['gap'] / clean['gap']:.1f}x" if clean["gap"] > 0 else "wider than"
        page.say(f"In the duplicated text {d['dup_share']:.0%} of the characters were copies of {d['passages']} "
                 f"passages ({d['passage_chars']:,} characters, each copied about {d['copies_of_each']:.0f} times): its "
                 f"model's loss on its own training text fell to {dup['train_loss']:.3f} nats while on clean text it was "
                 f"{dup['val_loss']:.3f}, a train/val gap of {dup['gap']:.3f} against {clean['gap']:.3f} for the clean "
                 + (f"run ({wider} the clean gap): it spent its steps learning the copies, not the language."
                    if dup["gap"] > clean["gap"] else "run: at this budget the copies did not open a wider gap."))
    if not ocr["diverged"]:
        cost = ocr["val_bpb"] - clean["val_bpb"]
        page.say(f"OCR noise at {size['ocr_rate']:.0%} of the characters ({sum(ocr['data']['edits'].values()):,} "
                 f"edits) {'cost' if cost > 0 else 'changed'} {cost:+.3f} bits per byte on clean text "
                 f"({100 * cost / clean['val_bpb']:+.1f}%), and its model found its own noisy text "
                 f"{'harder' if ocr['train_loss'] > ocr['val_loss'] else 'no harder'} than clean text "
                 f"({ocr['train_loss']:.3f} vs {ocr['val_loss']:.3f} nats): the misspellings are noise it cannot "
                 f"predict, and probability it learned to spend on them is missing where clean text needs it.")
    if not modern["diverged"]:
        found = ", ".join(f"{t} x{c}" for t, c in list(modern["terms_found"].items())[:4]) or "none"
        page.say(f"With {size['modern_share']:.0%} modern text mixed in ({modern['data']['paragraphs_flagged']:.0%} of "
                 f"its training paragraphs would be dropped by --before {size['before']}), the model predicts the "
                 f"modern paragraphs at {modern['modern_bpb']:.3f} bits per byte against {clean['modern_bpb']:.3f} for "
                 f"the clean model, and {modern['samples_with_modern_terms']:.0%} of its samples named a modern term "
                 f"(found: {found}; the clean model's samples: {clean['modern_terms']}): "
                 + ("what goes into the corpus comes out in the samples." if modern["modern_terms"] > clean["modern_terms"]
                    else "it has learned their letters but not yet to write the words out in a sample."))
