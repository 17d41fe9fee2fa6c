"""scaling: a handful of model sizes trained for the same compute, and what a power law makes of it.

Every model gets the same budget of training FLOPs, so a model of F FLOPs per token (6 N for
the weights plus the attention, model.flops_per_token) trains for budget / (F x B x T) steps:
a small model takes many steps, a big one few. Along the way each is evaluated on the same
validation windows, which gives its loss against FLOPs spent; the lower envelope of those
curves is the compute-optimal frontier (at each compute, the best loss any of these sizes
reached). Two fits (lab.measure.power_fit, least squares in log-log):
    loss vs parameters    the final validation loss of the sizes at this budget, L ~ a N^b
    frontier vs FLOPs     the envelope, L ~ k C^e, extrapolated to 10x the budget
A parabola in log N through the final losses (the "IsoFLOP" curve of the Chinchilla paper)
puts the compute-optimal size at this budget where it bottoms out.
"""
TITLE = "Scaling: model sizes at equal compute, and a power law"
HELP = "model sizes trained for the same FLOPs: loss vs parameters and vs FLOPs, power-law fits, 10x prediction"
QUICK = dict(shapes=[(1, 8), (1, 16), (2, 32)], block_size=32, batch_size=16, budget=3e10, evals=8,
             eval_batches=8, lr=3e-3)
DEFAULT = dict(shapes=[(1, 16), (2, 32), (2, 48), (3, 64), (4, 96), (6, 128)], block_size=64, batch_size=16,
               budget=2e12, evals=10, eval_batches=16, lr=3e-3)
HEAD_SIZE = 16  # channels per head; n_head = n_embd / HEAD_SIZE
WARMUP_FRACTION = 0.05
PREDICT_FACTOR = 10.0


def add_arguments(p):
    p.add_argument("--budget", type=float, metavar="FLOPS", help="training FLOPs per model (quick 3e10, default 2e12)")
    p.add_argument("--lr", type=float, help="learning rate of every size (default 3e-3)")


def run(args, page):
    import math

    from vintagelm.common import UserError
    from vintagelm.lab.measure import bar
    from vintagelm.lab.short_run import Validation, corpus, short_run
    from vintagelm.model import GPT, GPTConfig

    size = dict(QUICK if args.quick else DEFAULT)
    if args.budget is not None:
        size["budget"] = args.budget
    if args.lr is not None:
        size["lr"] = args.lr
    if size["budget"] <= 0 or size["lr"] <= 0:
        raise UserError("--budget and --lr must be positive")
    data = corpus(progress=not args.no_progress)
    V, T, B = data.tokenizer.vocab_size, size["block_size"], size["batch_size"]
    configs = [GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=max(1, C // HEAD_SIZE), n_embd=C)
               for L, C in size["shapes"]]
    per_token = [GPT(c, seed=args.seed).flops_per_token() for c in configs]
    plan = [int(size["budget"] // (f * B * T)) for f in per_token]
    for config, steps in zip(configs, plan):
        if steps < 2 * size["evals"]:
            raise UserError(f"a budget of {size['budget']:.3g} FLOPs gives the {config.n_layer}x{config.n_embd} "
                            f"model only {steps} steps; raise --budget")

    models = []
    with bar(sum(plan), "scaling", not args.no_progress) as progress:
        for config, f, steps in zip(configs, per_token, plan):
            record = short_run(config, data, steps, size["lr"], B, seed=args.seed,
                               warmup=max(1, round(WARMUP_FRACTION * steps)),
                               validation=Validation(steps=steps // size["evals"], batches=size["eval_batches"]),
                               progress=progress)
            progress.update(steps - len(record.losses))
            models.append(describe_model(config, record, f, steps, B * T, len(data.train)))
    finished = sorted((m for m in models if m["final_val_loss"] is not None), key=lambda m: m["params"])
    if len(finished) < 2:
        raise UserError("fewer than two sizes finished without diverging: nothing to fit; try a lower --lr")

    params_fit = power_fit_dict([m["params"] for m in finished], [m["final_val_loss"] for m in finished])
    isoflop = isoflop_minimum(finished)
    frontier = compute_frontier(finished)
    frontier_fit = power_fit_dict(frontier["flops"], frontier["loss"])
    target = PREDICT_FACTOR * size["budget"]
    predicted = frontier_fit["c"] * target ** frontier_fit["a"]
    best = min(finished, key=lambda m: m["final_val_loss"])
    page.results.update(
        size={**size, "shapes": [list(s) for s in size["shapes"]]}, vocab_size=V, ln_vocab=math.log(V),
        tokens_per_step=B * T, models=models, best=best["name"], params_fit=params_fit, isoflop=isoflop,
        frontier=frontier, frontier_fit=frontier_fit,
        prediction={"budget": target, "val_loss": predicted,
                    "params": isoflop["params"] * math.sqrt(PREDICT_FACTOR) if isoflop else None,
                    "assumption": "the frontier keeps following the same power law of compute over one more "
                                  "decade (no floor of irreducible loss reached, data not repeated, a model "
                                  "of the right size trained); its size grows as compute^0.5 (Chinchilla)"})

    draw_loss_vs_flops(page, models, frontier, frontier_fit, size["budget"], target, predicted)
    draw_loss_vs_params(page, finished, params_fit, isoflop)
    page.table(f"every size at {size['budget']:.3g} training FLOPs ({B} x {T} tokens a step, lr {size['lr']:g})",
               ["model", "parameters", "FLOPs/token", "steps", "tokens", "val loss", "bits/byte", "seconds"],
               [[m["name"], m["params"], f"{m['flops_per_token']:.3g}", m["steps"], m["tokens"],
                 m["final_val_loss"] if m["final_val_loss"] is not None else "diverged", m["final_val_bpb"],
                 f"{m['seconds']:.1f}"] for m in models])
    say_findings(page, models, best, params_fit, isoflop, frontier, frontier_fit, size["budget"], predicted)


def describe_model(config, record, flops_per_token, steps, tokens_per_step, train_tokens):
    """One size's numbers: its validation curve against FLOPs spent, and its final loss."""
    curve = [{"step": s, "flops": s * flops_per_token * tokens_per_step, "val_loss": float(loss),
              "val_bpb": float(bpb)} for s, loss, bpb, _ in record.val]
    last = curve[-1] if curve and not record.diverged else None
    return {"name": f"{config.n_layer}x{config.n_embd}", "n_layer": config.n_layer, "n_embd": config.n_embd,
            "n_head": config.n_head, "params": record.params, "flops_per_token": flops_per_token,
            "steps": steps, "steps_run": len(record.losses), "tokens": steps * tokens_per_step,
            "epochs": steps * tokens_per_step / train_tokens,
            "flops": record.flops, "diverged": record.diverged, "curve": curve,
            "final_val_loss": last["val_loss"] if last else None, "final_val_bpb": last["val_bpb"] if last else None,
            "final_train_loss": record.final_loss(), "seconds": record.seconds}


def power_fit_dict(x, y):
    """power_fit as {a, c, r2}: y ~ c x^a, r2 of the fit in log-log."""
    import numpy as np

    from vintagelm.lab.measure import power_fit

    a, c = power_fit(x, y)
    log_y, fitted = np.log(y), np.log(c) + a * np.log(x)
    total = float(np.sum((log_y - log_y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((log_y - fitted) ** 2)) / total if total > 0 else 1.0
    return {"a": a, "c": c, "r2": r2}


def isoflop_minimum(finished):
    """The bottom of a parabola in log10 N through the final losses -> {params, val_loss}, or None
    when fewer than three sizes finished, the parabola opens downwards or bottoms out beyond the
    sizes measured (then the best size is at the edge and the fit says only 'further')."""
    import numpy as np

    if len(finished) < 3:
        return None
    x = np.log10([m["params"] for m in finished])
    a, b, c = np.polyfit(x, [m["final_val_loss"] for m in finished], 2)
    if a <= 0:
        return None
    vertex = -b / (2 * a)
    if not x.min() <= vertex <= x.max():
        return None
    return {"params": float(10 ** vertex), "val_loss": float(c - b * b / (4 * a))}


def compute_frontier(finished, points=16):
    """The lowest validation loss any size reached at each compute, on a log grid of FLOPs
    between the latest first evaluation and the budget (each curve interpolated in log FLOPs
    within its own range) -> {flops, loss, model}."""
    import numpy as np

    lo = max(m["curve"][0]["flops"] for m in finished)
    hi = min(m["curve"][-1]["flops"] for m in finished)
    grid = np.geomspace(lo, hi, points)
    flops, loss, owner = [], [], []
    for F in grid:
        values = [(float(np.interp(np.log(F), np.log([p["flops"] for p in m["curve"]]),
                                   [p["val_loss"] for p in m["curve"]])), m["name"]) for m in finished]
        best = min(values)
        flops.append(float(F))
        loss.append(best[0])
        owner.append(best[1])
    return {"flops": flops, "loss": loss, "model": owner}


def draw_loss_vs_flops(page, models, frontier, fit, budget, target, predicted):
    import matplotlib.cm as cm
    import numpy as np

    fig, ax = page.figure("loss_vs_flops", "validation loss against training FLOPs for each size; the frontier "
                          "(the best any size reached) and its power law extrapolated to 10x the budget",
                          size=(7.5, 4.5))
    for i, m in enumerate(models):
        color = cm.viridis(i / max(1, len(models) - 1))
        label = f"{m['name']} ({m['params']:,} params)" + (" diverged" if m["diverged"] else "")
        if m["curve"]:
            ax.plot([p["flops"] for p in m["curve"]], [p["val_loss"] for p in m["curve"]], "o-", color=color,
                    markersize=3, label=label)
    ax.plot(frontier["flops"], frontier["loss"], "k--", lw=2, label="frontier")
    span = np.geomspace(frontier["flops"][0], target, 50)
    ax.plot(span, fit["c"] * span ** fit["a"], ":", color="tab:red",
            label=f"fit: loss ~ C^{fit['a']:.3f}")
    ax.plot(target, predicted, "*", color="tab:red", markersize=14, label=f"predicted at {target:.2g}: {predicted:.3f}")
    ax.axvline(budget, color="gray", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel="validation loss (nats)")
    loss_ticks(ax, [p["val_loss"] for m in models for p in m["curve"]] + [predicted])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def draw_loss_vs_params(page, finished, fit, isoflop):
    import numpy as np

    fig, ax = page.figure("loss_vs_params", "final validation loss against parameters at the same compute, with "
                          "the power-law fit (and the parabola's minimum: the compute-optimal size)")
    params = np.array([m["params"] for m in finished], float)
    ax.plot(params, [m["final_val_loss"] for m in finished], "o", markersize=8, label="measured")
    for m in finished:
        ax.annotate(m["name"], (m["params"], m["final_val_loss"]), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    span = np.geomspace(params.min() / 1.5, params.max() * 1.5, 50)
    ax.plot(span, fit["c"] * span ** fit["a"], "--", label=f"fit: loss ~ N^{fit['a']:.3f} (r² {fit['r2']:.2f})")
    if isoflop:
        ax.plot(isoflop["params"], isoflop["val_loss"], "*", color="tab:red", markersize=14,
                label=f"parabola minimum: {isoflop['params']:,.0f} params")
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="final validation loss (nats)")
    loss_ticks(ax, [m["final_val_loss"] for m in finished] + ([isoflop["val_loss"]] if isoflop else []))
    ax.set_xticks(params, [f"{p:,.0f}" for p in params])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def loss_ticks(ax, values):
    """Five labelled ticks over the losses on a log axis (a range inside one decade would
    otherwise get a crowd of minor labels or none)."""
    import numpy as np

    ticks = np.geomspace(min(values), max(values), 5)
    ax.minorticks_off()
    ax.set_yticks(ticks, [f"{t:.2f}" for t in ticks])


def say_findings(page, models, best, params_fit, isoflop, frontier, frontier_fit, budget, predicted):
    """Sentences written from the numbers just measured."""
    finished = sorted((m for m in models if m["final_val_loss"] is not None), key=lambda m: m["params"])
    smallest, largest = finished[0], finished[-1]
    others = [(what, m) for what, m in (("the smallest", smallest), ("the largest", largest)) if m is not best]
    page.say(f"At {budget:.3g} training FLOPs each, the best size was {best['name']} ({best['params']:,} parameters, "
             f"{best['steps']} steps, {best['tokens']:,} tokens) with validation loss {best['final_val_loss']:.3f}; "
             + " and ".join(f"{what}, {m['name']} ({m['params']:,}), reached {m['final_val_loss']:.3f} in "
                            f"{m['steps']} steps" for what, m in others) + ".")
    fit = f"A power law through the final losses gives loss ~ N^{params_fit['a']:.3f} (r² {params_fit['r2']:.2f})"
    if isoflop:
        page.say(f"{fit}, but the losses are lowest in the middle: a parabola in log N bottoms out at about "
                 f"{isoflop['params']:,.0f} parameters, the compute-optimal size for this budget; smaller models "
                 f"were limited by what they can hold, larger ones by the few steps the budget bought them.")
    elif params_fit["a"] < 0:
        page.say(f"{fit}: bigger was better across these sizes, so the compute-optimal size is at or beyond the "
                 f"largest measured.")
    else:
        page.say(f"{fit}: bigger was worse, the larger models could not take enough steps; the compute-optimal "
                 f"size is at or below the smallest measured.")
    handoffs = [(F, a, b) for F, a, b in zip(frontier["flops"][1:], frontier["model"], frontier["model"][1:]) if a != b]
    epochs = max(m["epochs"] for m in finished)
    page.say("The frontier (the lowest loss any size reached at each compute) "
             + ("passed " + ", ".join(f"from {a} to {b} at about {F:.2g} FLOPs" for F, a, b in handoffs)
                if handoffs else f"belonged to {frontier['model'][0]} throughout")
             + f" and follows loss ~ C^{frontier_fit['a']:.3f} (r² {frontier_fit['r2']:.2f}). Extended to "
               f"{PREDICT_FACTOR * budget:.3g} FLOPs it predicts a validation loss of {predicted:.3f}, assuming the "
               f"same power law holds for one more decade of compute (no loss floor reached; the most any size read "
               f"here was {epochs:.2f} passes over the {finished[0]['tokens'] / finished[0]['epochs']:,.0f} training "
               f"tokens)"
             + (f", reached by a model of about {isoflop['params'] * PREDICT_FACTOR ** 0.5:,.0f} parameters if the "
                f"best size grows as compute^0.5 (Chinchilla)." if isoflop else "."))
