"""Our tokenizers as llama.cpp's byte-level BPE tokenizer (`tokenizer.ggml.model = gpt2`).

llama.cpp tokenizes a `gpt2` vocabulary as our BPE does: it cuts special tokens out of the text
(when asked to parse them), splits the rest with the regex its `tokenizer.ggml.pre` names, maps
each chunk's UTF-8 bytes to GPT-2's printable characters, and merges adjacent pieces lowest rank
first, leftmost on ties. So:

  * BPE: the tokens are our pieces written in GPT-2's byte alphabet and the merges are ours in
    rank order. llama.cpp has no custom regex, only named ones; of those, "gpt-2" is GPT-2's
    pattern and "dbrx" the cl100k (GPT-4) pattern (the possessive quantifiers and `\\s*[\\r\\n]`
    of ours match the same text as its greedy ones and `\\s*[\\r\\n]+`; dbrx, unlike llama3,
    does not take a whole chunk that is a token without merging). One difference remains:
    Python's case-insensitive contractions `'(?i:s)` also match the long s `'ſ`.
  * char: one token per character, written as its bytes in the same alphabet, and merges that
    join the bytes of each multi-byte character back into it (the first byte with the second,
    that with the third, ...). A merge's right side is always a continuation byte and its left
    side a character's lead, so no merge can cross from one character into the next, and the
    split pattern, which cuts only between characters, changes nothing. Characters the model
    never saw are dropped by llama.cpp, where ours refuse them (or give <|unk|>).

Ids are ours: ordinary tokens, then the specials (CONTROL tokens, parsed only when asked), then
unused padding up to the model's vocabulary size when it has more rows than the tokenizer ids.
"""
from dataclasses import dataclass

from vintagelm.common import UserError
from vintagelm.tokenizers.base import EOT
from vintagelm.tokenizers.bpe import byte_to_unicode
from vintagelm.tokenizers.pretokenize import GPT2_PATTERN, GPT4_PATTERN

# our split patterns -> llama.cpp's name for the same split (src/llama-vocab.cpp)
PRE_TOKENIZERS = {GPT2_PATTERN: "gpt-2", GPT4_PATTERN: "dbrx"}
CHAR_PRE_TOKENIZER = "gpt-2"  # any: merges never cross a character
NORMAL, CONTROL, UNUSED = 1, 3, 5  # llama.cpp's token types (gguf.TokenType)
BYTE_NAMES = byte_to_unicode()  # byte -> its printable character


@dataclass
class GGUFVocab:
    tokens: list  # id -> token text (ordinary tokens in GPT-2's byte alphabet)
    types: list  # id -> NORMAL, CONTROL or UNUSED
    merges: list  # "left right" in rank order
    pre: str  # tokenizer.ggml.pre


def gguf_vocab(tokenizer, n_vocab):
    """A vintagelm tokenizer -> GGUFVocab of exactly n_vocab ids (the model's rows)."""
    if tokenizer.type_name == "bpe":
        pre = PRE_TOKENIZERS.get(tokenizer.pattern)
        if pre is None:
            raise UserError("this tokenizer splits text with a regex of its own, and llama.cpp only knows fixed "
                            "patterns; train the tokenizer with --pattern gpt2 or gpt4 to export it as GGUF")
        merges = [f"{byte_name(tokenizer.decode_bytes([a]))} {byte_name(tokenizer.decode_bytes([b]))}"
                  for a, b in tokenizer.merges]
    else:
        pre, merges = CHAR_PRE_TOKENIZER, character_merges(tokenizer)
    if EOT not in tokenizer.special_tokens:
        raise UserError(f"the tokenizer has no {EOT}, which llama.cpp needs as the begin and end of a text; "
                        "train the tokenizer with the default special tokens")
    ordinary = [byte_name(tokenizer.decode_bytes([i])) for i in range(tokenizer.n_ordinary)]
    specials = list(tokenizer.special_tokens)  # in id order
    padding = [f"[PAD{i}]" for i in range(tokenizer.vocab_size, n_vocab)]  # as llama.cpp's converter names them
    tokens = ordinary + specials + padding
    if len(set(tokens)) != len(tokens):
        seen = set()
        twice = next(t for t in tokens if t in seen or seen.add(t))
        raise UserError(f"cannot export: the token text {twice!r} stands for two ids (a special token written like an "
                        "ordinary one); llama.cpp looks tokens up by their text")
    types = [NORMAL] * len(ordinary) + [CONTROL] * len(specials) + [UNUSED] * len(padding)
    return GGUFVocab(tokens, types, merges, pre)


def byte_name(piece):
    """Bytes -> their text in GPT-2's byte alphabet (each byte one printable character)."""
    return "".join(BYTE_NAMES[b] for b in piece)


def character_merges(tokenizer):
    """The merges that rebuild each multi-byte character of a char tokenizer from its bytes:
    (b1, b2), (b1b2, b3), ... Characters sharing a prefix share its merges (listed once). The
    reserved <|unk|> is no character: no merge makes it, as our encoder never makes it from text."""
    merges = {}  # dict as an ordered set
    for c in tokenizer.chars:
        piece = c.encode("utf-8")
        for k in range(1, len(piece)):
            merges[f"{byte_name(piece[:k])} {byte_name(piece[k:k + 1])}"] = None
    return list(merges)
