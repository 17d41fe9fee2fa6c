"""attention-maps: what every attention head of a trained model looks at, for one prompt.

In each layer, each head turns every position t into a query and every position j <= t into
a key, and spreads one unit of attention over the keys: row t of the head's (T, T) weight
matrix is softmax(q_t · k_j / sqrt(D)) over j <= t, zero above the diagonal (the future).
The weights are recomputed from the model's own parameters (trained_gpt.attention_weights): the model runs block by
block (GPT.block_forward, its own code), and at each layer the input of the attention
sublayer (after ln_1 in a pre-norm model) is projected by that layer's c_attn into q and k.
As a check, the weights times the values v give back the attention output the model's own
forward computed; the page reports the largest difference.

Two numbers per head read the picture:
    entropy   of each row, in bits: 0 when a query looks at one key, log2(t + 1) when it
              spreads evenly over all t + 1 it may see (shown also as a share of that)
    distance  the attention-weighted mean of t - j: how far back the head looks on average
and the share of each row's weight on the previous token, on the token itself and on the
first token name the heads that do one simple thing.
"""
TITLE = "What attention heads look at: every head's weights for one prompt"
HELP = "every head's attention weights for a prompt, per layer, from a trained run (entropy, distance)"
QUICK = dict(max_tokens=48)
DEFAULT = dict(max_tokens=None)  # the whole prompt, up to the model's block_size
DEFAULT_PROMPT = "To be, or not to be: that is the question."
ROLE_SHARE = 0.5  # a head "looks at the previous token" when that token gets at least half its weight
SPREAD = 0.75  # a head "spreads out" when its rows' entropy is at least this share of uniform
# what role() calls a head -> how a sentence says it
ROLES = {"previous token": "on the previous token", "itself": "on the token itself", "first token": "on the first token",
         "one other token": "on one other earlier token", "spread out": "spread out", "mixed": "mixed"}


def add_arguments(p):
    p.add_argument("run_dir", metavar="RUN", help="a run directory (vintage train --out) or one checkpoint folder")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, metavar="TEXT",
                   help=f"the text whose attention to draw (default {DEFAULT_PROMPT!r})")


def run(args, page):
    from vintagelm.common import UserError
    from vintagelm.generate import encode_prompt
    from vintagelm.lab.trained_gpt import attention_weights, draw_attention_maps, load_gpt, token_label

    size = dict(QUICK if args.quick else DEFAULT)
    ckpt = load_gpt(args.run_dir)
    model, tokenizer = ckpt.model.eval(), ckpt.tokenizer
    ids = encode_prompt(tokenizer, args.prompt)
    keep = min(model.config.block_size, size["max_tokens"] or model.config.block_size)
    cut = max(0, len(ids) - keep)
    ids = ids[cut:]
    if len(ids) < 2:
        raise UserError("the prompt is a single token; attention needs at least two to look between")
    labels = [token_label(tokenizer, i) for i in ids]

    maps, outputs_gap = attention_weights(model, ids)  # L x (H, T, T)
    heads = [[head_numbers(P) for P in layer] for layer in maps]
    page.results.update(
        run=str(ckpt.path), step=ckpt.step, model=model.config.to_dict(), prompt=args.prompt,
        tokens=labels, cut_tokens=cut, check_max_difference=outputs_gap,
        heads={f"layer {i}": {f"head {h}": numbers for h, numbers in enumerate(layer)} for i, layer in enumerate(heads)},
    )
    draw_attention_maps(page, maps, labels)
    draw_numbers(page, heads)
    page.table("per head, means over rows 1..: entropy, distance back, and the weight on the previous token, the "
               "token itself, the first token and each row's favourite key",
               ["layer", "head", "entropy bits", "of uniform", "distance", "previous", "itself", "first", "peak",
                "reads as"],
               [[i, h, f"{n['mean_entropy_bits']:.2f}", f"{n['entropy_share_of_uniform']:.2f}",
                 f"{n['mean_distance']:.2f}", f"{n['previous_share']:.2f}", f"{n['self_share']:.2f}",
                 f"{n['first_share']:.2f}", f"{n['peak_share']:.2f}", n["role"]]
                for i, layer in enumerate(heads) for h, n in enumerate(layer)])
    say(page, page.results, heads, len(ids))


def head_numbers(P):
    """One head's (T, T) weights -> per-row entropy (bits) and distance back, their means over
    rows 1..T-1 (row 0 can only look at itself), and what the head mostly attends to."""
    import numpy as np

    T = P.shape[0]
    rows = np.arange(T)
    logs = np.log2(np.where(P > 0, P, 1.0))  # 0 where P is 0, so 0 log 0 counts as 0
    entropy = -(P * logs).sum(axis=1)  # (T,)
    distance = (P * (rows[:, None] - rows[None, :])).sum(axis=1)  # (T,) sum_j P[t, j] (t - j)
    later = rows[1:]
    uniform = np.log2(later + 1)  # entropy of an even spread over the t + 1 visible keys
    shares = dict(previous_share=float(P[later, later - 1].mean()), self_share=float(P[later, later].mean()),
                  first_share=float(P[later[1:], 0].mean()) if T > 2 else float(P[1, 0]),
                  peak_share=float(P[later].max(axis=1).mean()))  # the weight of each row's favourite key
    numbers = dict(entropy_bits=[float(e) for e in entropy], distance=[float(d) for d in distance],
                   mean_entropy_bits=float(entropy[1:].mean()),
                   entropy_share_of_uniform=float((entropy[1:] / uniform).mean()),
                   mean_distance=float(distance[1:].mean()), **shares)
    numbers["role"] = role(numbers)
    return numbers


def role(n):
    """A short name for what a head mostly does, from its numbers."""
    best = max(("previous_share", "previous token"), ("self_share", "itself"), ("first_share", "first token"),
               key=lambda pair: n[pair[0]])
    if n[best[0]] >= ROLE_SHARE:
        return best[1]
    if n["peak_share"] >= ROLE_SHARE:  # sharp, but on some other earlier token (a space, a punctuation mark...)
        return "one other token"
    return "spread out" if n["entropy_share_of_uniform"] >= SPREAD else "mixed"


def draw_numbers(page, heads):
    """Per head: mean row entropy as a share of uniform, and mean distance attended back."""
    import numpy as np

    fig, (ax_e, ax_d) = page.figure("head_numbers", "Per head: how spread out its attention is and how far back "
                                    "it looks (bars grouped by layer)", ncols=2)
    L, H = len(heads), len(heads[0])
    width = 0.8 / H
    for h in range(H):
        x = np.arange(L) + (h - (H - 1) / 2) * width
        ax_e.bar(x, [heads[i][h]["entropy_share_of_uniform"] for i in range(L)], width, label=f"head {h}")
        ax_d.bar(x, [heads[i][h]["mean_distance"] for i in range(L)], width, label=f"head {h}")
    ax_e.axhline(SPREAD, color="gray", lw=0.8, ls="--")
    ax_e.set(xlabel="layer", ylabel="row entropy / uniform entropy", xticks=range(L), ylim=(0, 1.05))
    ax_d.set(xlabel="layer", ylabel="mean tokens attended back", xticks=range(L))
    for ax in (ax_e, ax_d):
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)


def say(page, r, heads, T):
    flat = [(i, h, n) for i, layer in enumerate(heads) for h, n in enumerate(layer)]
    page.say(f"The prompt is {T} tokens" + (f" (its first {r['cut_tokens']} left out)" if r["cut_tokens"] else "")
             + f"; recomputed from the parameters, the weights reproduce the model's own attention output to "
             f"{r['check_max_difference']:.1e}.")
    prev = sorted((x for x in flat if x[2]["role"] == "previous token"), key=lambda x: -x[2]["previous_share"])
    if prev:
        i, h, n = prev[0]
        if len(prev) == 1:
            page.say(f"1 of the {len(flat)} heads, layer {i} head {h}, looks mostly at the previous token: it puts "
                     f"{100 * n['previous_share']:.0f}% of each row's weight there.")
        else:
            page.say(f"{len(prev)} of the {len(flat)} heads look mostly at the previous token ({head_names(prev)}); "
                     f"the clearest, layer {i} head {h}, puts {100 * n['previous_share']:.0f}% of each row's weight there.")
    else:
        i, h, n = max(flat, key=lambda x: x[2]["previous_share"])
        page.say(f"No head gives the previous token half its weight; the most, layer {i} head {h}, gives it "
                 f"{100 * n['previous_share']:.0f}%.")
    counts = {name: sum(n["role"] == name for _, _, n in flat) for name in ROLES}
    page.say("Where the heads look (at least half of each row's weight, on average): "
             + ", ".join(f"{c} {ROLES[name]}" for name, c in counts.items() if c)
             + f"; mixed means no key gets half, yet the rows stay below {100 * SPREAD:.0f}% of an even spread.")
    wide = max(flat, key=lambda x: x[2]["entropy_share_of_uniform"])
    sharp = min(flat, key=lambda x: x[2]["entropy_share_of_uniform"])
    page.say(f"The most spread-out head is layer {wide[0]} head {wide[1]}: its rows carry "
             f"{wide[2]['mean_entropy_bits']:.2f} bits, {100 * wide[2]['entropy_share_of_uniform']:.0f}% of an even "
             f"spread over the tokens it may see, and it looks {wide[2]['mean_distance']:.1f} tokens back on average; "
             f"the sharpest is layer {sharp[0]} head {sharp[1]} at {sharp[2]['mean_entropy_bits']:.2f} bits "
             f"({100 * sharp[2]['entropy_share_of_uniform']:.0f}%), looking {sharp[2]['mean_distance']:.1f} back.")
    if len(heads) > 1:
        reach = [sum(n["mean_distance"] for n in layer) / len(layer) for layer in heads]
        page.say("Mean distance attended back per layer: " + ", ".join(
            f"layer {i} {d:.1f}" for i, d in enumerate(reach)) + " tokens"
                 + (", so the last layer looks further back than the first." if reach[-1] > reach[0] else
                    ", so the last layer does not look further back than the first."))


def head_names(items):
    return ", ".join(f"layer {i} head {h}" for i, h, _ in items)
