"""Is it vintage? Five measurements a 1-20M-parameter model can move, each cheap, deterministic
given its seed and comparable across runs, architectures and tokenizers:

1. surprise by period   bits per byte on the run's held-out period text (its val split), on the
                        team's modern control text and, when given, on another period text the
                        model never saw. The gap (modern - period) is the headline: a period
                        model should find modern English the more surprising. Characters the
                        tokenizer cannot encode (a char model never saw "%") are dropped from
                        the text and counted; their share is reported beside the figure.
2. anachronisms         N samples from fixed seeds and neutral prompts; the share of them the
                        period filter would drop (a year >= the cut-off or a modern term).
3. minimal pairs        how often the model gives the period member of a pair the higher total
                        log-likelihood (chance 50%), with a Wilson 95% interval. The pairs are
                        length-balanced; `shorter_baseline` is what preferring the shorter
                        sentence would score, to show the length alone does not win.
4. cloze                a few lines of the val split as context, four candidate next lines (the
                        true one and three from elsewhere in the split, matched in length, never
                        from the context's own window), scored by the mean per-token
                        log-likelihood of each candidate: accuracy and centred accuracy
                        (acc - 1/4) / (1 - 1/4). And "who speaks next" in the plays: the next
                        speaker's name among four speakers of the same play, after the scene
                        so far (SPEAKER_CONTEXT_CHARS), scored by how much the scene raises
                        each name's probability (see speaker_accuracy).
5. the filter itself    precision and recall of the period filter on labelled paragraphs
                        (texts.py), the modern ones being the positives (what it should drop).

Ties in a comparison get split credit (1/k among k tied best), so a model that cannot tell
the candidates apart scores chance exactly, not below it.

What this file does not do: judge fluency or facts (no LLM judge), or any task that sits at
chance for a model this small.
Shapes: B rows, L row length (<= block_size), V vocabulary.
"""
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vintagelm.common import UserError
from vintagelm.era import texts
from vintagelm.flat_model import evaluating
from vintagelm.nn.loss import log_softmax

FORMAT = "vintagelm-era"  # era.json
VERSION = 2  # 2: who speaks next after the scene so far, scored by pointwise mutual information
DEFAULT_BEFORE = 1900  # the cut-off when the run's dataset was prepared without one
PROMPTS = ("", "The ", "I ", "And ", "It was ", "She ", "When ", "We ")  # neutral sample openings
SAMPLE_TOKENS = 200
MAX_SAMPLES = 1000  # 200,000 sampled tokens: more says no more about a share, and takes hours
MAX_SURPRISE_BYTES = 1_000_000  # each text's bits per byte from its first 1 MB (unless max_batches)
SAMPLE_TEMPERATURE = 0.8  # as `vintage sample`
CONTEXT_LINES = 4  # lines of context before a cloze item; a speaker item has at least these above it
# The text before a speaker item's name: whole lines, at most this many characters. In the
# builtin val plays the speaker before last (the next speaker 60% of the time: speakers take
# turns) is in it for 99% of items; in CONTEXT_LINES lines, for 0.5%. A model sees as much
# of it as its block holds.
SPEAKER_CONTEXT_CHARS = 1500
MIN_LINE_CHARS = 16  # a cloze line: at least this long, three words, some lower case
EXAMPLES = 5  # examples kept per list in the report
Z95 = 1.959964  # the normal quantile of a two-sided 95% interval
_SPEAKER = re.compile(r"[A-Z][A-Z'. -]*[A-Z.]")  # a name line in the builtin plays: HAMLET, FIRST LORD
_HEADING = re.compile(r"(ACT|SCENE)\b")


# ---------------------------------------------------------------- scoring
def _rows(n_ids, first, block_size):
    """Windows that score positions first..n_ids-1 of a sequence -> [(start, a, b)]: the input
    ids[start:b-1] predicts ids[a:b]. The first window runs from 0 as far as block_size allows;
    later ones score block_size // 2 positions each after at least block_size // 2 of context."""
    if n_ids - 1 <= block_size:
        return [(0, first, n_ids)]
    rows, a = [], first
    if a <= block_size:
        rows.append((0, a, block_size + 1))
        a = block_size + 1
    step = max(1, block_size // 2)
    while a < n_ids:
        b = min(n_ids, a + step)
        rows.append((max(0, b - 1 - block_size), a, b))
        a = b
    return rows


def token_logprobs(model, sequences, batch_size=32):
    """sequences: [(context_ids, continuation_ids)], the context non-empty -> one (n_i,)
    float64 array per sequence: log p of each continuation token given all before it (as much
    as fits in the model's block_size). Rows are right-padded, which a causal model ignores."""
    T = model.config.block_size
    seqs = [np.asarray(list(ctx) + list(cont), dtype=np.int64) for ctx, cont in sequences]
    rows = [(i, s, a, b) for i, (seq, (ctx, _)) in enumerate(zip(seqs, sequences))
            for s, a, b in _rows(len(seq), len(ctx), T)]
    rows.sort(key=lambda r: r[3] - 1 - r[1])  # similar lengths together: less padding
    out = [np.zeros(len(cont)) for _, cont in sequences]
    with evaluating(model):
        for k in range(0, len(rows), batch_size):
            chunk = rows[k:k + batch_size]
            L = max(b - 1 - s for _, s, _, b in chunk)
            idx = np.zeros((len(chunk), L), dtype=np.int64)  # (B, L), padded with id 0
            for r, (i, s, _, b) in enumerate(chunk):
                idx[r, :b - 1 - s] = seqs[i][s:b - 1]
            logits, _ = model.forward(idx)  # (B, L, V)
            logp = log_softmax(logits)  # (B, L, V)
            for r, (i, s, a, b) in enumerate(chunk):
                first = len(sequences[i][0])
                positions = np.arange(a, b)
                out[i][a - first:b - first] = logp[r, positions - s - 1, seqs[i][a:b]]
    return out


def start_ids(tokenizer):
    """What a text that opens a fresh document is scored after: <|endoftext|>, else a newline."""
    return [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode_ordinary("\n")


def choice_credit(scores, answer):
    """Credit for one multiple-choice item: 1/k when the answer is among the k best, else 0."""
    scores = np.asarray(scores)
    best = np.flatnonzero(scores == scores.max())
    return 1.0 / len(best) if answer in best else 0.0


def wilson(successes, n, z=Z95):
    """Wilson score interval (low, high) of a proportion; (None, None) when n = 0."""
    if n == 0:
        return None, None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_summary(credits, chance):
    """credits: per-item credit in [0, 1] -> accuracy, its 95% interval, centred accuracy."""
    n = len(credits)
    if n == 0:
        return {"n": 0, "accuracy": None, "ci_low": None, "ci_high": None, "chance": chance, "centred": None}
    acc = float(np.mean(credits))
    low, high = wilson(float(np.sum(credits)), n)
    return {"n": n, "accuracy": acc, "ci_low": low, "ci_high": high, "chance": chance,
            "centred": (acc - chance) / (1 - chance)}


# ---------------------------------------------------------------- 1. surprise by period
def split_unknown(tokenizer, text):
    """-> (text without the characters the tokenizer cannot encode, Counter of those dropped).
    Unknown: encoding raises (a char tokenizer's "error" policy) or gives the <|unk|> id."""
    unk_id = getattr(tokenizer, "unk_id", None)
    unknown = set()
    for ch in set(text):
        try:
            ids = tokenizer.encode_ordinary(ch)
        except UserError:
            unknown.add(ch)
            continue
        if unk_id is not None and unk_id in ids:
            unknown.add(ch)
    if not unknown:
        return text, Counter()
    return "".join(ch for ch in text if ch not in unknown), Counter(ch for ch in text if ch in unknown)


def text_surprise(model, tokenizer, text, what, batch_size=16, max_batches=None, progress=False, log=lambda m: None):
    """Bits per byte of `text` (unknown characters dropped and counted) -> dict. Without
    max_batches, only the first MAX_SURPRISE_BYTES of the text are read and scored."""
    total_bytes = len(text.encode("utf-8"))
    if max_batches is None:
        text = text[:MAX_SURPRISE_BYTES]  # at least that many bytes: a character is one byte or more
    kept, dropped = split_unknown(tokenizer, text)
    ids = np.asarray(tokenizer.encode_ordinary(kept), dtype=np.int64)
    if len(ids) < model.config.block_size + 1:
        raise UserError(f"{what} has {len(ids)} tokens the model can read, fewer than block_size + 1 = "
                        f"{model.config.block_size + 1}; give a longer text")
    return {**bits_per_byte(model, tokenizer, ids, what, batch_size, max_batches, progress, log, total_bytes),
            "chars": len(text), "unknown_chars": sum(dropped.values()),
            "unknown_share": sum(dropped.values()) / max(1, len(text)),
            "unknown_examples": "".join(ch for ch, _ in dropped.most_common(10))}


def split_surprise(model, tokenizer, tokens, what, batch_size=16, max_batches=None, progress=False,
                   log=lambda m: None):
    """Bits per byte of a prepared split (token ids, nothing unknown) -> dict like text_surprise."""
    return {**bits_per_byte(model, tokenizer, tokens, what, batch_size, max_batches, progress, log),
            "chars": None, "unknown_chars": 0, "unknown_share": 0.0, "unknown_examples": ""}


def bits_per_byte(model, tokenizer, ids, what, batch_size, max_batches, progress, log, total_bytes=None):
    """Score ids, at most their first MAX_SURPRISE_BYTES of text unless max_batches bounds it,
    saying first how much that is -> {what, bits_per_byte, bytes, tokens, of_bytes, capped}:
    of_bytes is the whole text's size (total_bytes, else that of ids), capped says only its
    beginning was scored."""
    from vintagelm.evaluate import evaluate_split, token_byte_lengths

    ids = np.asarray(ids)
    ends = np.cumsum(token_byte_lengths(tokenizer)[ids[1:]])  # (N-1,) bytes of the targets up to each
    if total_bytes is None:
        total_bytes = int(ends[-1]) if ends.size else 0
    capped = max_batches is None and total_bytes > MAX_SURPRISE_BYTES
    if capped:
        ids = ids[:max(model.config.block_size, int(np.searchsorted(ends, MAX_SURPRISE_BYTES, side="right"))) + 1]
    windows = (len(ids) - 1) // model.config.block_size
    batches = min(-(-windows // batch_size), max_batches or windows)
    log(f"era: {what}: {batches:,} batch(es) of {batch_size} windows"
        + (f" (its first {MAX_SURPRISE_BYTES:,} of {total_bytes:,} bytes; --max-batches to choose)" if capped else ""))
    result = evaluate_split(model, ids, tokenizer, batch_size, max_batches, progress=progress)
    return {"what": what, "bits_per_byte": result["bits_per_byte"], "bytes": result["bytes"],
            "tokens": result["tokens"], "of_bytes": total_bytes, "capped": capped}


# ---------------------------------------------------------------- 2. anachronisms in samples
def sample_anachronisms(model, tokenizer, n, period_filter, seed=0, tokens=SAMPLE_TOKENS):
    """n samples, sample i from PROMPTS[i % len] with rng [seed, 5, i] -> the share the period
    filter would drop (a sample with any paragraph it drops), by paragraph too, and examples."""
    from vintagelm.data.clean import split_paragraphs
    from vintagelm.generate import TextStream, encode_prompt, generate, special_token_rules

    prompts = [p for p in PROMPTS if not split_unknown(tokenizer, p)[1]]  # those it can encode
    banned, stop = special_token_rules(tokenizer)
    dropped = paragraphs = dropped_paragraphs = 0
    reasons, examples = Counter(), []
    for i in range(n):
        prompt = prompts[i % len(prompts)]
        stream = TextStream(tokenizer)
        rng = np.random.default_rng([seed, 5, i])
        pieces = [stream.push(t) for t in generate(model, encode_prompt(tokenizer, prompt), tokens, rng,
                                                   temperature=SAMPLE_TEMPERATURE, banned_ids=banned, stop_ids=stop)]
        text = prompt + "".join(pieces) + stream.finish()
        hits = [h for h in map(period_filter.find, split_paragraphs(text)) if h is not None]
        paragraphs += len(split_paragraphs(text))
        dropped_paragraphs += len(hits)
        dropped += bool(hits)
        reasons.update(h.reason for h in hits)
        examples += [{"sample": i, "prompt": prompt, "reason": h.reason, "matched": h.matched,
                      "snippet": h.snippet} for h in hits][:max(0, EXAMPLES - len(examples))]
    return {"n": n, "tokens_each": tokens, "temperature": SAMPLE_TEMPERATURE, "seed": seed,
            "prompts": prompts, "dropped": dropped, "share": dropped / n if n else None,
            "paragraphs": paragraphs, "dropped_paragraphs": dropped_paragraphs,
            "paragraph_share": dropped_paragraphs / paragraphs if paragraphs else None,
            "reasons": dict(reasons.most_common()), "examples": examples}


# ---------------------------------------------------------------- 3. minimal pairs
def minimal_pair_accuracy(model, tokenizer, pairs, batch_size=32):
    """pairs: [texts.MinimalPair] -> accuracy of preferring the period member (total log-
    likelihood of the sentence as a fresh document), its interval, the shorter-sentence
    baseline, per-topic accuracy and the pairs the model got most wrong."""
    usable = [p for p in pairs if not split_unknown(tokenizer, p.period + p.modern)[1]]
    start = start_ids(tokenizer)
    scores = token_logprobs(model, [(start, tokenizer.encode_ordinary(s)) for p in usable
                                    for s in (p.period, p.modern)], batch_size)
    totals = np.array([s.sum() for s in scores]).reshape(-1, 2)  # (n, 2) nats: period, modern
    credits = [choice_credit(t, 0) for t in totals]
    shorter = [choice_credit([-len(p.period.encode()), -len(p.modern.encode())], 0) for p in usable]
    by_topic = {}
    for p, c in zip(usable, credits):
        by_topic.setdefault(p.topic, []).append(c)
    margin = totals[:, 0] - totals[:, 1]  # > 0: the period member is the likelier
    worst = [{"period": usable[i].period, "modern": usable[i].modern, "margin_nats": float(margin[i])}
             for i in np.argsort(margin, kind="stable")[:EXAMPLES] if margin[i] < 0]
    return {**accuracy_summary(credits, 0.5), "skipped": len(pairs) - len(usable),
            "ties": int(np.sum(margin == 0)), "mean_margin_nats": float(margin.mean()) if len(margin) else None,
            "shorter_baseline": float(np.mean(shorter)) if shorter else None,
            "by_topic": {t: float(np.mean(c)) for t, c in sorted(by_topic.items())}, "most_modern": worst}


# ---------------------------------------------------------------- 4. cloze and who speaks next
@dataclass
class ChoiceItem:
    """One multiple-choice item: a context and candidate continuations, one of them true."""
    context: str
    candidates: list  # continuation texts
    answer: int  # index of the true continuation
    doc: int  # the document the context comes from
    line: int  # the line index of the true continuation in it
    window: tuple  # (lo, hi): lines lo..hi-1 of `doc` around the item, no candidate from there
    sources: list  # (doc, line) of each candidate line (cloze); [] for speaker names


def val_documents(dataset):
    """The val split decoded, one string per document (the split's <|endoftext|> ids cut it)."""
    tok, val = dataset.tokenizer, np.asarray(dataset.val)
    cuts = np.flatnonzero(val == tok.eot_id) if tok.eot_id is not None else np.zeros(0, dtype=np.int64)
    bounds = zip(np.concatenate([[0], cuts + 1]), np.concatenate([cuts, [len(val)]]))
    return [text for text in (tok.decode(val[a:b].tolist()) for a, b in bounds) if text.strip()]


def _clozeable(line):
    return len(line) >= MIN_LINE_CHARS and len(line.split()) >= 3 and any(c.islower() for c in line)


def cloze_items(documents, n, seed=0, context_lines=CONTEXT_LINES):
    """Up to n items: the context_lines lines before a line, that line and three distractors of
    about its length (within max(2, 10%) characters when enough exist, else the nearest in
    length) from anywhere in the documents outside the item's window: the context, the true
    line and the context_lines lines after it. No candidate repeats the text of another or of
    any line in the window."""
    doc_lines = [d.split("\n") for d in documents]
    pool = [(d, i) for d, lines in enumerate(doc_lines) for i, line in enumerate(lines) if _clozeable(line)]
    if len(pool) < 4:
        return []
    pool_text = [doc_lines[d][i] for d, i in pool]
    text_id = {text: k for k, text in enumerate(dict.fromkeys(pool_text))}  # equal lines share an id
    pool_tid = np.array([text_id[text] for text in pool_text])  # (P,)
    pool_len = np.array([len(text) for text in pool_text])  # (P,)
    pool_doc = np.array([d for d, _ in pool])
    pool_line = np.array([i for _, i in pool])
    rng = np.random.default_rng([seed, 11])
    targets = [k for k, (d, i) in enumerate(pool) if i >= context_lines]
    items = []
    for k in rng.permutation(len(targets)):
        if len(items) == n:
            break
        d, i = pool[targets[k]]
        lines = doc_lines[d]
        lo, hi = i - context_lines, min(len(lines), i + context_lines + 1)
        near = [text_id[text] for text in lines[lo:hi] if text in text_id]  # includes the true line
        ok = ~((pool_doc == d) & (pool_line >= lo) & (pool_line < hi)) & ~np.isin(pool_tid, near)  # (P,)
        gap = np.abs(pool_len - len(lines[i]))  # (P,)
        tolerance = max(2, round(0.1 * len(lines[i])))
        order = np.lexsort((rng.random(len(pool)), gap))  # nearest length first, random among equals
        order = order[ok[order]]
        close = gap[order] <= tolerance
        picked, seen = [], set()
        for j in np.concatenate([rng.permutation(order[close]), order[~close]]):
            if pool_tid[j] not in seen:
                picked.append(j)
                seen.add(pool_tid[j])
            if len(picked) == 3:
                break
        if len(picked) < 3:
            continue
        answer = int(rng.integers(4))
        sources = [(int(pool_doc[j]), int(pool_line[j])) for j in picked]
        sources.insert(answer, (d, i))
        items.append(ChoiceItem("\n".join(lines[lo:i]) + "\n", [doc_lines[a][b] + "\n" for a, b in sources],
                                answer, d, i, (lo, hi), sources))
    return items


def speaker_lines(lines):
    """Indices of the speaker-name lines of a play in the builtin format: a name in capitals
    alone on a line after a blank line, with the speech on the next line."""
    return [i for i in range(1, len(lines) - 1)
            if not lines[i - 1].strip() and lines[i + 1].strip() and _SPEAKER.fullmatch(lines[i])
            and not _HEADING.match(lines[i]) and len(lines[i]) <= 40]


def speaker_items(documents, n, seed=0, context_chars=SPEAKER_CONTEXT_CHARS):
    """Up to n items: the scene before a speaker's name (whole lines, at most context_chars
    characters, ending in the blank line), the name and three other speakers of the same play,
    drawn in proportion to how often they speak (so a guess by a name's frequency alone gains
    little). Plays with fewer than four speakers and texts that are no plays give no items."""
    rng = np.random.default_rng([seed, 13])
    doc_lines = [d.split("\n") for d in documents]
    found = []  # (doc, line index, name)
    counts = []  # per document: Counter of speeches per name
    for d, lines in enumerate(doc_lines):
        at = speaker_lines(lines)
        counts.append(Counter(lines[i] for i in at))
        if len(counts[d]) >= 4:
            found += [(d, i, lines[i]) for i in at if i >= CONTEXT_LINES]
    items = []
    for k in rng.permutation(len(found))[:n]:
        d, i, name = found[k]
        others = [m for m in counts[d] if m != name]
        weights = np.array([counts[d][m] for m in others], dtype=np.float64)
        chosen = rng.choice(len(others), size=3, replace=False, p=weights / weights.sum())
        names = [others[j] for j in chosen]
        answer = int(rng.integers(4))
        names.insert(answer, name)
        lo = first_line_within(doc_lines[d], i, context_chars)
        context = "\n".join(doc_lines[d][lo:i]) + "\n"  # ends in the blank line
        items.append(ChoiceItem(context, [m + "\n" for m in names], answer, d, i, (lo, i + 1), []))
    return items


def first_line_within(lines, i, max_chars):
    """The first of the whole lines before line i that together (each with its newline) take at
    most max_chars characters; line i - 1 always, however long."""
    lo, size = i - 1, len(lines[i - 1]) + 1
    while lo > 0 and size + len(lines[lo - 1]) + 1 <= max_chars:
        lo -= 1
        size += len(lines[lo]) + 1
    return lo


def speaker_before_last(item):
    """The name (with its newline) of the speaker before the last one in a speaker item's
    context, or None when the context shows fewer than two speeches."""
    lines = item.context.split("\n")
    at = speaker_lines(lines)
    return lines[at[-2]] + "\n" if len(at) >= 2 else None


def speaker_accuracy(model, tokenizer, items, batch_size=32):
    """Who speaks next. Each candidate name is scored by how much the scene raises its
    probability: log p(name | context) - log p(name | a bare blank line), the pointwise mutual
    information of the name and the scene. What a name costs on its own (its length, its
    letters, whether the training plays ever gave it a speech) is in both terms and cancels,
    so a model that learnt nothing of the scene scores chance, and one that follows who
    speaks to whom scores above it. (Scored by its mean log-likelihood per token alone, as
    before version 2, a name scored mostly that cost: trained models chose the name the
    training plays give most speeches, and a model that spells names well chooses the
    longest, its tail costing almost nothing; on the held-out plays both are worth less
    than chance.) -> accuracy against chance 1/4, its interval, centred accuracy, and what
    naming the speaker before last would score (split credit when that name is not a
    candidate). Items with characters the tokenizer cannot encode are skipped and counted."""
    usable = [it for it in items if not split_unknown(tokenizer, it.context + "".join(it.candidates))[1]]
    names = sorted({name for it in usable for name in it.candidates})
    blank = tokenizer.encode_ordinary("\n\n")
    unconditioned = token_logprobs(model, [(blank, tokenizer.encode_ordinary(name)) for name in names], batch_size)
    prior = {name: lp.sum() for name, lp in zip(names, unconditioned)}
    seqs = [(tokenizer.encode_ordinary(it.context), tokenizer.encode_ordinary(c))
            for it in usable for c in it.candidates]
    totals = [lp.sum() for lp in token_logprobs(model, seqs, batch_size)]
    credits, turns = [], []
    for k, it in enumerate(usable):
        credits.append(choice_credit([totals[4 * k + j] - prior[c] for j, c in enumerate(it.candidates)], it.answer))
        before_last = speaker_before_last(it)
        turns.append(choice_credit([c == before_last for c in it.candidates], it.answer))
    return {**accuracy_summary(credits, 0.25), "skipped": len(items) - len(usable), "scoring": "pmi",
            "before_last_baseline": float(np.mean(turns)) if turns else None}


def choice_accuracy(model, tokenizer, items, batch_size=32):
    """Score each candidate by its mean per-token log-likelihood after the context -> accuracy
    against chance 1/4, its interval and centred accuracy. Items with characters the tokenizer
    cannot encode are skipped and counted."""
    usable = [it for it in items if not split_unknown(tokenizer, it.context + "".join(it.candidates))[1]]
    seqs = [(tokenizer.encode_ordinary(it.context), tokenizer.encode_ordinary(c))
            for it in usable for c in it.candidates]
    means = [lp.mean() for lp in token_logprobs(model, seqs, batch_size)]
    credits = [choice_credit(means[4 * k:4 * k + 4], it.answer) for k, it in enumerate(usable)]
    return {**accuracy_summary(credits, 0.25), "skipped": len(items) - len(usable)}


# ---------------------------------------------------------------- 5. the filter itself
def filter_quality(period_filter, labelled):
    """Precision and recall of period_filter at finding the modern paragraphs of `labelled`
    ([texts.Labelled]; modern = year >= the filter's cut-off), with the misses listed."""
    before = period_filter.before
    tp = fp = fn = tn = 0
    misses, false_alarms = [], []
    for item in labelled:
        hit = period_filter.find(item.text)
        if item.is_modern(before):
            tp += hit is not None
            fn += hit is None
            if hit is None and len(misses) < EXAMPLES:
                misses.append({"year": item.year, "text": item.text})
        else:
            fp += hit is not None
            tn += hit is None
            if hit is not None and len(false_alarms) < EXAMPLES:
                false_alarms.append({"year": item.year, "source": item.source, "reason": hit.reason,
                                     "snippet": hit.snippet})
    return {"before": before, "modern": tp + fn, "period": fp + tn, "true_positives": tp,
            "false_positives": fp, "false_negatives": fn, "true_negatives": tn,
            "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
            "period_kept": tn / (tn + fp) if tn + fp else None, "misses": misses, "false_alarms": false_alarms}


# ---------------------------------------------------------------- the whole card
def run_dataset(ckpt, data=None, progress=False, log=lambda msg: None):
    """The prepared dataset a checkpoint's held-out text comes from, found as `vintage eval`
    finds it: `data` when given, else the prepared folder the checkpoint records, else its
    training source spec (prepared with its tokenizer) -> PreparedDataset."""
    from vintagelm.chat.dataset import is_chat_spec
    from vintagelm.data.resolve import resolve_dataset

    saved = ckpt.state.get("data", {}).get("dataset")
    if data is None and saved and Path(saved, "meta.json").is_file():
        spec = saved
    else:
        spec = data or ckpt.state.get("train_config", {}).get("data") or "builtin:shakespeare"
    if is_chat_spec(spec):
        raise UserError(f"the era card needs a model of plain text; {spec} is a chat dataset (give --data)")
    return resolve_dataset(spec, str(ckpt.path / "tokenizer.json"), progress=progress, log=log)


def default_before(dataset):
    """The cut-off the run's data was filtered with, else DEFAULT_BEFORE."""
    filt = dataset.meta.get("period_filter") if dataset is not None else None
    return int(filt["before"]) if isinstance(filt, dict) and filt.get("before") else DEFAULT_BEFORE


def era_report(ckpt, dataset, *, text_file=None, samples=20, before=None, seed=0, batch_size=16,
               max_batches=None, n_cloze=200, n_speakers=200, n_builtin=100, progress=False, log=lambda msg: None):
    """Every figure of the era card for checkpoint `ckpt` (checkpoint.Checkpoint) on its prepared
    `dataset` (its val split is the held-out period text) -> a JSON-able dict. progress: a bar
    while each text is scored (on a terminal)."""
    from vintagelm.data.period import PeriodFilter, load_terms

    check_samples(samples)
    model, tok = ckpt.model, ckpt.tokenizer
    if dataset.tokenizer.fingerprint() != tok.fingerprint():
        raise UserError(f"{dataset.path} was tokenized with a different tokenizer than {ckpt.path}")
    before = default_before(dataset) if before is None else int(before)
    period_filter = PeriodFilter(before, load_terms())

    log("era: bits per byte on the period and modern texts")
    scoring = dict(batch_size=batch_size, max_batches=max_batches, progress=progress, log=log)
    surprise = {"period": split_surprise(model, tok, dataset.val, f"{dataset.path} (val split)", **scoring),
                "modern": text_surprise(model, tok, texts.modern_control_text(), "modern control text", **scoring),
                "text": None}
    if text_file is not None:
        surprise["text"] = text_surprise(model, tok, read_text_file(text_file), str(text_file), **scoring)
    surprise["gap"] = surprise["modern"]["bits_per_byte"] - surprise["period"]["bits_per_byte"]
    surprise["text_gap"] = (surprise["modern"]["bits_per_byte"] - surprise["text"]["bits_per_byte"]
                            if surprise["text"] else None)

    log(f"era: {samples} samples for anachronisms")
    sampled = sample_anachronisms(model, tok, samples, period_filter, seed)
    log("era: minimal pairs")
    pairs = minimal_pair_accuracy(model, tok, texts.minimal_pairs())
    log("era: cloze and who speaks next, from the val split")
    documents = val_documents(dataset)
    cloze = choice_accuracy(model, tok, cloze_items(documents, n_cloze, seed))
    speakers = speaker_accuracy(model, tok, speaker_items(documents, n_speakers, seed))
    log("era: the period filter on labelled paragraphs")
    labelled = texts.labelled_paragraphs() + texts.builtin_period_paragraphs(n_builtin, seed)
    return {"format": FORMAT, "version": VERSION, "checkpoint": str(ckpt.path), "step": ckpt.step,
            "architecture": getattr(model, "architecture", "gpt"), "data": str(dataset.path), "before": before,
            "seed": seed, "surprise": surprise, "samples": sampled, "pairs": pairs, "cloze": cloze,
            "speakers": speakers, "filter": filter_quality(period_filter, labelled)}


def check_samples(n):
    """A UserError unless 0 <= n <= MAX_SAMPLES (the number of samples checked for anachronisms)."""
    if not 0 <= n <= MAX_SAMPLES:
        raise UserError(f"--samples must be 0 to {MAX_SAMPLES} (each is {SAMPLE_TOKENS} sampled tokens), got {n}")


def read_text_file(path):
    from vintagelm.common import regular_file

    try:
        return regular_file(path, "--text").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read --text {path}: {e}") from None


# ---------------------------------------------------------------- the card as text
def _pct(x):
    return "—" if x is None else f"{100 * x:.1f}%"


def _choice_line(name, r):
    if not r["n"]:
        return f"  {name}: no items (the val text has none of this kind)"
    return (f"  {name}: {_pct(r['accuracy'])} (95% CI {_pct(r['ci_low'])}-{_pct(r['ci_high'])}), chance "
            f"{_pct(r['chance'])}, centred {_pct(r['centred'])}, n={r['n']}"
            + (f", {r['skipped']} skipped (unknown characters)" if r.get("skipped") else ""))


def _speaker_line(r):
    if r.get("scoring") != "pmi":  # an era.json from before version 2
        return _choice_line("who speaks next (mean log-likelihood per token, an unsound score)", r)
    line = _choice_line("who speaks next (how much the scene raises each name)", r)
    return line + (f"; naming the speaker before last would score {_pct(r['before_last_baseline'])}"
                   if r["n"] else "")


def format_card(report):
    """The era report as a readable card (a few dozen lines)."""
    s, smp, p, f = report["surprise"], report["samples"], report["pairs"], report["filter"]
    lines = [f"era card: {report['checkpoint']} (step {report['step']}, {report['architecture']}), "
             f"cut-off {report['before']}, seed {report['seed']}",
             "surprise by period (bits per byte; lower = less surprised):"]
    for key, label in (("period", "period, held out (val)"), ("text", "period, --text"), ("modern", "modern control")):
        r = s[key]
        if r is None:
            continue
        unknown = (f"; {r['unknown_chars']} unknown characters dropped ({_pct(r['unknown_share'])}: "
                   f"{r['unknown_examples']!r})" if r["unknown_chars"] else "")
        part = f" (the first of {r['of_bytes']:,})" if r.get("capped") else ""
        lines.append(f"  {label:<24} {r['bits_per_byte']:.4f}  over {r['bytes']:,} bytes{part}{unknown}")
    lines.append(f"  GAP modern - period      {s['gap']:+.4f} bits per byte"
                 + (f" (modern - --text {s['text_gap']:+.4f})" if s["text_gap"] is not None else ""))
    lines.append(f"anachronisms: {smp['dropped']} of {smp['n']} samples ({_pct(smp['share'])}) would be dropped "
                 f"by the filter; {smp['dropped_paragraphs']} of {smp['paragraphs']} paragraphs "
                 f"({_pct(smp['paragraph_share'])})")
    lines += [f"    {e['reason']}: {e['matched']!r} in sample {e['sample']}: {e['snippet']}" for e in smp["examples"]]
    lines.append(f"minimal pairs (period member preferred, chance 50%): {_pct(p['accuracy'])} "
                 f"(95% CI {_pct(p['ci_low'])}-{_pct(p['ci_high'])}), n={p['n']}; preferring the shorter "
                 f"sentence would score {_pct(p['shorter_baseline'])}")
    lines += [f"    most modern-leaning: {e['modern']!r} over {e['period']!r} by {-e['margin_nats']:.2f} nats"
              for e in p["most_modern"][:3]]
    lines += ["held-out choices (one of four):", _choice_line("cloze, next line (mean log-likelihood per token)",
                                                              report["cloze"]), _speaker_line(report["speakers"])]
    lines.append(f"the filter --before {f['before']} on {f['modern']} modern and {f['period']} period paragraphs: "
                 f"precision {_pct(f['precision'])}, recall {_pct(f['recall'])}, period kept {_pct(f['period_kept'])}")
    lines += [f"    missed ({m['year']}): {m['text'][:90]}" for m in f["misses"][:3]]
    lines += [f"    false alarm ({m['source']}, {m['reason']}): {m['snippet']}" for m in f["false_alarms"][:3]]
    return "\n".join(lines)
