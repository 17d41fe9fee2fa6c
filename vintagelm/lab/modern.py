"""modern: the ladder from GPT-2 to today's block, one piece at a time, at equal wall-clock time.

The rungs are cumulative: each adds one piece to the model of the rung before it.
    gpt2      GPT-2's block at the shape of `vintage train`'s default (the `tiny` preset): learned
              positions, LayerNorm, a GELU MLP of width 4C, a key and a value per head, biases,
              the output head tied to the token embedding; AdamW
    rope      rotary positions instead of the learned position table (pos="rope")
    rmsnorm   RMSNorm instead of LayerNorm (norm_type="rms")
    swiglu    a SwiGLU MLP instead of GELU, of the hidden width F that gives it the GELU MLP's
              parameter count (swiglu_width: the F nearest equality, within half a hidden unit
              per layer, PARAM_TOLERANCE)
    gqa       half as many key/value heads as query heads (n_kv_head = n_head / 2)
    qk_norm   RMSNorm of every head's queries and keys
    no_bias   no biases (bias=False)
    untied    an output head of its own (tie_weights=False): today's block
    muon      Muon for the hidden matrices, AdamW for embeddings, head and gains (muon.py)
and off the ladder:
    muon_lr   the muon rung at a second Muon learning rate: the optimizer question asks both
    noise     the gpt2 rung again with another seed: how far apart two runs land by chance alone,
              the margin a piece's change must pass to count as "helped" or "hurt"
    alone_*   with --alone, each piece alone on top of gpt2 (not in the default page: it doubles
              its time)

Same time, planned rather than clocked. Before any training every rung's step is timed in CPU
seconds of this process (on a shared machine the wall clock measures the neighbours as much as
the model; with one BLAS thread a CPU second is a second of an idle core), the rungs taking
turns within each round so that a busy moment falls on all of them alike, after a warm-up round
that also compiles the fast kernels. Each rung then trains budget / (its median step time)
steps on `vintage train`'s schedule over those steps (warm-up, cosine to min_lr / learning_rate
of the peak). The result is then fixed by the plan and the seed: another process slowing the
machine during one rung slows its clock, not its bits per byte. The wall seconds each rung
actually took are recorded beside the plan.

When is a change a change? Two runs can differ by chance in two ways: their seed, measured by
the noise run (the gap between the two GPT-2 runs), and their plans, each a step count from
timings that scatter: a rung's plan error is the half range of its timing rounds over their
median, times its steps, times the slope of its curve over its last third (bits per byte per
step; the end of a cosine falls steeper than a shorter schedule would lose, so this errs large).
A piece "helped" or "hurt" when it moved bits per byte by more than the seed gap (at least
MIN_MARGIN) plus the plan errors of its two rungs; otherwise it made no clear change.

Every rung is measured on the same validation windows (the page's seed): at the start, every
`k` steps, and after its last step. The conclusions use equal time (the last point). Equal steps
is the other view: every rung is also measured at E steps (E <= the fewest steps any rung
planned, a multiple of k); there a rung that planned more steps is earlier in its cosine, at a
higher learning rate, so equal steps flatters the slower rungs.

KV-cache bytes per token are measured on the cache each model decodes with
(model.new_kv_cache: 2 L Hkv D itemsize per position); tokens per CPU second is B T / the median
CPU seconds of a step in the timing rounds.
"""
import time
from typing import NamedTuple

TITLE = "From GPT-2 to today's block: RoPE, RMSNorm, SwiGLU, grouped KV heads, QK-norm and Muon, one at a time"
HELP = ("GPT-2 -> RoPE -> RMSNorm -> SwiGLU -> grouped KV heads -> QK-norm -> no biases -> untied head -> Muon, "
        "each trained for the same wall time: bits per byte, tokens/s, KV-cache bytes per token, parameters")
# the quick page's model is smaller than `tiny`; the default page trains `tiny` itself (train_config)
QUICK = dict(n_layer=2, n_head=4, n_embd=32, block_size=32, batch_size=8, seconds=2.0, lr=5e-3, warmup=5,
             evals=4, eval_batches=4, timing_rounds=3, timing_steps=3, muon_lrs=[0.02, 0.01])
# Muon's rates: 0.02 is `vintage train`'s muon_lr; 0.01 did better in 250-step trials of the tiny modern block
# (val 2.766 bits per byte; 0.02: 2.792, 0.04: 2.826, 0.08: 2.848; AdamW 2.978)
DEFAULT = dict(seconds=45.0, evals=10, eval_batches=32, timing_rounds=7, timing_steps=6, muon_lrs=[0.02, 0.01])
PIECES = ("rope", "rmsnorm", "swiglu", "gqa", "qk_norm", "no_bias", "untied", "muon")
LABELS = {"gpt2": "GPT-2", "rope": "+ RoPE", "rmsnorm": "+ RMSNorm", "swiglu": "+ SwiGLU", "gqa": "+ grouped KV",
          "qk_norm": "+ QK-norm", "no_bias": "- biases", "untied": "+ untied head", "muon": "+ Muon",
          "muon_lr": "+ Muon", "noise": "GPT-2, seed + 1"}
CHANGES = {"rope": "learned position table -> rotary positions", "rmsnorm": "LayerNorm -> RMSNorm",
           "swiglu": "GELU MLP -> SwiGLU at equal parameters", "gqa": "n_kv_head = n_head / 2",
           "qk_norm": "RMSNorm on queries and keys", "no_bias": "biases removed",
           "untied": "output head untied from the embedding", "muon": "AdamW -> Muon for hidden matrices"}
QUESTIONS = {
    "rope": "Do rotary positions beat a learned position table?",
    "rmsnorm": "Does RMSNorm (no mean, no bias) do as well as LayerNorm?",
    "swiglu": "Does a SwiGLU MLP beat GELU at equal parameters?",
    "gqa": "What do half the key/value heads cost in quality, and save in the cache?",
    "qk_norm": "Does normalising each head's queries and keys help?",
    "no_bias": "Do the biases earn their keep?",
    "untied": "Does the output head want a matrix of its own?",
    "muon": "AdamW or Muon for the hidden matrices?",
}
MIN_MARGIN = 0.005  # bits per byte: the seed part of a margin, however close the two seeds land
ZOOM_FROM = 0.3  # figures zoom on each curve from 30% of its steps on (the start is off the scale)
GRAD_CLIP = 1.0
WARMUP_STEPS = 2  # untimed steps of every run before the timing rounds


def add_arguments(p):
    p.add_argument("--seconds", type=float, metavar="S", help="training wall time per rung (quick 2, default 45)")
    p.add_argument("--lr", type=float, help="AdamW's peak learning rate on every rung (default: vintage train's)")
    p.add_argument("--muon-lr", type=float, nargs=2, metavar=("LADDER", "SECOND"),
                   help="Muon's peak rate on the ladder's muon rung and on the second Muon run (default 0.02 0.01)")
    p.add_argument("--alone", action="store_true", help="also train each piece alone on top of GPT-2")
    p.add_argument("--backend", choices=("auto", "reference", "fast"), default="auto",
                   help="the ops (default auto: fast when numba is installed, as `vintage train`)")


def run(args, page):
    from vintagelm.lab.short_run import corpus

    size = settings(args)
    data = corpus(progress=not args.no_progress)
    runs = plan_runs(base_config(size, data.tokenizer.vocab_size), size, args.alone)
    timing = time_steps({key: run for key, run in runs.items() if key != "noise"}, data, size, args.seed, args.backend)
    timing["noise"] = timing["gpt2"]  # the same model: only the seed differs
    plans = {key: max(1, round(size["seconds"] / t.seconds)) for key, t in timing.items()}
    every, equal = equal_step_point(plans, size["evals"])
    measured = train_all(runs, plans, every, data, size, args)
    rungs = {key: describe(key, runs[key], measured[key], plans[key], timing[key], size, equal) for key in measured}
    margin = noise_margin(rungs)
    verdicts = judge(rungs, margin, args.alone)
    page.results.update(
        size=size, corpus={"source": "builtin:shakespeare", "tokenizer": "char",
                           "vocab_size": data.tokenizer.vocab_size, "val_tokens": len(data.val)},
        ladder=["gpt2", *PIECES], rungs=rungs, eval_every=every, equal_steps=equal, noise=margin,
        swiglu_match=swiglu_match(runs), verdicts=verdicts,
        documented_nones={"rungs.*.val_bpb": "a run that diverged (the page says so)",
                          "rungs.*.val_bpb_equal_steps": "a run that diverged before E steps; the noise run "
                                                         "(measured only at its end) unless E is its end",
                          "rungs.*.muon_lr": "a run trained with AdamW alone",
                          "rungs.*.plan_error": "a run that diverged",
                          "verdicts.*.delta*, verdicts.*.margin": "a run of the pair diverged"})
    for piece in PIECES:
        draw_question(page, piece, rungs, verdicts[piece])
    draw_summary(page, rungs)
    if args.alone:
        draw_alone(page, verdicts)
    write_tables(page, rungs, verdicts, args.alone, equal)
    interpret(page, rungs, verdicts, margin, size, equal, args.alone)


def settings(args):
    """The size of this page: QUICK, or DEFAULT on `vintage train`'s own defaults -> dict."""
    from vintagelm.common import UserError
    from vintagelm.train_config import TrainConfig

    train = TrainConfig()
    size = dict(n_layer=train.model.n_layer, n_head=train.model.n_head, n_embd=train.model.n_embd,
                block_size=train.model.block_size, batch_size=train.batch_size, lr=train.learning_rate,
                warmup=train.warmup_iters)
    size.update(QUICK if args.quick else DEFAULT)
    size["min_lr_ratio"] = train.min_lr / train.learning_rate
    for name, value in (("seconds", args.seconds), ("lr", args.lr), ("muon_lrs", args.muon_lr)):
        if value is not None:
            size[name] = list(value) if name == "muon_lrs" else value
    if size["seconds"] <= 0 or size["lr"] <= 0 or min(size["muon_lrs"]) <= 0:
        raise UserError("--seconds, --lr and --muon-lr must be positive")
    return size


# ---------------------------------------------------------------- the rungs
def base_config(size, vocab_size):
    from vintagelm.model import GPTConfig

    return GPTConfig(vocab_size=vocab_size, block_size=size["block_size"], n_layer=size["n_layer"],
                     n_head=size["n_head"], n_embd=size["n_embd"])


def add_piece(config, optimizer, piece, muon_lr):
    """(model config, optimizer fields) of a run, plus one piece -> the same pair with it."""
    from dataclasses import replace

    if piece == "muon":
        return config, {"optimizer": "muon", "muon_lr": muon_lr}
    fields = {"rope": {"pos": "rope"}, "rmsnorm": {"norm_type": "rms"}, "qk_norm": {"qk_norm": True},
              "gqa": {"n_kv_head": config.n_head // 2}, "no_bias": {"bias": False}, "untied": {"tie_weights": False},
              "swiglu": {"activation": "swiglu", "mlp_hidden": swiglu_width(config)}}[piece]
    return replace(config, **fields), optimizer


def swiglu_width(config):
    """F for a SwiGLU MLP with the parameters of `config`'s GELU MLP: a GELU MLP holds
    2 C (4C) weights (+ 4C + C biases), a SwiGLU one 3 C F (+ 2F + C), so F ~ 8C/3; the integer
    nearest equality is found by counting the model's own parameters."""
    from dataclasses import replace

    from vintagelm.model import GPT

    target = GPT.param_count(config)
    guess = round(8 * config.n_embd / 3)

    def gap(width):
        return abs(GPT.param_count(replace(config, activation="swiglu", mlp_hidden=width)) - target)

    return min(range(max(1, guess - 2), guess + 3), key=gap)


def plan_runs(base, size, alone):
    """key -> (model config, optimizer fields, seed offset): the ladder, the second Muon rate, the
    noise run, and with `alone` each piece alone on gpt2."""
    ladder_lr, second_lr = size["muon_lrs"]
    runs = {"gpt2": (base, {}, 0)}
    config, optimizer = base, {}
    for piece in PIECES:
        config, optimizer = add_piece(config, optimizer, piece, ladder_lr)
        runs[piece] = (config, optimizer, 0)
    runs["muon_lr"] = (config, {**optimizer, "muon_lr": second_lr}, 0)
    runs["noise"] = (base, {}, 1)
    if alone:
        for piece in PIECES[1:]:  # rope alone is the ladder's first rung
            runs[f"alone_{piece}"] = (*add_piece(base, {}, piece, ladder_lr), 0)
    return runs


def label(key):
    return LABELS.get(key) or f"GPT-2 {LABELS[key.removeprefix('alone_')]}"


# ---------------------------------------------------------------- timing and training
class StepTime(NamedTuple):
    seconds: float  # the median CPU seconds of one training step over the timing rounds
    spread: float  # half the range of the rounds over that median: how far a plan may be off
    rounds: list  # the CPU seconds of one step in each timing round


def time_steps(runs, data, size, seed, backend):
    """key -> StepTime over timing_rounds rounds of timing_steps steps, the runs taking turns in
    every round, after a round of WARMUP_STEPS that compiles the kernels and makes the first
    allocations. Each step count's CPU time is less that of building the model and optimizer."""
    import numpy as np

    from vintagelm.lab.short_run import short_run

    def cpu_seconds(config, optimizer, steps):
        t0 = time.process_time()
        short_run(config, data, steps, size["lr"], size["batch_size"], seed=seed, grad_clip=GRAD_CLIP,
                  backend=backend, optimizer_fields=optimizer)
        return time.process_time() - t0

    rounds = {key: [] for key in runs}
    for n in [WARMUP_STEPS] + [size["timing_steps"]] * size["timing_rounds"]:
        for key, (config, optimizer, _) in runs.items():
            rounds[key].append((cpu_seconds(config, optimizer, n) - cpu_seconds(config, optimizer, 0)) / n)
    times = {key: np.array(t[1:]) for key, t in rounds.items()}
    return {key: StepTime(float(np.median(t)), float(np.ptp(t) / 2 / np.median(t)), t.tolist())
            for key, t in times.items()}


def equal_step_point(plans, evals):
    """(k, E): validate every k steps, so that every run is measured at E steps, the largest
    multiple of k that no run's plan falls short of."""
    fewest = min(plans.values())
    every = max(1, fewest // evals)
    return every, fewest // every * every


def train_all(runs, plans, every, data, size, args):
    """key -> the RunRecord of each run trained for its planned steps, measured on the page's
    validation windows every `every` steps (the noise run's seed would move its windows: it is
    measured once, at the end, on the page's)."""
    from vintagelm.evaluate import token_byte_lengths
    from vintagelm.lab.measure import bar
    from vintagelm.lab.short_run import ValPoint, Validation, short_run, validate

    byte_lengths = token_byte_lengths(data.tokenizer)
    B = size["batch_size"]
    records = {}
    with bar(sum(plans.values()), "modern: the ladder", not args.no_progress) as progress:
        for key, (config, optimizer, offset) in runs.items():
            measure = Validation(steps=every, batches=size["eval_batches"], at_start=True) if not offset else None
            record = short_run(config, data, plans[key], size["lr"], B, seed=args.seed + offset, warmup=size["warmup"],
                               grad_clip=GRAD_CLIP, min_lr_ratio=size["min_lr_ratio"], validation=measure,
                               backend=args.backend, progress=progress, optimizer_fields=optimizer)
            if offset and not record.diverged:
                loss, bpb = validate(record.model, data, B, size["eval_batches"], args.seed, byte_lengths)
                record.val.append(ValPoint(len(record.losses), loss, bpb, record.seconds))
            progress.update(plans[key] - len(record.losses))  # a diverged run's steps it did not take
            records[key] = record
    return records


def describe(key, run, record, planned, timing, size, equal):
    """One run's numbers for results.json."""
    config, optimizer, offset = run
    curve = [dict(steps=p.step, seconds=p.seconds, bpb=float(p.bpb)) for p in record.val]
    cache = record.model.new_kv_cache(1)
    at_equal = next((p.bpb for p in record.val if p.step == equal), None)
    return dict(
        label=label(key) + (f" (lr {optimizer['muon_lr']:g})" if "muon_lr" in optimizer else ""),
        config=config.to_dict(), optimizer=optimizer.get("optimizer", "adamw"),
        muon_lr=optimizer.get("muon_lr"), lr=size["lr"], seed_offset=offset, mlp_width=config.mlp_width,
        params=record.params, kv_bytes_per_token=cache.nbytes // cache.max_len,
        tokens_per_second=size["batch_size"] * config.block_size / timing.seconds, step_cpu_seconds=timing.seconds,
        step_cpu_rounds=timing.rounds, plan_spread=timing.spread,
        plan_error=None if record.diverged else plan_error(curve, timing.spread),
        planned_steps=planned, steps=len(record.losses), train_seconds=record.seconds, diverged=record.diverged,
        val_bpb=None if record.diverged else curve[-1]["bpb"],
        val_bpb_equal_steps=None if record.diverged or at_equal is None else float(at_equal), curve=curve)


def plan_error(curve, spread):
    """Bits per byte a plan `spread` (a fraction of its steps) too long or short could move the
    end of `curve`: the fall per step over its last third, times those steps (0 for a curve of one
    point, the noise run's; it shares gpt2's plan)."""
    end = curve[-1]
    start = next((p for p in curve if p["steps"] >= end["steps"] * 2 / 3), end)
    if start["steps"] == end["steps"]:
        return 0.0
    fall = abs(start["bpb"] - end["bpb"]) / (end["steps"] - start["steps"])
    return fall * spread * end["steps"]


def swiglu_match(runs):
    """The parameters of the rung before SwiGLU and of the SwiGLU rung: equal within
    half a hidden unit of every layer's three matrices (and two biases)."""
    from vintagelm.model import GPT

    before, after = runs["rmsnorm"][0], runs["swiglu"][0]
    unit = 3 * after.n_embd + (2 if after.bias else 0)  # the parameters one more hidden unit adds to a layer
    return dict(gelu_params=GPT.param_count(before), swiglu_params=GPT.param_count(after), width=after.mlp_width,
                gelu_width=before.mlp_width, tolerance=after.n_layer * unit // 2)


# ---------------------------------------------------------------- what helped
def noise_margin(rungs):
    """How far the two GPT-2 runs that differ only by seed landed, and the margin a change must
    pass: that gap, or MIN_MARGIN when they landed closer."""
    a, b = rungs["gpt2"]["val_bpb"], rungs["noise"]["val_bpb"]
    gap = None if a is None or b is None else abs(a - b)
    return dict(seed_gap=gap, margin=max(gap or 0.0, MIN_MARGIN))


def verdict(delta, margin):
    if delta is None or margin is None:
        return "diverged"
    return "helped" if delta < -margin else "hurt" if delta > margin else "no clear change"


def change(rungs, before, after, field):
    """rungs[after][field] - rungs[before][field], or None where either is None (a diverged run)."""
    a, b = rungs[before][field], rungs[after][field]
    return None if a is None or b is None else b - a


def compare(before, after, rungs, margin):
    """What going from run `before` to run `after` did, at equal time (against the seed margin
    plus both plan errors) and at equal steps (against the seed margin: no plan is involved)."""
    delta, at_steps = change(rungs, before, after, "val_bpb"), change(rungs, before, after, "val_bpb_equal_steps")
    errors = (rungs[before]["plan_error"], rungs[after]["plan_error"])
    pair = None if None in errors else margin["margin"] + sum(errors)
    return dict(before=before, after=after, delta=delta, margin=pair, verdict=verdict(delta, pair),
                delta_equal_steps=at_steps, verdict_equal_steps=verdict(at_steps, margin["margin"]))


def judge(rungs, margin, alone):
    """piece -> its comparison on the ladder (with the rung before it), and with `alone`
    "alone_<piece>" -> the piece alone on gpt2."""
    verdicts = {}
    for before, piece in zip(("gpt2", *PIECES), PIECES):
        verdicts[piece] = compare(before, piece, rungs, margin)
        if alone:
            verdicts[f"alone_{piece}"] = compare("gpt2", piece if piece == "rope" else f"alone_{piece}", rungs, margin)
    verdicts["muon_lr"] = compare("untied", "muon_lr", rungs, margin)  # the optimizer question's second rate
    return verdicts


# ---------------------------------------------------------------- figures
def colors(keys):
    from vintagelm.plots import pyplot

    cmap = pyplot().get_cmap("viridis")
    return {key: cmap(i / max(1, len(keys) - 1)) for i, key in enumerate(keys)}


def zoom(ax, curves):
    """y-limits that show the ends of the curves rather than their untrained starts."""
    ends = [p["bpb"] for c in curves for p in c if p["steps"] >= ZOOM_FROM * c[-1]["steps"]]
    if ends:
        ax.set_ylim(min(ends) - 0.05, max(ends) + 0.1)


def draw_question(page, piece, rungs, judged):
    keys = [judged["before"], piece] + (["muon_lr"] if piece == "muon" else [])
    shown = [k for k in keys if k in rungs]
    tint = dict(zip(keys, ("#8c6d31", "#1f77b4", "#d62728")))
    numbers = ", ".join(f"{rungs[k]['label']} {bpb_text(rungs[k]['val_bpb'])}" for k in shown)
    fig, (ax_t, ax_s) = page.figure(
        f"q_{piece}", f"{QUESTIONS[piece]} Validation bits per byte on the same windows, against training seconds "
        f"as clocked (left) and steps (right); at equal time: {numbers} ({judged['verdict']}).", ncols=2,
        size=(5.6, 4.0))
    for key in shown:
        curve = rungs[key]["curve"]
        name = rungs[key]["label"]
        ax_t.plot([p["seconds"] for p in curve], [p["bpb"] for p in curve], "o-", ms=3, color=tint[key], label=name)
        ax_s.plot([p["steps"] for p in curve], [p["bpb"] for p in curve], "o-", ms=3, color=tint[key], label=name)
    for ax, xlabel in ((ax_t, "training seconds"), (ax_s, "steps")):
        zoom(ax, [rungs[k]["curve"] for k in shown])
        ax.set(xlabel=xlabel, ylabel="validation bits per byte")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(QUESTIONS[piece], fontsize=10)


def draw_summary(page, rungs):
    keys = ["gpt2", *PIECES, "muon_lr"]
    tint = colors(keys)
    fig, axes = page.figure(
        "summary", "The ladder at a glance, each rung adding one piece to the one before (the last bar is the Muon "
        "rung at its second learning rate): validation bits per byte at equal time (bars; the axis does not start "
        "at zero) and at equal steps (black ticks), training tokens per CPU second, KV-cache bytes per generated "
        "token, parameters.",
        ncols=4, size=(4.2, 4.6))
    names = [rungs[k]["label"] for k in keys]
    x = range(len(keys))
    bpb = [rungs[k]["val_bpb"] or 0.0 for k in keys]
    at_steps = [rungs[k]["val_bpb_equal_steps"] or float("nan") for k in keys]
    axes[0].bar(x, bpb, color=[tint[k] for k in keys])
    axes[0].plot(x, at_steps, "_", color="black", ms=14, mew=2, label="at equal steps")
    floor = (min(v for v in bpb if v) if any(bpb) else 0.0) - 0.15
    for i, k in zip(x, keys):  # the number, written up the bar from its foot
        axes[0].text(i, floor + 0.01, bpb_text(rungs[k]["val_bpb"]), rotation=90, ha="center", va="bottom",
                     fontsize=7, bbox=dict(facecolor="white", alpha=0.8, lw=0, pad=1))
    axes[0].set_ylim(floor, max(bpb + [v for v in at_steps if v == v]) + 0.1)  # v == v: not NaN
    axes[0].legend(fontsize=8)
    for ax, field, title in ((axes[0], None, "val bits per byte"),
                             (axes[1], "tokens_per_second", "training tokens / CPU s"),
                             (axes[2], "kv_bytes_per_token", "KV-cache bytes / token"),
                             (axes[3], "params", "parameters")):
        if field:
            ax.bar(x, [rungs[k][field] for k in keys], color=[tint[k] for k in keys])
        ax.set_xticks(list(x), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)


def draw_alone(page, verdicts):
    import numpy as np

    fig, ax = page.figure(
        "alone", "Each piece's change in validation bits per byte at equal time: alone on top of GPT-2, and on the "
        "ladder (on top of every piece before it). Below zero helped; the dotted lines are the margin the two "
        "GPT-2 seeds set.", size=(7.5, 4.2))
    x = np.arange(len(PIECES))
    for shift, prefix, name, tint in ((-0.2, "alone_", "alone on GPT-2", "#8c6d31"),
                                      (0.2, "", "on the ladder", "#1f77b4")):
        ax.bar(x + shift, [verdicts[prefix + p]["delta"] or 0.0 for p in PIECES], 0.4, color=tint, label=name)
    margin = page.results["noise"]["margin"]
    for level in (-margin, margin):
        ax.axhline(level, color="black", ls=":", lw=1)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [LABELS[p] for p in PIECES], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="change in bits per byte")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)


# ---------------------------------------------------------------- table and sentences
def bpb_text(value):
    return "diverged" if value is None else f"{value:.3f}"


def signed(value):
    return "—" if value is None else f"{value:+.3f}"


def write_tables(page, rungs, verdicts, alone, equal):
    ladder_table(page, rungs, verdicts, equal)
    if alone:
        alone_table(page, rungs, verdicts)


def ladder_table(page, rungs, verdicts, equal):
    rows = []
    for key in ["gpt2", *PIECES, "muon_lr", "noise"]:
        r = rungs[key]
        above = "gpt2" if key == "noise" else verdicts[key]["before"] if key in verdicts else None
        delta = None if above is None else change(rungs, above, key, "val_bpb")
        margin = verdicts[key]["margin"] if key in verdicts else None
        rows.append([r["label"], CHANGES.get(key, ""), bpb_text(r["val_bpb"]), signed(delta),
                     "—" if margin is None else f"{margin:.3f}",
                     bpb_text(r["val_bpb_equal_steps"]), r["steps"], f"{r['train_seconds']:.1f}",
                     f"{r['tokens_per_second']:,.0f}", r["kv_bytes_per_token"], f"{r['params']:,}"])
    page.table("The ladder: each rung adds one piece to the rung above it, and Δ is its change in validation bits "
               "per byte at equal time, a change when larger than the margin (the seed gap plus the two rungs' plan "
               "errors). Wall seconds are as clocked on a shared machine; the plan is CPU time. The last two rows "
               "are off the ladder: the Muon rung at its second learning rate (Δ against the AdamW rung), and GPT-2 "
               "at another seed (Δ against GPT-2).",
               ["rung", "change", "val bits/byte", "Δ", "margin", f"bits/byte at {equal} steps", "steps",
                "wall s", "tokens/CPU s", "KV bytes/token", "parameters"], rows)


def alone_table(page, rungs, verdicts):
    rows = []
    for piece in PIECES:
        judged = verdicts[f"alone_{piece}"]
        run = rungs[judged["after"]]
        rows.append([f"GPT-2 {LABELS[piece]}", bpb_text(run["val_bpb"]), signed(judged["delta"]),
                     signed(verdicts[piece]["delta"]), run["steps"], f"{run['tokens_per_second']:,.0f}"])
    page.table("Each piece alone on GPT-2, and its change there and on the ladder (in validation bits per byte at "
               "equal time)",
               ["run", "val bits/byte", "Δ alone on GPT-2", "Δ on the ladder", "steps", "tokens/CPU s"], rows)


def claim(piece, rungs, judged):
    """'+ RoPE (2.651 → 2.601, -0.050 against a margin of 0.012)': one piece's change at equal
    time, as the page states it."""
    before, after = rungs[judged["before"]]["val_bpb"], rungs[judged["after"]]["val_bpb"]
    margin = "" if judged["margin"] is None else f" against a margin of {judged['margin']:.3f}"
    return f"{LABELS[piece]} ({bpb_text(before)} → {bpb_text(after)}, {signed(judged['delta'])}{margin})"


GROUPS = (("helped", "Helped at this scale"), ("no clear change", "Made no clear difference"),
          ("hurt", "Hurt at this scale"), ("diverged", "Diverged"))


def interpret(page, rungs, verdicts, margin, size, equal, alone):
    say_setup(page, rungs, margin, size)
    for name, opening in GROUPS:
        pieces = [p for p in PIECES if verdicts[p]["verdict"] == name]
        if pieces:
            page.say(f"{opening}: " + "; ".join(claim(p, rungs, verdicts[p]) for p in pieces) + ".")
    say_costs(page, rungs, verdicts)
    say_outcome(page, rungs)
    differ = [LABELS[p] for p in PIECES if verdicts[p]["verdict_equal_steps"] != verdicts[p]["verdict"]]
    page.say(f"At equal steps ({equal}, where a slower rung is further down its learning-rate schedule; margin "
             f"{margin['margin']:.3f}, no plan involved) "
             + (f"the verdict differs for {', '.join(differ)}." if differ else "every verdict is the same."))
    if alone:
        page.say("Alone on GPT-2: " + "; ".join(f"{LABELS[p]} {signed(verdicts[f'alone_{p}']['delta'])} "
                                                f"({verdicts[f'alone_{p}']['verdict']})" for p in PIECES) + ".")


def say_setup(page, rungs, margin, size):
    noise = margin["seed_gap"]
    steps = [rungs[k]["steps"] for k in ("gpt2", *PIECES)]
    errors = [rungs[k]["plan_error"] for k in ("gpt2", *PIECES) if rungs[k]["plan_error"] is not None]
    page.say(f"Every rung trained for {size['seconds']:g} CPU seconds at its own measured speed ({min(steps)} to "
             f"{max(steps)} steps of {size['batch_size']} x {size['block_size']} characters, AdamW at peak lr "
             f"{size['lr']:g}), and is measured on the same validation windows; the verdicts are at equal time. The "
             f"two GPT-2 runs that differ only in seed landed {'—' if noise is None else f'{noise:.3f}'} bits per "
             f"byte apart, so a piece counts as a change when it moves bits per byte by more than "
             f"{margin['margin']:.3f} plus the plan errors of its two rungs"
             + (f" ({min(errors):.3f} to {max(errors):.3f} each)." if errors else "."))


def say_costs(page, rungs, verdicts):
    """What SwiGLU and the grouped KV heads cost or save besides bits per byte."""
    match = page.results["swiglu_match"]
    page.say(f"The SwiGLU MLP has width {match['width']} (the GELU one {match['gelu_width']}): "
             f"{match['swiglu_params']:,} parameters against {match['gelu_params']:,} "
             f"({match['swiglu_params'] - match['gelu_params']:+,}).")
    before, after = rungs["swiglu"], rungs["gqa"]
    page.say(f"Half the key/value heads cut the KV cache from {before['kv_bytes_per_token']:,} to "
             f"{after['kv_bytes_per_token']:,} bytes per generated token and the parameters from "
             f"{before['params']:,} to {after['params']:,}, for a change of {signed(verdicts['gqa']['delta'])} bits "
             f"per byte; training ran at {after['tokens_per_second'] / before['tokens_per_second']:.2f}x the "
             f"tokens per CPU second.")


def say_outcome(page, rungs):
    """The optimizer question, and where the ladder ends against GPT-2."""
    g, adamw, muon, second = rungs["gpt2"], rungs["untied"], rungs["muon"], rungs["muon_lr"]
    page.say(f"At today's block, AdamW reached {bpb_text(adamw['val_bpb'])}; Muon (lr {muon['muon_lr']:g}) "
             f"{bpb_text(muon['val_bpb'])} and (lr {second['muon_lr']:g}) {bpb_text(second['val_bpb'])}, its steps "
             f"running at {muon['tokens_per_second'] / adamw['tokens_per_second']:.2f}x AdamW's tokens per CPU "
             f"second.")
    best = min((k for k in (*PIECES, "muon_lr") if rungs[k]["val_bpb"] is not None),
               key=lambda k: rungs[k]["val_bpb"], default=None)
    if best is not None and g["val_bpb"] is not None:
        b = rungs[best]
        page.say(f"From GPT-2's {g['val_bpb']:.3f} the best rung, {b['label']}, reached {b['val_bpb']:.3f} "
                 f"({b['val_bpb'] - g['val_bpb']:+.3f}) in the same time, with {b['params']:,} parameters against "
                 f"{g['params']:,} and {b['kv_bytes_per_token']:,} KV-cache bytes per token against "
                 f"{g['kv_bytes_per_token']:,}.")
