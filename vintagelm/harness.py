"""The items of an evaluation task scored as lm-evaluation-harness scores them, by direct forward
passes, without a server: `vintage eval RUN --choices FILE` and `vintage eval RUN --documents FILE`.

Two kinds of file, one JSON object a line:
    multiple choice   {"context": str, "choices": [str, ...], "answer": index of the right one}
    documents         {"text": str}
A choice is scored as the continuation " " + choice after its context (lm-eval's default
target_delimiter): the sum of its tokens' log-probabilities. acc counts the items whose most
likely choice is the answer; acc_norm the same with each sum divided by the choice's length in
characters. A document is scored whole, from a fresh start (<|endoftext|>), and a set of them
gives word_perplexity, byte_perplexity and bits_per_byte (nats over all the documents' words or
UTF-8 bytes).

The tokens and windows are lm-eval's, so that its numbers through `vintage serve` and these
agree to rounding (tests/test_lm_eval.py):
  * trailing spaces of a context belong to its continuation; the continuation's tokens are those
    of context + continuation after the context's own (a BPE merge across the boundary counts
    for the continuation); an empty context is <|endoftext|>; special-token strings are their ids;
  * `size` is the most tokens one forward pass sees. A pair longer than that loses the start of
    its context. A longer document is scored in windows: the first predicts size - 1 tokens after
    <|endoftext|>, each next one the following size - 1 tokens after the one token before them,
    and the last, shorter window sees as many earlier tokens as fill the size.
lm-eval with max_length=M sends at most M - 1 tokens at once (it keeps one for a generated
token): its numbers are these with size M - 1.
Shape legend: T tokens, V vocabulary.
"""
import json
import math
import re

import numpy as np

from vintagelm.common import UserError, regular_file
from vintagelm.flat_model import evaluating
from vintagelm.nn.loss import log_softmax

TARGET_DELIMITER = " "  # between a context and each choice, as lm-eval's default


def read_items(path, fields):
    """A JSONL file -> [dict, ...], each line an object with `fields` ({name: type}); a one-line
    UserError naming the first bad line."""
    items = []
    try:
        lines = regular_file(path, "task file").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the task file {path}: {e}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise UserError(f"{path}, line {number}: not JSON ({e})") from None
        if not isinstance(item, dict) or not all(isinstance(item.get(k), t) for k, t in fields.items()):
            wanted = ", ".join(f'"{k}" ({t.__name__})' for k, t in fields.items())
            raise UserError(f"{path}, line {number}: expected an object with {wanted}")
        items.append(item)
    if not items:
        raise UserError(f"the task file {path} holds no items")
    return items


def read_choice_items(path):
    """Multiple-choice items, each checked: at least two choices of text, an answer among them."""
    items = read_items(path, {"context": str, "choices": list, "answer": int})
    for number, item in enumerate(items, 1):
        choices, answer = item["choices"], item["answer"]
        if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices) or not 0 <= answer < len(choices):
            raise UserError(f"{path}, item {number}: needs two or more non-empty choices and an answer that is "
                            f"the index of one (0..{len(choices) - 1})")
    return items


def read_documents(path):
    """The texts of a documents file, each non-empty."""
    texts = [item["text"] for item in read_items(path, {"text": str})]
    if not all(texts):
        raise UserError(f"{path}: document {texts.index('') + 1} is empty; a document needs text to score")
    return texts


def encode(tokenizer, text, where):
    try:
        return tokenizer.encode(text, allowed_special="all")
    except UserError as e:
        raise UserError(f"{where} cannot be encoded with this model's tokenizer: {e}") from None


def encode_pair(tokenizer, context, continuation, where="an item"):
    """(context, continuation) -> (context ids, continuation ids), split as lm-eval splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        return [start_id(tokenizer)], encode(tokenizer, continuation, where)
    context_ids = encode(tokenizer, context, where)
    return context_ids, encode(tokenizer, context + continuation, where)[len(context_ids):]


def start_id(tokenizer):
    """The token every scored text starts from when it has no context of its own."""
    if tokenizer.eot_id is None:
        raise UserError("this model's tokenizer has no <|endoftext|> to start a text from, so it cannot score "
                        "a text without a context")
    return tokenizer.eot_id


def tail_logprob(model, ids, n):
    """The summed log-probability of the last n of `ids`, each after the ones before it, from one
    forward pass over all of them (dropout off)."""
    with evaluating(model):
        logits, _ = model.forward(np.asarray([ids], dtype=np.int64))  # (1, T, V)
    logp = log_softmax(np.asarray(logits[0], dtype=np.float64))  # (T, V): row t predicts token t + 1
    targets = np.arange(len(ids) - n, len(ids))
    return float(logp[targets - 1, np.asarray(ids)[targets]].sum())


def continuation_logprob(model, context_ids, continuation_ids, size):
    """log P(continuation | context) with at most `size` tokens in view (the context's start goes)."""
    if len(continuation_ids) >= size:
        raise UserError(f"a continuation of {len(continuation_ids)} tokens leaves no room for its context in "
                        f"{size} tokens; score with a larger --context")
    return tail_logprob(model, (context_ids + continuation_ids)[-size:], len(continuation_ids))


def document_logprob(model, ids, start, size):
    """log P(document) from a fresh start (`start`, the <|endoftext|> id), in windows of `size`
    tokens (see the module docstring)."""
    if size < 2:
        raise UserError(f"a window of {size} tokens predicts nothing; score with --context 2 or more")
    first = min(size - 1, len(ids))
    total = tail_logprob(model, [start] + ids[:first], first) if ids else 0.0
    done = first
    while done < len(ids):
        end = min(done + size - 1, len(ids))
        total += tail_logprob(model, ids[end - size:end], end - done)
        done = end
    return total


def score_choices(model, tokenizer, items, size):
    """Multiple-choice items -> {"acc", "acc_norm", "items", "loglikelihoods": per item, per choice}."""
    scores, right, right_norm = [], 0, 0
    for number, item in enumerate(items, 1):
        lls = []
        for choice in item["choices"]:
            context_ids, choice_ids = encode_pair(tokenizer, item["context"], TARGET_DELIMITER + choice,
                                                  f"item {number}")
            lls.append(continuation_logprob(model, context_ids, choice_ids, size))
        lengths = np.array([len(c) for c in item["choices"]], dtype=np.float64)
        right += int(np.argmax(lls)) == item["answer"]
        right_norm += int(np.argmax(np.array(lls) / lengths)) == item["answer"]
        scores.append(lls)
    return {"acc": right / len(items), "acc_norm": right_norm / len(items), "items": len(items),
            "loglikelihoods": scores}


def score_documents(model, tokenizer, texts, size):
    """Documents -> {"word_perplexity", "byte_perplexity", "bits_per_byte", "documents", "words",
    "bytes", "loglikelihoods": per document}. Words are the pieces between runs of white space,
    as lm-eval counts them."""
    start = start_id(tokenizer)
    lls = [document_logprob(model, encode(tokenizer, text, f"document {i}"), start, size)
           for i, text in enumerate(texts, 1)]
    words = sum(len(re.split(r"\s+", text)) for text in texts)
    n_bytes = sum(len(text.encode("utf-8")) for text in texts)
    total = sum(lls)
    return {"word_perplexity": safe_exp(-total / words), "byte_perplexity": safe_exp(-total / n_bytes),
            "bits_per_byte": -total / n_bytes / math.log(2), "documents": len(texts), "words": words,
            "bytes": n_bytes, "loglikelihoods": lls}


def safe_exp(x):
    return math.exp(x) if x < 709 else math.inf  # exp overflows a float past ~709.78
