"""era: is the model vintage? The era card of one trained run (vintagelm/era/metrics.py) as a page.

A vintage model claims to speak and know only its period, and its validation loss cannot show
that. This page measures what a small model can show, on the run's own held-out text:
    surprise       bits per byte on the held-out period text vs the team's modern control text
                   (and a period text of your own with --text): the gap is the headline
    minimal pairs  how often the period-true sentence of a pair is the likelier (chance 50%)
    choices        the true next line of the val text among four (by mean log-likelihood per
                   token), and the true word of a line among four of its length and frequency
                   (by total log-likelihood); chance 25% each
    anachronisms   the share of samples the period filter would drop
    the filter     its precision and recall on labelled period and modern paragraphs
Every interval is a Wilson 95% interval; every item and sample comes from the seed.
"""
TITLE = "Is it vintage? Period against modern text, minimal pairs and held-out choices"
HELP = "the era card of a run as a page: surprise at modern text, minimal pairs, cloze, the period filter"
QUICK = dict(samples=4, n_cloze=40, n_words=40, n_builtin=20, max_batches=8)
DEFAULT = dict(samples=20, n_cloze=200, n_words=400, n_builtin=100, max_batches=None)


def add_arguments(p):
    p.add_argument("run", metavar="RUN", help="a run directory (its latest checkpoint) or a checkpoint directory")
    p.add_argument("--text", metavar="FILE", help="a period text the model never saw, scored beside the others")
    p.add_argument("--before", type=int, metavar="YEAR",
                   help="the period filter's cut-off (default: the run's data's, else 1900)")
    p.add_argument("--samples", type=int, metavar="N", help="samples checked for anachronisms")


def run(args, page):
    from vintagelm.checkpoint import load_checkpoint
    from vintagelm.common import UserError
    from vintagelm.era.metrics import era_report, run_dataset

    size = dict(QUICK if args.quick else DEFAULT)
    if args.samples is not None:
        size["samples"] = max(0, args.samples)
    log = (lambda msg: None) if args.no_progress else print
    ckpt = load_checkpoint(args.run, with_optimizer=False, finite=True)
    if ckpt.tokenizer is None:
        raise UserError(f"{ckpt.path} has no tokenizer.json to encode the era texts with")
    dataset = run_dataset(ckpt, progress=not args.no_progress, log=log)
    report = era_report(ckpt, dataset, text_file=args.text, before=args.before, seed=args.seed, log=log, **size)
    page.results.update(size=size, era=report)
    draw_surprise(page, report["surprise"])
    draw_choices(page, report)
    draw_filter(page, report["samples"], report["filter"])
    tables(page, report)
    interpret(page, report)


def _pct(x):
    return "—" if x is None else f"{100 * x:.1f}%"


def draw_surprise(page, s):
    fig, ax = page.figure("surprise", "Bits per byte on period and modern text: lower is less surprised")
    bars = [("period (val)", s["period"], "#8c6d46")]
    if s["text"] is not None:
        bars.append(("period (--text)", s["text"], "#b08d57"))
    bars.append(("modern control", s["modern"], "#4a6f8a"))
    xs = range(len(bars))
    heights = [r["bits_per_byte"] for _, r, _ in bars]
    ax.bar(xs, heights, color=[c for _, _, c in bars])
    for x, h in zip(xs, heights):
        ax.text(x, h, f"{h:.3f}", ha="center", va="bottom")
    ax.set_xticks(list(xs), [name for name, _, _ in bars])
    ax.set(ylabel="bits per byte", title=f"gap modern - period: {s['gap']:+.3f} bits per byte")
    ax.grid(True, axis="y", alpha=0.3)


def _accuracy_bars(ax, entries, chance, title):
    """entries: [(label, summary dict)] with accuracy and Wilson bounds; chance as a line."""
    shown = [(label, r) for label, r in entries if r.get("accuracy") is not None]
    xs = list(range(len(shown)))
    acc = [r["accuracy"] for _, r in shown]
    err = [[max(0.0, a - r["ci_low"]) for a, (_, r) in zip(acc, shown)],
           [max(0.0, r["ci_high"] - a) for a, (_, r) in zip(acc, shown)]]  # (2, n) below, above
    ax.bar(xs, acc, yerr=err, capsize=6, color="#8c6d46")
    ax.axhline(chance, color="#a33", linestyle="--", label=f"chance {chance:.0%}")
    for x, a in zip(xs, acc):
        ax.text(x, a, f" {a:.0%}", ha="left", va="bottom")
    ax.set_xticks(xs, [label for label, _ in shown])
    ax.set(ylim=(0, 1), ylabel="accuracy (95% Wilson interval)", title=title)
    ax.legend(loc="upper right")
    ax.grid(True, axis="y", alpha=0.3)


def draw_choices(page, report):
    fig, (ax_p, ax_c) = page.figure("choices", "Minimal pairs (chance 50%) and held-out choices of four "
                                    "(chance 25%), with 95% intervals", ncols=2)
    p = report["pairs"]
    baseline = {"accuracy": p["shorter_baseline"], "ci_low": p["shorter_baseline"],
                "ci_high": p["shorter_baseline"]} if p["shorter_baseline"] is not None else {"accuracy": None}
    _accuracy_bars(ax_p, [("period member\npreferred", p), ("shorter\nsentence", baseline)], 0.5,
                   f"minimal pairs (n={p['n']})")
    _accuracy_bars(ax_c, [("next line", report["cloze"]), ("which word", report["words"])], 0.25,
                   "held-out text")


def draw_filter(page, samples, f):
    fig, (ax_f, ax_s) = page.figure("filter", f"The period filter --before {f['before']}: its quality on labelled "
                                    "paragraphs, and what it finds in the model's samples", ncols=2)
    names = ["precision", "recall", "period kept"]
    values = [f["precision"], f["recall"], f["period_kept"]]
    ax_f.bar(names, [0 if v is None else v for v in values], color=["#4a6f8a", "#8c6d46", "#6b8a4a"])
    for x, v in enumerate(values):
        ax_f.text(x, v or 0, f" {_pct(v)}", ha="center", va="bottom")
    ax_f.set(ylim=(0, 1.1), title=f"{f['modern']} modern, {f['period']} period paragraphs")
    shares = [samples["share"], samples["paragraph_share"]]
    ax_s.bar(["samples", "paragraphs"], [0 if v is None else v for v in shares], color="#a33")
    for x, v in enumerate(shares):
        ax_s.text(x, v or 0, f" {_pct(v)}", ha="center", va="bottom")
    ax_s.set(ylim=(0, 1.1), ylabel="share the filter would drop", title=f"{samples['n']} samples of the model")
    for ax in (ax_f, ax_s):
        ax.grid(True, axis="y", alpha=0.3)


def tables(page, report):
    s = report["surprise"]
    rows = [[r["what"], f"{r['bits_per_byte']:.4f}", r["bytes"], r["unknown_chars"], _pct(r["unknown_share"])]
            for r in (s["period"], s["text"], s["modern"]) if r is not None]
    page.table("surprise: bits per byte (characters the tokenizer cannot encode are dropped and counted)",
               ["text", "bits per byte", "bytes", "unknown chars", "unknown share"], rows)
    rows = []
    for name, key in (("minimal pairs", "pairs"), ("cloze, next line", "cloze"), ("which word", "words")):
        r = report[key]
        rows.append([name, r["n"], _pct(r["accuracy"]), f"{_pct(r['ci_low'])} - {_pct(r['ci_high'])}",
                     _pct(r["chance"]), _pct(r["centred"])])
    page.table("choices", ["measure", "items", "accuracy", "95% interval", "chance", "centred"], rows)
    f = report["filter"]
    page.table(f"the period filter --before {f['before']} (modern = positive)", ["", "dropped", "kept"],
               [["modern", f["true_positives"], f["false_negatives"]], ["period", f["false_positives"],
                                                                       f["true_negatives"]]])


def interpret(page, report):
    s, p, c, w, f, smp = (report[k] for k in ("surprise", "pairs", "cloze", "words", "filter", "samples"))
    more = "more" if s["gap"] > 0 else "less"
    m = s["modern"]
    page.say(f"The model found the modern control text {more} surprising than its held-out period text: "
             f"{m['bits_per_byte']:.3f} against {s['period']['bits_per_byte']:.3f} bits per byte, a gap "
             f"of {s['gap']:+.3f}" + (f" ({m['unknown_chars']} of its {m['chars']:,} modern characters, "
                                      f"{m['unknown_examples']!r}, were unknown to its tokenizer and dropped)."
                                      if m["unknown_chars"] else "."))
    if p["accuracy"] is not None:
        verdict = ("above chance" if p["ci_low"] > 0.5 else "below chance" if p["ci_high"] < 0.5
                   else "not distinguishable from chance")
        length = ("so length alone does not explain it" if p["ci_low"] > p["shorter_baseline"]
                  else "so length may explain as much of it")
        page.say(f"It preferred the period member of {_pct(p['accuracy'])} of {p['n']} minimal pairs (95% interval "
                 f"{_pct(p['ci_low'])} to {_pct(p['ci_high'])}): {verdict}; preferring the shorter sentence would "
                 f"score {_pct(p['shorter_baseline'])}, {length}.")
    parts = [f"{name} {_pct(r['accuracy'])} of {r['n']} (centred {_pct(r['centred'])})"
             for name, r in (("the next line", c), ("the true word", w)) if r["accuracy"] is not None]
    if parts:
        page.say(f"Choosing among four on held-out text (chance 25%), it picked {' and '.join(parts)}.")
    page.say(f"The period filter at {f['before']} caught {f['true_positives']} of {f['modern']} modern paragraphs "
             f"(recall {_pct(f['recall'])}) with precision {_pct(f['precision'])}, and would drop "
             f"{smp['dropped']} of the model's {smp['n']} samples.")
