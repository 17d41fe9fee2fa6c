"""The small made-up verse most tests train on: a few hundred lines of words drawn from one
short Shakespearean list, deterministic from a seed, with enough tokens for many windows."""
import numpy as np

WORDS = "the king doth speak of love and night where shall we meet again my lord fair sweet".split()


def verse(n_lines=400, seed=0, words_per_line=8):
    """n_lines lines of words_per_line words from WORDS, a newline after each."""
    rng = np.random.default_rng(seed)
    return "\n".join(" ".join(rng.choice(WORDS, words_per_line)) for _ in range(n_lines)) + "\n"
