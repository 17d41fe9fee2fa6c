"""lr-batch: what the learning rate and the batch size do to a training run.

A small model is trained again and again on the same data (same seed, the schedule of
`vintage train`: a short linear warm-up, a cosine decay to a tenth, clipping at norm 1):
    the learning-rate sweep   one batch size, learning rates on a log grid from far too small
                              (the loss hardly leaves ln V) to far too large (it diverges: the
                              run is kept, drawn and recorded with loss None, never dropped)
    the batch-size sweep      several batch sizes, each with a few learning rates, all with
                              the SAME NUMBER OF TOKENS (so the same compute: a batch of 4 takes
                              four times the steps of a batch of 16). At equal steps a bigger
                              batch would simply see more data and win; at equal tokens the
                              comparison asks what a fixed budget is best spent on: more, noisier
                              steps or fewer, cleaner ones, and whether a bigger batch wants a
                              bigger learning rate.
Every run ends with the validation loss on the same fixed windows, and is saved as a run
folder (runs/NAME) for `vintage doctor`, marked with what it should be diagnosed as.
"""
TITLE = "What the learning rate and the batch size do"
HELP = "a learning-rate sweep (divergence shown) and a batch-size sweep at equal tokens; best LR vs batch"
QUICK = dict(n_layer=2, n_embd=32, n_head=2, block_size=32, batch_size=16, steps=200,
             lrs=[1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0], batches=[8, 16, 64], grid_lrs=[1e-3, 3e-3, 1e-2, 3e-2],
             eval_batches=8)
DEFAULT = dict(n_layer=4, n_embd=64, n_head=4, block_size=64, batch_size=16, steps=600,
               lrs=[1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0],
               batches=[8, 16, 32, 64], grid_lrs=[1e-3, 3e-3, 1e-2, 3e-2], eval_batches=20)
WARMUP_FRACTION = 0.05  # of each run's steps
GRAD_CLIP = 1.0
TOO_LOW_FRACTION = 0.1  # a run whose loss fell less than this share of the best run's fall from ln V


def add_arguments(p):
    p.add_argument("--lrs", type=float, nargs="+", metavar="LR", help="learning rates of the sweep")
    p.add_argument("--batches", type=int, nargs="+", metavar="B", help="batch sizes of the batch sweep")
    p.add_argument("--steps", type=int, metavar="N",
                   help="steps at the sweep's batch size (the token budget of every run is this many batches)")


def run(args, page):
    import math

    import numpy as np

    from vintagelm.common import UserError
    from vintagelm.evaluate import token_byte_lengths
    from vintagelm.lab.measure import LEARNED_MARGIN, PLATEAU_MARGIN, bar, unigram_entropy
    from vintagelm.lab.short_run import ValPoint, corpus, save_run, short_run, validate
    from vintagelm.model import GPTConfig

    size = dict(QUICK if args.quick else DEFAULT)
    if args.lrs:
        size["lrs"] = sorted(set(args.lrs))
    if args.batches:
        size["batches"] = sorted(set(args.batches))
    if args.steps is not None:
        size["steps"] = args.steps
    if min(size["lrs"]) <= 0 or min(size["batches"]) < 1 or size["steps"] < 10:
        raise UserError("need learning rates > 0, batch sizes >= 1 and --steps >= 10")
    B0, T = size["batch_size"], size["block_size"]
    tokens = B0 * size["steps"] * T  # every run's budget
    for B in size["batches"]:
        if tokens // (B * T) < 10:
            raise UserError(f"batch size {B} would get fewer than 10 steps of the {tokens:,}-token budget")
    data = corpus(progress=not args.no_progress)
    V = data.tokenizer.vocab_size
    byte_lengths = token_byte_lengths(data.tokenizer)
    config = GPTConfig(vocab_size=V, block_size=T, n_layer=size["n_layer"], n_head=size["n_head"],
                       n_embd=size["n_embd"])
    # (lr, batch) pairs: the sweep at B0, then each batch size with the grid's rates (shared ones run once)
    plan = [(lr, B0) for lr in size["lrs"]]
    plan += [(lr, B) for B in size["batches"] for lr in size["grid_lrs"] if (lr, B) not in plan]
    summary = {"source": "builtin:shakespeare", "tokenizer": "char", "vocab_size": V,
               "train_tokens": len(data.train), "val_tokens": len(data.val)}

    measured, records = [], {}
    with bar(sum(tokens // (B * T) for _, B in plan), "lr-batch", not args.no_progress) as progress:
        for lr, B in plan:
            steps = tokens // (B * T)
            warmup = max(1, round(WARMUP_FRACTION * steps))
            with np.errstate(over="ignore", invalid="ignore"):  # a diverging run overflows: it is recorded
                record = short_run(config, data, steps, lr, B, seed=args.seed, warmup=warmup, grad_clip=GRAD_CLIP,
                                   layer_norm_every=max(1, steps // 50), progress=progress)
            progress.update(steps - len(record.losses))
            val = None if record.diverged else validate(record.model, data, B0, size["eval_batches"], args.seed,
                                                        byte_lengths)
            if val is not None:
                record.val.append(ValPoint(len(record.losses), *val, record.seconds))
            name = run_name(lr, B)
            records[name] = record
            save_run(record, page.out_dir / "runs" / name, config,
                     {"learning_rate": lr, "batch_size": B, "warmup_iters": warmup, "max_iters": steps,
                      "grad_clip": GRAD_CLIP, "min_lr": 0.1 * lr, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.99,
                      "seed": args.seed, "layer_norm_interval": max(1, steps // 50), "eval_interval": steps,
                      "data": "builtin:shakespeare", "tokenizer": "char"}, summary)
            measured.append(describe_run(name, record, lr, B, steps, warmup, val))
    unigram = unigram_entropy(data.val, V)
    label_runs(measured, math.log(V), unigram)
    if not any(m["batch_size"] == B0 and not m["diverged"] for m in measured):
        # (no folder to point at: a failed experiment's staged page, runs/ included, is removed)
        raise UserError(f"every learning rate diverged at batch {B0}; add smaller ones with --lrs")

    sweep = sorted((m for m in measured if m["batch_size"] == B0), key=lambda m: m["lr"])
    by_batch = {B: sorted((m for m in measured if m["batch_size"] == B and m["lr"] in size["grid_lrs"]),
                          key=lambda m: m["lr"]) for B in size["batches"]}
    best = {B: best_run(runs) for B, runs in by_batch.items()}
    fit = best_lr_fit(best)
    page.results.update(
        size=size, tokens_per_run=tokens, vocab_size=V, ln_vocab=math.log(V), unigram_entropy=unigram,
        warmup_fraction=WARMUP_FRACTION,
        grad_clip=GRAD_CLIP, compared_at="equal tokens", runs_measured=measured,
        lr_sweep={"batch_size": B0, "lrs": [m["lr"] for m in sweep], "val_loss": [m["val_loss"] for m in sweep],
                  "diverged": [m["diverged"] for m in sweep], "best_lr": best_run(sweep)["lr"]},
        batch_sweep={"batches": size["batches"], "lrs": size["grid_lrs"],
                     "val_loss": [[m["val_loss"] for m in by_batch[B]] for B in size["batches"]],
                     "best_lr": [best[B]["lr"] if best[B] else None for B in size["batches"]],
                     "best_val_loss": [best[B]["val_loss"] if best[B] else None for B in size["batches"]],
                     "best_lr_exponent": fit},
        runs={m["name"]: {"folder": f"runs/{m['name']}", "expected": m["expected"]} for m in measured},
        expected_rules={
            "diverged": "the loss became non-finite or rose above 1.5x its start and ln V + 1 (the run stopped)",
            "too_low": f"finished, but its validation loss fell less than {TOO_LOW_FRACTION:.0%} of the way from "
                       f"ln V to the best loss at its batch size: the learning rate is far too low",
            "plateau": f"finished with a validation loss within {PLATEAU_MARGIN:g} nats of the unigram entropy of "
                       f"the val split (letter frequencies only, no context) while the best run at its batch size "
                       f"got {LEARNED_MARGIN:g} nats below it",
            "healthy": "the best validation loss at its batch size",
            "suboptimal": "finished and learning, but worse than the best learning rate at its batch size"})

    draw_lr_sweep(page, sweep, records, math.log(V), B0)
    draw_batch_sweep(page, by_batch, best, records, T, tokens)
    page.table(f"every run ({tokens:,} tokens each; validation loss on the same {size['eval_batches']} x {B0} "
               f"windows)", ["run", "lr", "batch", "steps", "val loss", "bits/byte", "what it shows"],
               [[m["name"], f"{m['lr']:.0e}", m["batch_size"], m["steps"], loss_text(m), m["val_bpb"],
                 m["expected"]] for m in measured])
    say_findings(page, sweep, by_batch, best, fit, tokens, math.log(V), unigram)


def run_name(lr, batch_size):
    """'lr0.003-b16': the run's folder under runs/."""
    return f"lr{lr:.3g}-b{batch_size}"


def describe_run(name, record, lr, batch_size, steps, warmup, val):
    """One run's numbers for results.json, with a thinned loss curve (<= ~100 points)."""
    every = max(1, len(record.losses) // 100)
    return {"name": name, "lr": lr, "batch_size": batch_size, "steps": steps, "warmup": warmup,
            "steps_run": len(record.losses), "diverged": record.diverged,
            "val_loss": None if val is None else float(val[0]), "val_bpb": None if val is None else float(val[1]),
            "final_train_loss": record.final_loss(),
            "max_grad_norm": max((g for g in record.grad_norms if g is not None), default=None),
            "curve_steps": list(range(0, len(record.losses), every)), "curve_loss": record.losses[::every]}


def label_runs(measured, ln_vocab, unigram):
    """Name what each run shows (results["expected_rules"]), comparing it with the best run of
    its batch size (a plateau as in the gradients experiment)."""
    from vintagelm.lab.measure import LEARNED_MARGIN, PLATEAU_MARGIN

    for B in {m["batch_size"] for m in measured}:
        runs = [m for m in measured if m["batch_size"] == B]
        top = best_run(runs)
        for m in runs:
            if m["diverged"]:
                m["expected"] = "diverged"
            elif m is top:
                m["expected"] = "healthy"
            elif ln_vocab - m["val_loss"] < TOO_LOW_FRACTION * (ln_vocab - top["val_loss"]):
                m["expected"] = "too_low"
            elif top["val_loss"] < unigram - LEARNED_MARGIN and abs(m["val_loss"] - unigram) < PLATEAU_MARGIN:
                m["expected"] = "plateau"
            else:
                m["expected"] = "suboptimal"


def best_run(runs):
    finished = [m for m in runs if m["val_loss"] is not None]
    return min(finished, key=lambda m: m["val_loss"]) if finished else None


def best_lr_fit(best):
    """Exponent a of best LR ~ B^a over the batch sizes (None when the best LR did not move or
    fewer than two batch sizes finished)."""
    from vintagelm.lab.measure import power_fit

    points = [(B, m["lr"]) for B, m in best.items() if m]
    if len(points) < 2 or len({lr for _, lr in points}) < 2:
        return None
    return power_fit(*zip(*points))[0]


def loss_text(m):
    return f"diverged at step {m['steps_run']}" if m["diverged"] else f"{m['val_loss']:.3f}"


def draw_lr_sweep(page, sweep, records, ln_vocab, B0):
    """Validation loss against LR (diverged runs as red x at the top), and the training curves."""
    import matplotlib.cm as cm

    fig, (ax_lr, ax_curve) = page.figure("lr_sweep", f"learning-rate sweep at batch {B0}: final validation loss "
                                         "(red x: diverged, no loss) and the training loss of each run", ncols=2)
    finished = [m for m in sweep if not m["diverged"]]
    ax_lr.plot([m["lr"] for m in finished], [m["val_loss"] for m in finished], "o-", label="validation loss")
    top = max([m["val_loss"] for m in finished] + [ln_vocab]) + 0.3
    for m in sweep:
        if m["diverged"]:
            ax_lr.plot(m["lr"], top, "x", color="tab:red", markersize=12, mew=3)
            ax_lr.annotate(f"diverged\n(step {m['steps_run']})", (m["lr"], top), textcoords="offset points",
                           xytext=(0, -28), ha="center", color="tab:red", fontsize=8)
    best = best_run(sweep)
    if best:
        ax_lr.plot(best["lr"], best["val_loss"], "*", color="gold", markersize=16, mec="black", label="best")
    ax_lr.axhline(ln_vocab, color="black", lw=0.8, ls=":", label="ln V (uniform guess)")
    ax_lr.set(xscale="log", xlabel="peak learning rate", ylabel="validation loss (nats)")
    ax_lr.legend(fontsize=8)
    ax_lr.grid(True, which="both", alpha=0.3)
    for i, m in enumerate(sweep):
        color = cm.plasma(i / max(1, len(sweep) - 1))
        points = [(s, x) for s, x in enumerate(records[m["name"]].losses) if x is not None]
        if points:
            ax_curve.plot(*zip(*points), color=color, lw=1,
                          label=f"lr {m['lr']:.0e}" + (" (diverged)" if m["diverged"] else ""))
        if m["diverged"] and points:
            ax_curve.plot(*points[-1], "x", color="tab:red", markersize=10, mew=2)
    ax_curve.axhline(ln_vocab, color="black", lw=0.8, ls=":")
    ax_curve.set(xlabel="step", ylabel="training loss", ylim=(None, 2 * ln_vocab))  # a diverged run leaves the top
    ax_curve.legend(fontsize=7, ncols=2)
    ax_curve.grid(True, alpha=0.3)


def draw_batch_sweep(page, by_batch, best, records, T, tokens):
    """Loss against LR per batch size, the best LR against batch size, and each batch's best run
    against tokens seen."""
    import matplotlib.cm as cm

    fig, (ax_grid, ax_best, ax_tokens) = page.figure(
        "batch_sweep", f"batch-size sweep at equal tokens ({tokens:,} per run): loss against learning rate, the "
        "best learning rate against batch size, and the best run of each batch size against tokens seen", ncols=3)
    batches = list(by_batch)
    colors = {B: cm.viridis(i / max(1, len(batches) - 1)) for i, B in enumerate(batches)}
    for B, runs in by_batch.items():
        finished = [m for m in runs if not m["diverged"]]
        ax_grid.plot([m["lr"] for m in finished], [m["val_loss"] for m in finished], "o-", color=colors[B],
                     label=f"batch {B} ({runs[0]['steps']} steps)")
        for m in runs:
            if m["diverged"]:
                ax_grid.plot(m["lr"], max(x["val_loss"] for x in finished) if finished else 0, "x",
                             color="tab:red", markersize=10, mew=2)
        if best[B]:
            ax_grid.plot(best[B]["lr"], best[B]["val_loss"], "*", color=colors[B], markersize=14, mec="black")
    ax_grid.set(xscale="log", xlabel="peak learning rate", ylabel="validation loss (nats)")
    lrs = sorted({m["lr"] for runs in by_batch.values() for m in runs})
    ax_grid.minorticks_off()
    ax_grid.set_xticks(lrs, [f"{lr:.0e}" for lr in lrs])
    ax_grid.legend(fontsize=7)
    ax_grid.grid(True, which="both", alpha=0.3)
    done = [(B, best[B]) for B in batches if best[B]]
    ax_best.plot([B for B, _ in done], [m["lr"] for _, m in done], "o-", color="tab:purple")
    for B, m in done:
        ax_best.annotate(f"{m['val_loss']:.3f}", (B, m["lr"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax_best.set(xscale="log", yscale="log", xlabel="batch size", ylabel="best learning rate (label: its loss)")
    ax_best.minorticks_off()
    ax_best.set_xticks(batches, [str(B) for B in batches])
    ax_best.set_yticks(lrs, [f"{lr:.0e}" for lr in lrs])
    ax_best.grid(True, which="both", alpha=0.3)
    for B, m in done:
        losses = records[m["name"]].losses
        ax_tokens.plot([(s + 1) * B * T for s in range(len(losses))], losses, color=colors[B], lw=1,
                       label=f"batch {B}, lr {m['lr']:.0e}")
    ax_tokens.set(xlabel="tokens seen", ylabel="training loss")
    ax_tokens.legend(fontsize=7)
    ax_tokens.grid(True, alpha=0.3)


def say_findings(page, sweep, by_batch, best, fit, tokens, ln_vocab, unigram):
    """Sentences written from the numbers just measured."""
    top = best_run(sweep)
    diverged = [m for m in sweep if m["diverged"]]
    lowest = sweep[0]
    first = (f"At batch {top['batch_size']} the best learning rate of the sweep was {top['lr']:.0e} "
             f"(validation loss {top['val_loss']:.3f}, from ln V = {ln_vocab:.3f} at the start). ")
    if diverged:
        first += (f"{len(diverged)} {'runs' if len(diverged) > 1 else 'run'} diverged ("
                  + ", ".join(f"lr {m['lr']:.0e} at step {m['steps_run']}" for m in diverged)
                  + "): drawn as red crosses and recorded with loss None, not dropped. ")
    else:
        first += "No learning rate of the sweep diverged. "
    if not lowest["diverged"]:
        moved = (ln_vocab - lowest["val_loss"]) / (ln_vocab - top["val_loss"])
        first += (f"The smallest, {lowest['lr']:.0e}, ended at {lowest['val_loss']:.3f}: it covered {moved:.0%} of "
                  f"the best run's drop from ln V" + (", too low to learn in this budget." if lowest["expected"] ==
                                                       "too_low" else "."))
    page.say(first)
    above = [m for m in sweep if m["lr"] > top["lr"] and not m["diverged"]]
    if above:
        stuck = ", ".join(f"{m['lr']:.0e}" for m in above if m["expected"] == "plateau")
        page.say("Above the best rate the loss rose again" + (" until the runs diverged" if diverged else "") + ": "
                 + ", ".join(f"{m['lr']:.0e} gave {m['val_loss']:.3f}" for m in above)
                 + (f"; {stuck} ended at the entropy of the letter frequencies ({unigram:.3f}): steps that large "
                    f"kept it from learning anything about context" if stuck else "") + ".")
    done = [(B, best[B]) for B in by_batch if best[B]]
    if done:
        winner = min(done, key=lambda x: x[1]["val_loss"])
        if fit is None:
            trend = ("The best learning rate was the same grid point at every batch size: the grid is too coarse "
                     "to see it move at this budget.")
        elif fit > 0:
            trend = (f"The best learning rate grew as batch^{fit:.2f} across the grid: a bigger batch averages away "
                     f"more gradient noise, so it can take larger steps.")
        else:
            trend = (f"The best learning rate moved as batch^{fit:.2f} across the grid: at equal tokens a bigger "
                     f"batch also takes fewer steps, and with that few steps the larger rates did not pay off.")
        page.say(f"With the same {tokens:,} tokens for every batch size, the best losses were "
                 + ", ".join(f"batch {B}: {m['val_loss']:.3f} at lr {m['lr']:.0e}" for B, m in done)
                 + f"; batch {winner[0]} ({winner[1]['steps']} steps) won. {trend}")
