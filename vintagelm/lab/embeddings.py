"""embeddings: what a trained model's token embeddings learned, seen two ways.

The token embedding matrix wte (V, C) gives every token a vector of C numbers. Training moves
tokens that play the same part in the text (the vowels, the two cases of a letter, the
digits) towards each other, because the layers above can then treat them alike.

  * A 2-D PCA computed here by hand: centre the rows, take the SVD of the centred matrix
    X = U S Vᵀ; the first two rows of Vᵀ are the directions of largest variance (the
    eigenvectors of the covariance XᵀX / (N - 1), whose eigenvalues are S² / (N - 1)), and
    X Vᵀ[:2]ᵀ places every token in that plane. The share of the total variance those two
    explain says how much of the picture the plane shows.
  * Nearest neighbours by cosine similarity in the full C dimensions, for a few chosen tokens,
    and three readings for single-character tokens: do the vowels sit closer to each other
    than to the consonants, is a letter's other case among its nearest neighbours, and does
    one of the two components set upper-case letters apart from lower-case ones.

In results.json a reading is null when the vocabulary lacks the letters it needs (fewer than
two vowels, no letter in both cases). Only the ordinary tokens are used: special tokens such
as <|endoftext|> never occur in a plain-text run's training data, so their rows hold no
learned meaning.
"""
TITLE = "What token embeddings learn: a 2-D PCA and each token's nearest neighbours"
HELP = "2-D PCA (by hand) of a run's token embeddings; nearest neighbours (cosine) of chosen tokens"
QUICK = dict(neighbours=5, labelled=80)
DEFAULT = dict(neighbours=8, labelled=150)
# tried in this order; the ones that are a single token of the run's tokenizer are used
DEFAULT_TOKENS = ["a", "e", "o", "T", "A", "1", " ", "\n", " the", " and", ",", "."]
VOWELS = "aeiou"


def add_arguments(p):
    p.add_argument("run_dir", metavar="RUN", help="a run directory (vintage train --out) or one checkpoint folder")
    p.add_argument("--tokens", nargs="+", metavar="TOKEN",
                   help="tokens whose neighbours to list (write a space as ' ' or \\s, a newline as \\n)")
    p.add_argument("--neighbours", type=int, metavar="K", help="neighbours listed per token")


def run(args, page):
    import numpy as np

    from vintagelm.common import UserError
    from vintagelm.lab.trained_gpt import load_gpt, token_label

    size = dict(QUICK if args.quick else DEFAULT)
    if args.neighbours is not None:
        if args.neighbours < 1:
            raise UserError("--neighbours must be at least 1")
        size["neighbours"] = args.neighbours
    ckpt = load_gpt(args.run_dir)
    tokenizer = ckpt.tokenizer
    n = tokenizer.n_ordinary
    E = np.asarray(ckpt.model.params["wte.weight"][:n], dtype=np.float64)  # (N, C) ordinary tokens
    if n < 3:
        raise UserError(f"{ckpt.path}: the tokenizer has {n} ordinary tokens; a PCA needs at least 3")
    labels = [token_label(tokenizer, i) for i in range(n)]
    texts = [tokenizer.decode([i]) for i in range(n)]

    p = pca(E, 2)
    chosen = chosen_ids(tokenizer, args.tokens)
    k = min(size["neighbours"], n - 1)
    sims = cosine_matrix(E)  # (N, N)
    neighbours = {labels[i]: [{"token": labels[j], "cosine": float(sims[i, j])} for j in nearest(sims, i, k)]
                  for i in chosen}
    readings = dict(vowels=vowel_reading(texts, sims), case_pairs=case_reading(texts, sims),
                    case_axis=case_axis(texts, p["projected"]))
    page.results.update(
        run=str(ckpt.path), step=ckpt.step, tokens=n, channels=int(E.shape[1]),
        tokenizer=type(tokenizer).__name__, model=ckpt.model.config.to_dict(),
        pca=dict(explained_variance=[float(v) for v in p["variance"]], explained_share=[float(s) for s in p["share"]],
                 total_variance=float(p["total"]), share_by_component=[float(s) for s in p["all_shares"]],
                 points={labels[i]: [float(x), float(y)] for i, (x, y) in enumerate(p["projected"])}),
        neighbours=neighbours, readings=readings,
    )
    draw_pca(page, p, labels, texts, set(chosen), size["labelled"])
    draw_shares(page, p)
    page.table(f"{k} nearest neighbours by cosine similarity", ["token", "neighbours (cosine)"],
               [[t, ", ".join(f"{x['token']} ({x['cosine']:.2f})" for x in row)] for t, row in neighbours.items()])
    say(page, page.results, labels, p)


def command_line_token(text):
    r"""What --tokens means by a word: \n, \t and \s stand for a newline, a tab and a space."""
    return text if text == "\\" else text.replace("\\n", "\n").replace("\\t", "\t").replace("\\s", " ")


def chosen_ids(tokenizer, tokens):
    """The ids of the tokens to list neighbours of: --tokens (each must be one ordinary token),
    or those of DEFAULT_TOKENS that are -> list of ints, in order, without repeats."""
    from vintagelm.common import UserError

    ids = []
    for word in tokens or DEFAULT_TOKENS:
        text = command_line_token(word) if tokens else word
        try:
            encoded = tokenizer.encode_ordinary(text)
        except UserError:
            encoded = []
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
        elif tokens:
            raise UserError(f"--tokens {word!r} is {len(encoded) or 'not'} tokens of this run's tokenizer, "
                            "not one; name single tokens")
    if not ids:
        raise UserError("none of the default tokens is a single token of this run's tokenizer; name some with --tokens")
    return ids


def pca(X, k=2):
    """Principal components of the rows of X (N, C), by the SVD of the centred matrix -> dict:
    components (k, C) orthonormal rows, projected (N, k) = centred X @ componentsᵀ,
    variance (k,) = the variance of each projected column (eigenvalues of the covariance),
    share (k,) of the total variance, all_shares (min(N, C),), total (the covariance's trace).
    Each component's sign is fixed so its largest-magnitude entry is positive (an SVD may
    return either sign), so a seed always draws the same picture."""
    import numpy as np

    X = np.asarray(X, dtype=np.float64)
    centred = X - X.mean(axis=0)  # (N, C)
    _, S, Vt = np.linalg.svd(centred, full_matrices=False)  # S (min(N, C),), Vt (min(N, C), C)
    eigenvalues = S**2 / (X.shape[0] - 1)  # the covariance's eigenvalues, largest first
    components = Vt[:k] * np.sign(Vt[np.arange(k), np.argmax(np.abs(Vt[:k]), axis=1)])[:, None]  # (k, C)
    total = float(eigenvalues.sum())
    return dict(components=components, projected=centred @ components.T, variance=eigenvalues[:k],
                share=eigenvalues[:k] / total, all_shares=eigenvalues / total, total=total)


def cosine_matrix(E):
    """E (N, C) -> (N, N) cosine similarity of every pair of rows."""
    import numpy as np

    unit = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def nearest(sims, i, k):
    """The k ids most similar to i (itself left out), most similar first."""
    import numpy as np

    order = np.argsort(-sims[i], kind="stable")
    return [int(j) for j in order if j != i][:k]


def vowel_reading(texts, sims):
    """Mean cosine between two lower-case vowels, and between a vowel and a lower-case consonant;
    how many vowels have another vowel as their nearest letter -> dict (None when the vocabulary
    has fewer than two vowels or no consonant)."""
    import numpy as np

    index = {t: i for i, t in enumerate(texts)}
    vowels = [index[c] for c in VOWELS if c in index]
    consonants = [index[c] for c in "bcdfghjklmnpqrstvwxyz" if c in index]
    if len(vowels) < 2 or not consonants:
        return None
    within = float(np.mean([sims[a, b] for a in vowels for b in vowels if a < b]))
    between = float(np.mean([sims[a, b] for a in vowels for b in consonants]))
    letters = vowels + consonants
    nearest_is_vowel = sum(max((j for j in letters if j != v), key=lambda j: sims[v, j]) in vowels for v in vowels)
    return dict(vowels=[texts[v] for v in vowels], within=within, to_consonants=between,
                nearest_letter_is_vowel=int(nearest_is_vowel))


def case_reading(texts, sims):
    """For every letter present in both cases: the rank of its other case among its neighbours
    (1 = nearest, out of every other ordinary token) -> dict (None when no letter has both)."""
    import numpy as np

    index = {t: i for i, t in enumerate(texts)}
    ranks = {}
    for c in "abcdefghijklmnopqrstuvwxyz":
        if c in index and c.upper() in index:
            for a, b in ((c, c.upper()), (c.upper(), c)):
                order = [j for j in np.argsort(-sims[index[a]], kind="stable") if j != index[a]]
                ranks[a] = order.index(index[b]) + 1
    if not ranks:
        return None
    values = list(ranks.values())
    return dict(ranks=ranks, median_rank=float(np.median(values)), within_5=int(sum(r <= 5 for r in values)),
                letters=len(values), candidates=len(texts) - 1)


def case_axis(texts, projected):
    """Which of the two components best separates upper-case from lower-case letters: the two
    groups' mean coordinates on it and their distance in units of its standard deviation
    -> dict (None unless both groups have letters)."""
    import numpy as np

    upper = [i for i, t in enumerate(texts) if len(t) == 1 and t.isalpha() and t.isupper()]
    lower = [i for i, t in enumerate(texts) if len(t) == 1 and t.isalpha() and t.islower()]
    if not upper or not lower:
        return None
    gaps = [abs(projected[upper, k].mean() - projected[lower, k].mean()) / projected[:, k].std() for k in range(2)]
    k = int(np.argmax(gaps))
    return dict(component=k + 1, upper_mean=float(projected[upper, k].mean()),
                lower_mean=float(projected[lower, k].mean()), separation_sd=float(gaps[k]))


def category(text):
    """The colour group of a token in the scatter."""
    if len(text) == 1 and text in VOWELS:
        return "vowel"
    if text.isalpha() and text.islower():
        return "lower-case" if len(text) == 1 else "word"
    if text.isalpha() and text.isupper():
        return "upper-case"
    if text.strip().isalpha():
        return "word"
    if text.isdigit():
        return "digit"
    if text.isspace():
        return "space"
    return "punctuation / other"


def draw_pca(page, p, labels, texts, chosen, labelled):
    """Every ordinary token in the plane of the first two components, coloured by kind; all
    labelled when there are few, else the chosen ones and those furthest out."""
    import numpy as np

    fig, ax = page.figure("pca", "Token embeddings projected on their first two principal components "
                          f"({100 * p['share'][0]:.1f}% and {100 * p['share'][1]:.1f}% of the variance)",
                          size=(8.0, 7.0))
    xy = p["projected"]  # (N, 2)
    groups = [category(t) for t in texts]
    for group in dict.fromkeys(groups):
        rows = [i for i, g in enumerate(groups) if g == group]
        ax.scatter(xy[rows, 0], xy[rows, 1], s=18, alpha=0.7, label=group)
    far = set(np.argsort(-np.linalg.norm(xy, axis=1))[:labelled].tolist())
    for i, label in enumerate(labels):
        if len(labels) <= labelled or i in chosen or i in far:
            ax.annotate(label, xy[i], fontsize=9 if i in chosen else 7, xytext=(2, 2), textcoords="offset points",
                        fontweight="bold" if i in chosen else "normal", parse_math=False)
    ax.set(xlabel=f"component 1 ({100 * p['share'][0]:.1f}%)", ylabel=f"component 2 ({100 * p['share'][1]:.1f}%)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)


def draw_shares(page, p):
    fig, ax = page.figure("variance", "Share of the embeddings' variance along each principal component",
                          size=(6.4, 3.5))
    shares = p["all_shares"][:20]
    ax.bar(range(1, len(shares) + 1), 100 * shares, color=["C3"] * 2 + ["C0"] * (len(shares) - 2))
    ax.set(xlabel="component (the two drawn in red)", ylabel="% of the variance")
    ax.grid(True, axis="y", alpha=0.3)


def say(page, r, labels, p):
    import numpy as np

    pc, share = r["pca"], r["pca"]["explained_share"]
    both = 100 * (share[0] + share[1])
    order = np.argsort(p["projected"][:, 0], kind="stable")  # tokens from one end of component 1 to the other
    low, high = [labels[i] for i in order[:3]], [labels[i] for i in order[-3:][::-1]]
    page.say(f"The first two components explain {100 * share[0]:.1f}% and {100 * share[1]:.1f}% of the variance "
             f"of the {r['tokens']} token embeddings ({r['channels']} dimensions), {both:.0f}% together, "
             + ("so the plane shows most of how they differ" if both >= 50 else
                "so the plane shows only part of it: the rest is spread over many other directions")
             + f"; component 1 runs from {', '.join(low)} to {', '.join(high)}, and the last of the first ten components "
             f"still explains {100 * pc['share_by_component'][min(9, len(pc['share_by_component']) - 1)]:.1f}%.")
    shown = list(r["neighbours"].items())[:3]
    page.say("Nearest neighbours by cosine: " + "; ".join(
        f"{t} is closest to " + ", ".join(f"{x['token']} ({x['cosine']:.2f})" for x in row[:3]) for t, row in shown) + ".")
    v = r["readings"]["vowels"]
    if v is not None:
        gap = v["within"] - v["to_consonants"]
        page.say(f"The vowels {''.join(v['vowels'])} have a mean cosine of {v['within']:.2f} to each other and "
                 f"{v['to_consonants']:.2f} to the consonants, "
                 + (f"so they cluster ({gap:+.2f})" if gap > 0.05 else f"so they do not cluster ({gap:+.2f})")
                 + f"; {v['nearest_letter_is_vowel']} of {len(v['vowels'])} "
                 + ("has" if v["nearest_letter_is_vowel"] == 1 else "have") + " another vowel as nearest letter.")
    c = r["readings"]["case_pairs"]
    if c is not None:
        page.say(f"For {c['within_5']} of the {c['letters']} letters seen in both cases the other case is among the "
                 f"5 nearest of {c['candidates']} tokens (median rank {c['median_rank']:g}): "
                 + ("the model has learned that A and a are much the same letter" if c["median_rank"] <= 5 else
                    "this model still keeps the two cases of most letters apart")
                 + case_axis_clause(r["readings"]["case_axis"]) + ".")


def case_axis_clause(axis):
    """', while component 2 puts ... apart' when a component separates the cases clearly."""
    if axis is None or axis["separation_sd"] < 1:
        return ""
    return (f", while component {axis['component']} sets the cases apart as a whole (upper-case letters at "
            f"{axis['upper_mean']:+.2f} on average, lower-case at {axis['lower_mean']:+.2f}, "
            f"{axis['separation_sd']:.1f} standard deviations apart)")
