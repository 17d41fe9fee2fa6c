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
                        (acc - 1/4) / (1 - 1/4). And "which word": a word of the val split
                        among four of the same length and about the same frequency there, after
                        the text before it and with the rest of its line, scored by total
                        log-likelihood (see word_accuracy). It took the place of "who speaks
                        next" (version 3): a model of this size sees the turns of a play only in
                        what its block holds, and a 64-character block holds the speaker before
                        last in 4% of items, so that score sat at chance for every model here.
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
VERSION = 3  # 2: who speaks next scored by pointwise mutual information; 3: which word replaces it
DEFAULT_BEFORE = 1900  # the cut-off when the run's dataset was prepared without one
PROMPTS = ("", "The ", "I ", "And ", "It was ", "She ", "When ", "We ")  # neutral sample openings
SAMPLE_TOKENS = 200
MAX_SAMPLES = 1000  # 200,000 sampled tokens: more says no more about a share, and takes hours
MAX_SURPRISE_BYTES = 1_000_000  # each text's bits per byte from its first 1 MB (unless max_batches)
SAMPLE_TEMPERATURE = 0.8  # as `vintage sample`
CONTEXT_LINES = 4  # lines of context before a cloze item
WORD_CONTEXT_CHARS = 200  # the text before a word item's word; a model sees what its block holds
WORD_MIN_LETTERS = 3  # shorter words (a, of, to) are mostly grammar, and have few equals in length
WORD_FREQUENCY_BAND = 0.5  # a distractor's log-frequency is within this of the true word's (x1.65)
MIN_LINE_CHARS = 16  # a cloze line: at least this long, three words, some lower case
EXAMPLES = 5  # examples kept per list in the report
Z95 = 1.959964  # the normal quantile of a two-sided 95% interval
_CLOZE_WORD = re.compile(r"(?<![\w'])[A-Za-z]+(?![\w'])")  # a word of letters only: not o'er, nor 2nd


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


# ---------------------------------------------------------------- 4. cloze: the next line and which word
@dataclass
class ChoiceItem:
    """One multiple-choice item: a context and candidate continuations, one of them true."""
    context: str
    candidates: list  # continuation texts
    answer: int  # index of the true continuation
    doc: int  # the document the context comes from
    line: int  # the line index of the true continuation in it
    window: tuple  # (lo, hi): lines lo..hi-1 of `doc` around the item, no candidate from there
    sources: list  # (doc, line) of each candidate line (cloze); [] for words


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


def word_counts(documents):
    """Counter of the lower-cased words of `documents` (the words word_items may ask for)."""
    return Counter(w.lower() for d in documents for w in _CLOZE_WORD.findall(d))


def _shaped_like(word, model):
    """`word` (lower case) written in the capitals of `model`: Love, LOVE or love."""
    if model.isupper() and len(model) > 1:
        return word.upper()
    return word.capitalize() if model[0].isupper() else word


def word_items(documents, n, seed=0, context_chars=WORD_CONTEXT_CHARS):
    """Up to n items: the text before a word of the documents (at most context_chars characters,
    ending before the space in front of the word), and four continuations, each a candidate
    word with the rest of its line: the true word and three words of the documents of the same
    length and about the same frequency there (log-frequencies within WORD_FREQUENCY_BAND), in
    the true word's capitals. Words of WORD_MIN_LETTERS letters or more, never all in capitals
    (the speaker names and headings of plays), more than context_chars into their document."""
    counts = word_counts(documents)
    by_length = {}
    for word in sorted(counts):
        if len(word) >= WORD_MIN_LETTERS:
            by_length.setdefault(len(word), []).append(word)
    spots = [(d, m.start(), m.end()) for d, text in enumerate(documents) for m in _CLOZE_WORD.finditer(text)
             if m.end() - m.start() >= WORD_MIN_LETTERS and m.start() > context_chars
             and not m.group(0).isupper()]
    rng = np.random.default_rng([seed, 17])
    items = []
    for k in rng.permutation(len(spots)):
        if len(items) == n:
            break
        d, a, b = spots[k]
        text = documents[d]
        word = text[a:b]
        band = math.log(counts[word.lower()])
        pool = [w for w in by_length[len(word)]
                if w != word.lower() and abs(math.log(counts[w]) - band) <= WORD_FREQUENCY_BAND]
        if len(pool) < 3:
            continue
        names = [_shaped_like(w, word) for w in rng.choice(pool, size=3, replace=False)]
        answer = int(rng.integers(4))
        names.insert(answer, word)
        # the space before the word goes with it: a BPE tokenizer writes " love" as one token
        cut = a - 1 if text[a - 1] == " " else a
        eol = text.find("\n", b)
        rest = text[b:] if eol < 0 else text[b:eol + 1]
        line = text.count("\n", 0, a)
        items.append(ChoiceItem(text[cut - context_chars:cut], [text[cut:a] + w + rest for w in names],
                                answer, d, line, (line, line + 1), []))
    return items


def word_accuracy(model, tokenizer, items, counts, batch_size=32):
    """Which word. Each candidate is scored by the total log-likelihood of it and the rest of its
    line after the text before it: the candidates have the same length and the same rest, so a
    model that reads the sentence around the gap picks the true word, and one that knows only
    how common words are is near chance (the candidates are about equally common). -> accuracy
    against chance 1/4, its interval, centred accuracy, and what choosing the word the
    documents use most would score (`counts`: word_counts of them). Items with characters the
    tokenizer cannot encode are skipped and counted."""
    usable, credits = scored_choices(model, tokenizer, items, np.sum, batch_size)
    common = [choice_credit([counts[_CLOZE_WORD.search(c).group(0).lower()] for c in it.candidates], it.answer)
              for it in usable]
    return {**accuracy_summary(credits, 0.25), "skipped": len(items) - len(usable),
            "frequency_baseline": float(np.mean(common)) if common else None}


def choice_accuracy(model, tokenizer, items, batch_size=32):
    """Score each candidate by its mean per-token log-likelihood after the context -> accuracy
    against chance 1/4, its interval and centred accuracy. Items with characters the tokenizer
    cannot encode are skipped and counted."""
    usable, credits = scored_choices(model, tokenizer, items, np.mean, batch_size)
    return {**accuracy_summary(credits, 0.25), "skipped": len(items) - len(usable)}


def scored_choices(model, tokenizer, items, reduce, batch_size=32):
    """Four-way items -> (those whose text the tokenizer can encode, the credit of each): every
    candidate scored by `reduce` (np.mean, np.sum) of its tokens' log-likelihoods after the context."""
    usable = [it for it in items if not split_unknown(tokenizer, it.context + "".join(it.candidates))[1]]
    seqs = [(tokenizer.encode_ordinary(it.context), tokenizer.encode_ordinary(c))
            for it in usable for c in it.candidates]
    scores = [reduce(lp) for lp in token_logprobs(model, seqs, batch_size)]
    return usable, [choice_credit(scores[4 * k:4 * k + 4], it.answer) for k, it in enumerate(usable)]


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
               max_batches=None, n_cloze=200, n_words=400, n_builtin=100, progress=False, log=lambda msg: None):
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
    log("era: the next line and which word, from the val split")
    documents = val_documents(dataset)
    cloze = choice_accuracy(model, tok, cloze_items(documents, n_cloze, seed))
    words = word_accuracy(model, tok, word_items(documents, n_words, seed), word_counts(documents))
    log("era: the period filter on labelled paragraphs")
    labelled = texts.labelled_paragraphs() + texts.builtin_period_paragraphs(n_builtin, seed)
    return {"format": FORMAT, "version": VERSION, "checkpoint": str(ckpt.path), "step": ckpt.step,
            "architecture": getattr(model, "architecture", "gpt"), "data": str(dataset.path), "before": before,
            "seed": seed, "surprise": surprise, "samples": sampled, "pairs": pairs, "cloze": cloze,
            "words": words, "filter": filter_quality(period_filter, labelled)}


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


def _word_line(report):
    if "words" not in report:  # an era.json of version 1 or 2: who speaks next, since retired
        return _choice_line("who speaks next (a score retired in version 3; rerun `vintage eval RUN --era`)",
                            report["speakers"])
    r = report["words"]
    return _choice_line("which word (same length and frequency; total log-likelihood)", r) + (
        f"; choosing the most common word would score {_pct(r['frequency_baseline'])}" if r["n"] else "")


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
                                                              report["cloze"]), _word_line(report)]
    lines.append(f"the filter --before {f['before']} on {f['modern']} modern and {f['period']} period paragraphs: "
                 f"precision {_pct(f['precision'])}, recall {_pct(f['recall'])}, period kept {_pct(f['period_kept'])}")
    lines += [f"    missed ({m['year']}): {m['text'][:90]}" for m in f["misses"][:3]]
    lines += [f"    false alarm ({m['source']}, {m['reason']}): {m['snippet']}" for m in f["false_alarms"][:3]]
    return "\n".join(lines)
