"""How well a model predicts text: loss, perplexity and bits per byte over batches of windows.

Two ways to choose the windows: `estimate_val` draws the same random windows every time (the
training loop's cheap, comparable estimate), `evaluate_split` reads every token of a split once
(`vintage eval`). Both end in `evaluate_batches`, which runs the model with dropout off.
Bits per byte count only the text's bytes, so char and BPE models compare fairly.
"""
import math

import numpy as np
from tqdm import tqdm

from vintagelm.common import UserError
from vintagelm.data.loader import sequential_batches
from vintagelm.flat_model import evaluating
from vintagelm.nn.loss import IGNORE_INDEX, log_softmax


def token_byte_lengths(tokenizer):
    """(V,) UTF-8 length of every token id; 0 for special tokens, which stand for no text."""
    special = set(tokenizer.special_tokens.values())
    return np.array([0 if i in special else len(tokenizer.decode_bytes([i])) for i in range(tokenizer.vocab_size)])


def evaluate_batches(model, batches, byte_lengths):
    """Loss over (x, y) batches with dropout off -> dict(loss, perplexity, bits_per_byte,
    tokens, bytes). loss is the mean over every target token that is not ignored (-1, as a
    chat model's non-assistant positions); bits per byte counts the text only: nats of the
    ordinary targets / (their UTF-8 bytes * ln 2), special tokens excluded."""
    nats = text_nats = 0.0
    n_tokens = n_bytes = 0
    with evaluating(model):
        for x, y in batches:
            logits, _ = model.forward(x)  # (b, T, V)
            kept = y != IGNORE_INDEX  # (b, T)
            target = np.where(kept, y, 0)  # an ignored target reads some id, then counts for nothing
            nll = -np.take_along_axis(log_softmax(logits), target[..., None], axis=-1)[..., 0][kept]  # nats
            nbytes = byte_lengths[target][kept]
            nats += nll.sum()
            text_nats += nll[nbytes > 0].sum()
            n_tokens += int(kept.sum())
            n_bytes += int(nbytes.sum())
    if n_tokens == 0:
        raise UserError("nothing to evaluate: no complete window of block_size + 1 tokens")
    loss = nats / n_tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 709 else math.inf,  # exp overflows a float past ~709.78
        "bits_per_byte": text_nats / (n_bytes * math.log(2)) if n_bytes else float("nan"),
        "tokens": n_tokens,
        "bytes": n_bytes,
    }


def estimate_val(model, dataset, batch_size, n_batches, seed, byte_lengths):
    """Validation estimate over n_batches random windows of dataset's val split, the same windows
    every time: their generator [seed, 3] is made afresh here, so evaluating never moves the
    training data. dataset: anything with batch(split, B, T, rng), as PreparedDataset."""
    rng = np.random.default_rng([seed, 3])
    T = model.config.block_size
    return evaluate_batches(model, (dataset.batch("val", batch_size, T, rng) for _ in range(n_batches)), byte_lengths)


def evaluate_split(model, tokens, tokenizer, batch_size=16, max_batches=None, progress=False):
    """Every token of `tokens` once, in consecutive windows of block_size (see
    loader.sequential_batches) -> evaluate_batches' dict."""
    T = model.config.block_size
    total = -(-((len(tokens) - 1) // T) // batch_size)  # ceil(windows / batch_size)
    batches = tqdm(sequential_batches(tokens, batch_size, T, max_batches), total=min(total, max_batches or total),
                   desc="eval", unit="batch", disable=None if progress else True, leave=False)
    return evaluate_batches(model, batches, token_byte_lengths(tokenizer))
