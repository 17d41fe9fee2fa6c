"""Hand-written tokenizers: character level and byte-level BPE, one interface.

    tok = BPETokenizer.train(texts, vocab_size=4096)      # or CharTokenizer.train(text)
    ids = tok.encode("To be, or not to be")               # list[int]
    tok.decode(ids)                                       # back to the same text
    tok.save("tok.json"); tok = load_tokenizer("tok.json")

base.py      the interface, special tokens, versioned JSON files, fingerprint, HF export
char.py      CharTokenizer: sorted characters of the text, explicit unknown-character policy
bpe.py       BPETokenizer: byte-level BPE, regex pre-split, rank-ordered merging, chunk cache
bpe_train.py the incremental BPE trainer (word table, pair index, lazy-deletion heap)
pretokenize.py the GPT-2 / GPT-4 split patterns
"""
from vintagelm.tokenizers.base import DEFAULT_SPECIAL_TOKENS, EOT, Tokenizer
from vintagelm.tokenizers.bpe import BPETokenizer
from vintagelm.tokenizers.char import CharTokenizer
from vintagelm.tokenizers.pretokenize import PATTERNS

__all__ = ["Tokenizer", "CharTokenizer", "BPETokenizer", "load_tokenizer", "DEFAULT_SPECIAL_TOKENS", "EOT", "PATTERNS"]


def load_tokenizer(path):
    """Load any tokenizer file written by `save`, whatever its type (one-line UserError if bad)."""
    return Tokenizer.load(path)
