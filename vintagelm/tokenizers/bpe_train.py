"""Byte-level BPE training that updates pair counts incrementally instead of recounting.

The textbook loop (minbpe) recounts every adjacent pair of the whole corpus for each merge:
O(merges x corpus). Here the corpus is first reduced to a word-frequency table (each distinct
pre-split chunk once, with its count), and three structures are kept up to date:

    pair_counts  (a, b) -> occurrences in the corpus, weighted by word frequency
    where        (a, b) -> indices of the words that contain (or once contained) the pair;
                 a list, so an index may repeat (cheaper to grow than a set; a word visited
                 again simply no longer holds the pair)
    heap         entries (-count, (a, b)); the top is the most frequent pair

(In the code a word is a str with one character per token, chr(id), and a pair (a, b) is the
2-character str chr(a) + chr(b); see train_merges.) A merge visits only the words in
`where[pair]`, rewrites them, and changes the counts of the pairs around each merge site.
Heap entries are never removed when a count drops ("lazy deletion"): a popped entry whose
count no longer matches `pair_counts` is re-pushed with the current count (or dropped at
zero), so the top of the heap is always a true maximum.

Tie-breaking (deterministic, documented): the most frequent pair wins; among equally frequent
pairs, the smallest (a, b) in numeric id order (first a, then b). The heap's order gives
exactly that: 2-character strings compare by code point, i.e. by (a, b).

Token ids: bytes are 0..255; each merge's result gets the next free id, except that a merge
whose byte string already is a token (e.g. "ab"+"c" after "a"+"bc") reuses that token's id,
as Hugging Face does, so every token is a distinct byte string (HF's vocab maps text -> id).
Training merges every occurrence left to right, which never learns two routes to the same
bytes, but merges read from a file might hold them; ByteVocab builds both the same way.
"""
import heapq
import operator
from collections import Counter, defaultdict

from tqdm import tqdm

from vintagelm.tokenizers.pretokenize import split_chunks

MAX_TOKENS = 0x110000  # chr() covers ids up to U+10FFFF (see train_merges)


class ByteVocab:
    """Token id -> bytes, grown one merge at a time."""

    def __init__(self):
        self.pieces = [bytes([b]) for b in range(256)]  # id -> bytes
        self.ids = {piece: i for i, piece in enumerate(self.pieces)}  # bytes -> id

    def merge(self, a, b):
        """The id of token a followed by token b, minting a new id if those bytes are new."""
        piece = self.pieces[a] + self.pieces[b]
        new_id = self.ids.get(piece)
        if new_id is None:
            new_id = len(self.pieces)
            self.pieces.append(piece)
            self.ids[piece] = new_id
        return new_id


def count_chunks(pieces, compiled):
    """Word-frequency table: every pre-split chunk of the text pieces -> how often it occurs.

    Returns dict[bytes, int] (chunks UTF-8 encoded). Counting strings first and encoding each
    distinct chunk once is much cheaper than encoding every occurrence.
    """
    counts = Counter()
    for piece in pieces:
        counts.update(split_chunks(compiled, piece))
    return {chunk.encode("utf-8"): n for chunk, n in counts.items()}


def train_merges(chunk_counts, n_tokens, progress=False):
    """Learn merges until the vocabulary holds `n_tokens` tokens (256 bytes + merged tokens).

    chunk_counts: dict[bytes, int] from `count_chunks`. Stops early when no adjacent pair is
    left (every chunk is one token). Returns the merges, list[(a, b)] in the order learned
    (a merge's index is its rank).

    Words are kept as str, one character per token: chr(id). Bytes 0..255 are then simply the
    Latin-1 decoding of the chunk, a pair is a 2-character str whose order is (a, b) order,
    and finding and merging a pair in a word are `str.find` and `str.replace`, which run in C
    (`replace` scans left to right without overlaps, which is exactly how a merge applies).
    """
    if n_tokens > MAX_TOKENS:
        raise ValueError(f"at most {MAX_TOKENS} tokens fit in a str-encoded word, asked for {n_tokens}")
    vocab = ByteVocab()
    # single-byte chunks have no pairs and can never change, so they are left out
    words = [chunk.decode("latin-1") for chunk in chunk_counts if len(chunk) > 1]  # word index -> tokens
    freqs = [n for chunk, n in chunk_counts.items() if len(chunk) > 1]  # word index -> occurrences
    pair_counts = defaultdict(int)
    where = defaultdict(list)
    for wi, (word, freq) in enumerate(zip(words, freqs)):
        for pair in map(operator.add, word, word[1:]):  # the word's adjacent pairs, as 2-char str
            pair_counts[pair] += freq
            where[pair].append(wi)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges = []
    # delay: the bar only appears when training runs longer than a second
    bar = tqdm(total=n_tokens - len(vocab.pieces), unit="tok", desc="bpe merges", disable=not progress, delay=1.0)
    while len(vocab.pieces) < n_tokens and heap:
        neg_count, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -neg_count:  # stale entry: the count fell since it was pushed
            if count:
                heapq.heappush(heap, (-count, pair))
            continue
        before = len(vocab.pieces)
        a, b = map(ord, pair)
        merges.append((a, b))
        apply_merge(pair, chr(vocab.merge(a, b)), words, freqs, where, pair_counts, heap)
        bar.update(len(vocab.pieces) - before)
    bar.close()
    return merges


def apply_merge(pair, new, words, freqs, where, pair_counts, heap):
    """Replace `pair` (2-char str) by the token `new` (1-char str) in every word that holds it;
    update pair counts, the index and the heap.

    Only the pairs touching a merge site change. In a word "x a b y" (freq f) merging (a, b)
    into T removes (x, a) and (b, y) and adds (x, T) and (T, y), each by f. When a site starts
    right where the previous one ended ("a b a b" -> "T T") its left neighbour is already T:
    it turns the (T, a) the first site added into (T, T).
    Pairs whose count fell keep their old, now too high heap entries, which the main loop
    finds stale; the pairs that gained (all contain T) get fresh entries at the end.
    """
    a, b = pair
    born = set()  # pairs (x, T) and (T, y) whose count went up
    for wi in where.pop(pair):
        word = words[wi]
        site = word.find(pair)  # sites: non-overlapping occurrences, left to right
        if site < 0:  # `where` may list words that no longer hold the pair
            continue
        freq = freqs[wi]
        n = len(word)
        end = -1  # where the previous site ended
        while site >= 0:
            if site > 0:
                left = new if site == end else word[site - 1]
                pair_counts[left + a] -= freq
                gained = left + new
                pair_counts[gained] += freq
                born.add(gained)
                where[gained].append(wi)
            if site + 2 < n:
                right = word[site + 2]
                pair_counts[b + right] -= freq
                gained = new + right
                pair_counts[gained] += freq
                born.add(gained)
                where[gained].append(wi)
            end = site + 2
            site = word.find(pair, end)
        words[wi] = word.replace(pair, new)
    pair_counts.pop(pair, None)  # every occurrence is merged
    for p in born:
        if pair_counts[p] > 0:  # a later site of this merge may have taken it back to zero
            heapq.heappush(heap, (-pair_counts[p], p))
