"""gradients: why layer norm and careful initialisation matter, as per-layer gradient norms.

The same short training run (same data, same seed, no warm-up, no clipping, so nothing hides
an instability) for every combination of
    norm    pre (GPT-2: normalise each branch's input), post (the 2017 paper: normalise the
            residual stream after each sum) or none
    depth   2 ... 24 blocks
    init    gpt2 (N(0, 0.02), residual projections / sqrt(2 L)) or normal (N(0, 1))
records the gradient norm of every block every few steps. A healthy network gives every block a
gradient of about the same size; the spread of log10 norms across blocks (its standard
deviation, and the largest block over the smallest) over the first steps measures how far a
setting is from that. Post-norm divides the gradient by the stream's norm at each of 2 L
normalisations on the way down, so the lower blocks' gradients shrink geometrically once
training has made the stream larger (vanishing); N(0, 1) weights make the logits huge, so the
loss and the gradients start far too large (exploding), and without a norm they overflow.
Each run is saved as a run folder (runs/NAME) for `vintage doctor`.
"""
TITLE = "Why layer norm and initialisation matter: gradient norms per layer"
HELP = "per-layer gradient norms and loss for norm pre/post/none, depth 2-24, GPT-2 vs N(0,1) init"
QUICK = dict(depths=[2, 12, 24], n_embd=32, n_head=2, block_size=32, batch_size=8, steps=30, early=10,
             every=1, lr=3e-3)
DEFAULT = dict(depths=[2, 6, 12, 24], n_embd=64, n_head=4, block_size=64, batch_size=16, steps=300, early=30,
               every=5, lr=3e-3)
NORMS = ("pre", "post", "none")
NORM_NAMES = {"pre": "pre-norm", "post": "post-norm", "none": "no norm"}
INITS = ("gpt2", "normal")
# the rules that name what a run shows (results["expected_rules"] repeats them for the reader); the
# vanishing rule is `vintage doctor`'s (doctor.VANISHING_RATIO), the plateau rule the lab's (measure.py)
EXPLODING_GRAD_NORM = 100.0  # global gradient norm at step 0


def add_arguments(p):
    p.add_argument("--depths", type=int, nargs="+", metavar="L", help="numbers of blocks to compare")
    p.add_argument("--steps", type=int, metavar="N", help="training steps per setting")
    p.add_argument("--lr", type=float, help="learning rate of every setting (default 3e-3)")
    p.add_argument("--warmup", type=int, default=0, metavar="N",
                   help="warm-up steps (default 0: the picture without it; rerun with e.g. 100 to compare)")


def run(args, page):
    import math

    import numpy as np

    from vintagelm.common import UserError
    from vintagelm.doctor import VANISHING_RATIO
    from vintagelm.lab.measure import LEARNED_MARGIN, PLATEAU_MARGIN, bar, unigram_entropy
    from vintagelm.lab.short_run import corpus, save_run, short_run
    from vintagelm.model import GPTConfig

    size = dict(QUICK if args.quick else DEFAULT)
    if args.depths:
        size["depths"] = sorted(set(args.depths))
    if args.steps is not None:
        size["steps"] = args.steps
    if args.lr is not None:
        size["lr"] = args.lr
    if size["steps"] < 2 or min(size["depths"]) < 1 or size["lr"] <= 0 or args.warmup < 0:
        raise UserError("need --steps >= 2, depths >= 1, --lr > 0 and --warmup >= 0")
    size["early"] = min(size["early"], size["steps"])
    data = corpus(progress=not args.no_progress)
    V = data.tokenizer.vocab_size
    settings = [(norm, depth, init) for init in INITS for norm in NORMS for depth in size["depths"]]
    train = {"learning_rate": size["lr"], "batch_size": size["batch_size"], "warmup_iters": args.warmup,
             "max_iters": size["steps"], "grad_clip": 0.0, "min_lr": 0.1 * size["lr"], "weight_decay": 0.1,
             "beta1": 0.9, "beta2": 0.99, "seed": args.seed, "layer_norm_interval": size["every"],
             "data": "builtin:shakespeare", "tokenizer": "char"}
    summary = {"source": "builtin:shakespeare", "tokenizer": "char", "vocab_size": V,
               "train_tokens": len(data.train), "val_tokens": len(data.val)}

    measured = {}
    with bar(len(settings) * size["steps"], "gradients", not args.no_progress) as progress:
        for norm, depth, init in settings:
            config = GPTConfig(vocab_size=V, block_size=size["block_size"], n_layer=depth, n_head=size["n_head"],
                               n_embd=size["n_embd"], norm=norm, init=init)
            with np.errstate(over="ignore", invalid="ignore"):  # N(0, 1) without a norm overflows: measured
                record = short_run(config, data, size["steps"], size["lr"], size["batch_size"], seed=args.seed,
                                   warmup=args.warmup, grad_clip=0, layer_norm_every=size["every"],
                                   progress=progress)
            progress.update(size["steps"] - len(record.losses))  # a diverged run stops early
            name = f"{norm}-L{depth}-{init}"
            measured[name] = {"norm": norm, "depth": depth, "init": init,
                              **describe_run(record, depth, size["early"])}
            save_run(record, page.out_dir / "runs" / name, config, train, summary)
    unigram, best_loss = unigram_entropy(data.train, V), min_final_loss(measured)
    for m in measured.values():
        m["expected"] = health(m, math.log(V), unigram, best_loss)
    runs = {name: {"folder": f"runs/{name}", "expected": m["expected"]} for name, m in measured.items()}

    deepest = max(size["depths"])
    page.results.update(
        size=size, warmup=args.warmup, grad_clip=0.0, vocab_size=V, ln_vocab=math.log(V), unigram_entropy=unigram,
        settings=measured,
        runs=runs, spread_definition="mean over the recorded steps before `early` of the standard deviation of "
                                     "log10 gradient norms across the blocks h.0 .. h.L-1",
        expected_rules={
            "diverged": "the loss became non-finite or rose above 1.5x its start and ln V + 1 (the run stopped)",
            "exploding": f"did not diverge, but the first loss is above ln V + 1 or the global gradient norm at "
                         f"step 0 is above {EXPLODING_GRAD_NORM:g} (weights far too large: bad init)",
            "vanishing": f"the median max/min ratio of block gradient norms over the recorded steps is above "
                         f"{VANISHING_RATIO:g}: some blocks get under 1/{VANISHING_RATIO:g} of the gradient others "
                         f"get (the rule of `vintage doctor`'s vanishing-gradients finding)",
            "plateau": f"finished with a final training loss within {PLATEAU_MARGIN:g} nats of the unigram entropy "
                       f"(letter frequencies only, no context) while the best run got {LEARNED_MARGIN:g} nats below "
                       f"it",
            "healthy": "none of the above"})
    draw_heatmaps(page, measured, deepest)
    draw_profiles(page, measured, deepest, size["early"])
    draw_spread(page, measured, size["depths"])
    draw_losses(page, measured, size["depths"], math.log(V))
    page.table("every setting (spread: std of log10 block gradient norms over the first steps)",
               ["setting", "first loss", "final loss", "grad norm at step 0", "early spread", "early max/min",
                "what it shows"],
               [[name, m["first_loss"], loss_text(m), m["grad_norm_first"], m["early_spread"], m["early_ratio"],
                 m["expected"]] for name, m in measured.items()])
    say_findings(page, measured, size, deepest, math.log(V), unigram)


def describe_run(record, depth, early):
    """What results.json keeps of one setting's RunRecord."""
    import numpy as np

    from vintagelm.doctor import block_norm_ratio

    blocks = [f"h.{i}" for i in range(depth)]
    layers = list(record.layer_norms[0][1]) if record.layer_norms else []
    steps = [step for step, _ in record.layer_norms]
    norms = [[n[layer] for layer in layers] for _, n in record.layer_norms]  # (recorded steps, layers)
    spreads, ratios = [], []
    for step, n in record.layer_norms:
        values = [n[b] for b in blocks]
        if step < early and all(v is not None and v > 0 for v in values):
            logs = np.log10(values)
            spreads.append(float(np.std(logs)))
            ratios.append(float(10 ** (logs.max() - logs.min())))
    all_ratios = [r for r in (block_norm_ratio(n) for _, n in record.layer_norms) if r is not None]
    finite_norms = [g for g in record.grad_norms if g is not None]
    return {"steps_run": len(record.losses), "diverged": record.diverged,
            "first_loss": record.losses[0], "final_loss": record.final_loss(),
            "grad_norm_first": record.grad_norms[0], "grad_norm_max": max(finite_norms) if finite_norms else None,
            "early_spread": float(np.mean(spreads)) if spreads else None,
            "early_ratio": float(np.median(ratios)) if ratios else None,
            "ratio": float(np.median(all_ratios)) if len(all_ratios) >= 3 else None,
            "layers": layers, "norm_steps": steps, "layer_norms": norms,
            "losses": record.losses, "grad_norms": record.grad_norms}


def min_final_loss(measured):
    return min((m["final_loss"] for m in measured.values() if m["final_loss"] is not None), default=None)


def health(m, ln_vocab, unigram, best_loss):
    """diverged | exploding | vanishing | plateau | healthy, by the rules in results["expected_rules"]
    (the first that applies: a cause before a symptom)."""
    from vintagelm.doctor import VANISHING_RATIO
    from vintagelm.lab.measure import LEARNED_MARGIN, PLATEAU_MARGIN

    if m["diverged"]:
        return "diverged"
    if m["first_loss"] > ln_vocab + 1 or m["grad_norm_first"] > EXPLODING_GRAD_NORM:
        return "exploding"
    if m["ratio"] is not None and m["ratio"] > VANISHING_RATIO:
        return "vanishing"
    if best_loss is not None and best_loss < unigram - LEARNED_MARGIN and \
            abs(m["final_loss"] - unigram) < PLATEAU_MARGIN:
        return "plateau"
    return "healthy"


def block_log_norms(m, row):
    """log10 gradient norm of each block h.0 .. h.L-1 at recorded step `row`, NaN where not finite
    (for drawing only; results.json keeps None)."""
    import numpy as np

    norms = dict(zip(m["layers"], m["layer_norms"][row]))
    values = [norms.get(f"h.{i}") for i in range(m["depth"])]
    return np.array([np.log10(v) if v is not None and v > 0 else np.nan for v in values])


def draw_heatmaps(page, measured, depth):
    """log10 block gradient norm, block (y) against step (x), one panel per norm, GPT-2 init."""
    import numpy as np

    fig, axes = page.figure("heatmap", f"log10 gradient norm of each of the {depth} blocks over the first steps "
                            f"(GPT-2 init, no warm-up): a flat colour is healthy", ncols=len(NORMS))
    grids = {norm: np.array([block_log_norms(measured[f"{norm}-L{depth}-gpt2"], r)
                             for r in range(len(measured[f"{norm}-L{depth}-gpt2"]["norm_steps"]))]).T
             for norm in NORMS}  # (blocks, recorded steps)
    finite = np.concatenate([g[np.isfinite(g)] for g in grids.values()])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    for ax, norm in zip(axes, NORMS):
        m = measured[f"{norm}-L{depth}-gpt2"]
        steps = m["norm_steps"]
        half = (steps[1] - steps[0]) / 2 if len(steps) > 1 else 0.5  # half the recording interval
        image = ax.imshow(grids[norm], aspect="auto", origin="lower", cmap="viridis", vmin=lo, vmax=hi,
                          extent=(steps[0] - half, steps[-1] + half, -0.5, depth - 0.5))
        ax.set(xlabel="step", ylabel="block (0 = next to the embedding)", title=NORM_NAMES[norm])
    fig.colorbar(image, ax=axes[-1], label="log10 gradient norm")


def draw_profiles(page, measured, depth, early):
    """log10 gradient norm against block at a few steps, one panel per norm; GPT-2 init solid,
    N(0, 1) dashed."""
    import numpy as np

    fig, axes = page.figure("profile", f"gradient norm per block at depth {depth}: step 0, the end of the early "
                            f"window and the last record (solid GPT-2 init, dashed N(0, 1))", ncols=len(NORMS))
    colors = ("tab:blue", "tab:orange", "tab:red")
    for ax, norm in zip(axes, NORMS):
        for init, style in (("gpt2", "-"), ("normal", "--")):
            m = measured[f"{norm}-L{depth}-{init}"]
            steps = m["norm_steps"]
            rows = sorted({0, max((i for i, s in enumerate(steps) if s < early), default=0), len(steps) - 1})
            for color, row in zip(colors, rows):
                ax.plot(np.arange(depth), block_log_norms(m, row), style, color=color, marker=".",
                        label=f"{init}, step {steps[row]}")
        ax.set(xlabel="block", ylabel="log10 gradient norm", title=NORM_NAMES[norm])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)


def draw_spread(page, measured, depths):
    """The early spread against depth, a line per norm and init."""
    fig, ax = page.figure("spread", "spread of log10 gradient norms across blocks over the first steps, "
                          "against depth (a missing point: the run diverged before any finite record)")
    for norm, color in zip(NORMS, ("tab:green", "tab:red", "tab:gray")):
        for init, style in (("gpt2", "-"), ("normal", "--")):
            points = [(d, measured[f"{norm}-L{d}-{init}"]["early_spread"]) for d in depths]
            points = [(d, s) for d, s in points if s is not None]
            if points:
                ax.plot(*zip(*points), style, color=color, marker="o", label=f"{NORM_NAMES[norm]}, {init} init")
    ax.set(xlabel="depth (blocks)", ylabel="std of log10 block gradient norm", xscale="log")
    ax.minorticks_off()
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def draw_losses(page, measured, depths, ln_vocab):
    """Training loss per step, one panel per norm, a line per depth (solid GPT-2, dashed N(0, 1));
    a diverged run ends in an x at its last finite loss."""
    import matplotlib.cm as cm

    fig, axes = page.figure("loss", "training loss per setting (log scale; x: the run diverged there, "
                            "drawn at ln V when not even its first loss was finite)",
                            ncols=len(NORMS))
    colors = {d: cm.viridis(i / max(1, len(depths) - 1)) for i, d in enumerate(depths)}
    for ax, norm in zip(axes, NORMS):
        for depth in depths:
            for init, style in (("gpt2", "-"), ("normal", "--")):
                m = measured[f"{norm}-L{depth}-{init}"]
                points = [(i, x) for i, x in enumerate(m["losses"]) if x is not None]
                label = f"L={depth}, {init}" + (f" (diverged at step {m['steps_run']})" if m["diverged"] else "")
                if points:
                    ax.plot(*zip(*points), style, color=colors[depth], label=label)
                    if m["diverged"]:
                        ax.plot(*points[-1], "x", color=colors[depth], markersize=10, mew=2)
                else:
                    ax.plot([0], [ln_vocab], "x", color=colors[depth], markersize=10, mew=2, label=label)
        ax.axhline(ln_vocab, color="black", lw=0.8, ls=":", label="ln V (uniform guess)")
        ax.set(xlabel="step", ylabel="training loss", yscale="log", title=NORM_NAMES[norm])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)


def say_findings(page, measured, size, depth, ln_vocab, unigram):
    """Sentences written from the numbers just measured."""
    import numpy as np

    from vintagelm.lab.measure import LEARNED_MARGIN, PLATEAU_MARGIN

    pre, post, none = (measured[f"{n}-L{depth}-gpt2"] for n in NORMS)
    if post["early_spread"] is not None and pre["early_spread"] is not None:
        row = len([s for s in post["norm_steps"] if s < size["early"]]) - 1  # the last early record
        logs = block_log_norms(post, row)
        low, high = np.nanmean(logs[: depth // 2]), np.nanmean(logs[depth // 2:])
        page.say(f"At depth {depth} without warm-up, post-norm's gradient norms spread across the blocks with a "
                 f"standard deviation of {post['early_spread']:.2f} decades over the first {size['early']} steps "
                 f"(largest/smallest block {post['early_ratio']:.3g}x), pre-norm's {pre['early_spread']:.2f} "
                 f"({pre['early_ratio']:.3g}x). At step {post['norm_steps'][row]} post-norm's "
                 f"{'lower' if low < high else 'upper'} half of the blocks got 10^{abs(high - low):.1f} times less "
                 f"gradient than the other half: each of the {2 * depth} normalisations rescales the gradient "
                 f"passing through it, while pre-norm's residual stream carries it past them unchanged.")
    page.say(f"With GPT-2 init the depth-{depth} training losses after {size['steps']} steps were "
             + ", ".join(f"{NORM_NAMES[m['norm']]} {loss_text(m)}" for m in (pre, post, none))
             + f" (ln V = {ln_vocab:.3f} is a uniform guess); with no norm at all the early spread was "
             + (f"{none['early_spread']:.2f} decades." if none["early_spread"] is not None else "not measurable."))
    stuck = [f"{NORM_NAMES[m['norm']]} L={m['depth']}" for m in measured.values()
             if m["init"] == "gpt2" and m["final_loss"] is not None and abs(m["final_loss"] - unigram) < PLATEAU_MARGIN]
    best = min((m for m in measured.values() if m["final_loss"] is not None), key=lambda m: m["final_loss"])
    if stuck and best["final_loss"] < unigram - LEARNED_MARGIN:
        page.say(f"{', '.join(stuck)} (GPT-2 init) ended within {PLATEAU_MARGIN:g} nats of {unigram:.3f}, the "
                 f"entropy of the text's letter frequencies: they learned which letters are common and nothing "
                 f"about context, while {NORM_NAMES[best['norm']]} L={best['depth']} ({best['init']}) reached "
                 f"{best['final_loss']:.3f}.")
    normal = [m for m in measured.values() if m["init"] == "normal"]
    gpt2 = {(m["norm"], m["depth"]): m for m in measured.values() if m["init"] == "gpt2"}
    diverged = [f"{NORM_NAMES[m['norm']]} L={m['depth']}" for m in normal if m["diverged"]]
    firsts = [m["first_loss"] for m in normal if m["first_loss"] is not None]
    ratios = [m["grad_norm_first"] / gpt2[(m["norm"], m["depth"])]["grad_norm_first"] for m in normal
              if m["grad_norm_first"] is not None and gpt2[(m["norm"], m["depth"])]["grad_norm_first"]]
    start = (f"started the loss at {min(firsts):.3g} to {max(firsts):.3g} nats instead of about "
             f"ln V = {ln_vocab:.2f}, with step-0 gradient norms {min(ratios):.3g}x to {max(ratios):.3g}x those of "
             f"GPT-2 init; " if firsts and ratios else "gave no finite first loss; ")
    page.say(f"N(0, 1) init {start}{len(diverged)} of its {len(normal)} settings diverged"
             + (f" ({', '.join(diverged)})" if diverged else "") + ".")
    unhealthy = {name: m["expected"] for name, m in measured.items() if m["expected"] != "healthy"}
    page.say(f"{len(unhealthy)} of {len(measured)} runs are marked unhealthy for `vintage doctor` (runs/): "
             + (", ".join(f"{name} {label}" for name, label in unhealthy.items()) or "none") + ".")


def loss_text(m):
    return f"diverged at step {m['steps_run']}" if m["diverged"] else f"{m['final_loss']:.3f}"
