"""Byte-level BPE with a regex pre-split (GPT-2 / GPT-4 style), trained from scratch.

Text is UTF-8 bytes, so any string round-trips and no character is ever unknown. Ids:
    0..255                    the bytes themselves
    256..n_ordinary-1         merged tokens, in the order training minted them
    n_ordinary..vocab_size-1  special tokens

Encoding splits the text with the pattern (pretokenize.py) and encodes each chunk on its own.
Chunks repeat a lot (" the", " and", "\\n"), so the ids of each distinct chunk are cached: a
repeated chunk costs one dict lookup. A new chunk is merged by rank: always the lowest-rank
(earliest learned) adjacent pair first, leftmost on ties, one merge at a time, exactly as
Hugging Face's BPE model does (so an exported tokenizer.json gives the same ids).
Training lives in bpe_train.py, the split patterns in pretokenize.py.
"""
import heapq
from itertools import chain

from vintagelm.common import UserError
from vintagelm.tokenizers.base import (
    DEFAULT_SPECIAL_TOKENS, Tokenizer, check_encodable, check_special_tokens, hf_bpe_model, ordinary_pieces,
)
from vintagelm.tokenizers.bpe_train import MAX_TOKENS, ByteVocab, count_chunks, train_merges
from vintagelm.tokenizers.pretokenize import resolve_pattern, split_chunks

CACHE_LIMIT = 1 << 18  # distinct chunks kept in the encode cache before it starts afresh


class BPETokenizer(Tokenizer):
    """Byte-level BPE. Build one with `BPETokenizer.train(...)` or `BPETokenizer.load(path)`."""

    type_name = "bpe"

    def __init__(self, merges, pattern="gpt4", special_tokens=DEFAULT_SPECIAL_TOKENS):
        """merges: list of (a, b) id pairs in rank order; pattern: a PATTERNS name or a regex."""
        self.pattern, self._regex = resolve_pattern(pattern)  # regex source, compiled
        vocab = ByteVocab()
        self.merges = []  # rank -> (a, b)
        self._ranks = {}  # (a, b) -> rank: lower ranks were learned first and merge first
        self._merged = []  # rank -> id of the merged token
        for a, b in merges:
            known = range(len(vocab.pieces))  # a merge may only join tokens minted before it
            if not (isinstance(a, int) and isinstance(b, int) and a in known and b in known):
                raise ValueError(f"merge {len(self.merges)} ({a!r}, {b!r}) names a token that does not exist yet")
            if (a, b) in self._ranks:
                raise ValueError(f"merge {len(self.merges)} ({a}, {b}) is listed twice")
            self._ranks[(a, b)] = len(self.merges)
            self._merged.append(vocab.merge(a, b))
            self.merges.append((a, b))
        super().__init__(special_tokens, n_ordinary=len(vocab.pieces))
        # id -> bytes for every id, specials included, so decoding is one list lookup per id
        self._pieces = vocab.pieces + [s.encode("utf-8") for s in self.special_tokens]
        self._cache = _ChunkCache(self._encode_chunk)

    @classmethod
    def train(cls, text_or_texts, vocab_size, special_tokens=DEFAULT_SPECIAL_TOKENS, pattern="gpt4", progress=False):
        """Train on a string or an iterable of strings (documents) to exactly `vocab_size` ids:
        256 bytes + merged tokens + specials (fewer only if the text runs out of pairs).

        Special-token strings in the text are boundaries, not text (see base.ordinary_pieces).
        `progress` shows a tqdm bar over merges.
        """
        special_tokens = check_special_tokens(special_tokens)
        if not isinstance(vocab_size, int) or not 256 + len(special_tokens) <= vocab_size <= MAX_TOKENS:
            raise UserError(
                f"BPE vocab_size must be between 256 + {len(special_tokens)} specials = "
                f"{256 + len(special_tokens)} and {MAX_TOKENS}, got {vocab_size!r}"
            )
        _, compiled = resolve_pattern(pattern)
        chunk_counts = count_chunks(ordinary_pieces(text_or_texts, special_tokens), compiled)
        merges = train_merges(chunk_counts, vocab_size - len(special_tokens), progress=progress)
        return cls(merges, pattern, special_tokens)

    # ---- encode / decode ----

    def encode_ordinary(self, text):
        check_encodable(text)
        chunks = split_chunks(self._regex, text)
        return list(chain.from_iterable(map(self._cache.__getitem__, chunks)))

    def _encode_chunk(self, chunk):
        """One chunk (str) -> ids: its UTF-8 bytes merged by rank, lowest rank first, leftmost
        first among equal ranks. A heap of (rank, position) over a linked list of tokens makes
        it O(n log n), so a very long chunk (a line of CJK text, 10k spaces) stays cheap."""
        tokens = list(chunk.encode("utf-8"))  # position -> token id, None once merged leftwards
        ranks = self._ranks
        heap = [(r, i) for i, r in enumerate(map(ranks.get, zip(tokens, tokens[1:]))) if r is not None]
        if not heap:  # a single byte, or bytes no merge joins
            return tokens
        heapq.heapify(heap)
        n = len(tokens)
        nxt = list(range(1, n + 1))  # position -> next live position (n = end)
        prv = list(range(-1, n - 1))  # position -> previous live position (-1 = start)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            # skip entries made stale by an earlier merge at or next to position i
            if tokens[i] is None or j == n or ranks.get((tokens[i], tokens[j])) != rank:
                continue
            tokens[i] = self._merged[rank]
            tokens[j] = None
            nxt[i] = nxt[j]
            if nxt[i] < n:
                prv[nxt[i]] = i
            # the merged token forms new pairs with its live neighbours on both sides
            if prv[i] >= 0 and (tokens[prv[i]], tokens[i]) in ranks:
                heapq.heappush(heap, (ranks[tokens[prv[i]], tokens[i]], prv[i]))
            if nxt[i] < n and (tokens[i], tokens[nxt[i]]) in ranks:
                heapq.heappush(heap, (ranks[tokens[i], tokens[nxt[i]]], i))
        return [t for t in tokens if t is not None]

    def decode_bytes(self, ids):
        """Ids -> raw bytes. For streaming: a multi-byte character may be split across calls."""
        return b"".join(map(self._pieces.__getitem__, self.check_ids(ids)))

    def decode(self, ids):
        """Ids -> text. Bytes that do not form whole UTF-8 characters (ids cut mid-character)
        become U+FFFD; use `decode_bytes` when decoding a stream piece by piece."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---- files ----

    def _content(self):
        return {
            "type": self.type_name,
            "pattern": self.pattern,
            "merges": [list(p) for p in self.merges],
            "special_tokens": list(self.special_tokens),  # ids follow the merged tokens, in this order
        }

    @classmethod
    def _from_content(cls, content):
        merges = content["merges"]
        if not all(isinstance(p, list) and len(p) == 2 for p in merges):
            raise ValueError("each merge must be a pair of token ids [a, b]")
        return cls([tuple(p) for p in merges], content["pattern"], content["special_tokens"])

    def _hf_parts(self):
        # HF's ByteLevel step maps each byte to a printable character (GPT-2's table) before
        # the BPE model sees it, so vocab keys and merges are written in those characters.
        table = byte_to_unicode()
        names = ["".join(table[b] for b in piece) for piece in self._pieces[: self.n_ordinary]]
        clash = sorted(set(names) & self.special_tokens.keys())
        if clash:
            raise UserError(f"cannot export: special token {clash[0]!r} is also an ordinary token's text")
        return {
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": self.pattern}, "behavior": "Isolated", "invert": False},
                    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
                ],
            },
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            # merges as "a b" strings, the form every tokenizers version reads; the byte-level
            # alphabet has no space character, so the separator is unambiguous
            "model": hf_bpe_model(
                {**{name: i for i, name in enumerate(names)}, **self.special_tokens},
                [f"{names[a]} {names[b]}" for a, b in self.merges],
            ),
        }


class _ChunkCache(dict):
    """chunk (str) -> ids (list[int]); a missing chunk is encoded once and remembered.

    Looking chunks up through `__getitem__` keeps the common case (a known chunk) inside C.
    The cache empties itself when full, which bounds memory on an endless stream of new text.
    """

    def __init__(self, encode_chunk):
        super().__init__()
        self._encode_chunk = encode_chunk

    def __missing__(self, chunk):
        if len(self) >= CACHE_LIMIT:
            self.clear()
        ids = self[chunk] = self._encode_chunk(chunk)
        return ids


def byte_to_unicode():
    """GPT-2's reversible byte -> printable character table, as HF's ByteLevel uses it.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68
    bytes (controls, space, DEL, NBSP, soft hyphen) are moved to U+0100 upwards, in byte order.
    Returns list[str] indexed by byte.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = [None] * 256
    moved = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + moved)
            moved += 1
    return table
