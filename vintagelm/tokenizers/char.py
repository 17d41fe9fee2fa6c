"""Character-level tokenizer: one id per distinct character of the training text.

Ids: the training text's characters sorted by code point (0..n-1), then `<|unk|>` when the
unknown policy is "reserve", then the special tokens. This is the nanoGPT shakespeare_char
vocabulary (65 symbols on tiny shakespeare) plus specials.

Unknown-character policy (`unknown=`), for characters not seen in training:
    "error"    (default) encoding raises a UserError naming the character and its position;
               nothing is ever lost silently, and decode(encode(s)) == s whenever encode succeeds
    "reserve"  each unknown character becomes the reserved `<|unk|>` id, which decodes to the
               text "<|unk|>"; encoding never fails (except on lone surrogates), but is lossy
               exactly at the unknown characters

`vocab_size` does not choose anything here (the text does); when given, it is a cap: training
fails if the text needs more ids than that.
"""
from itertools import repeat

from vintagelm.common import UserError
from vintagelm.tokenizers.base import (
    DEFAULT_SPECIAL_TOKENS, Tokenizer, check_encodable, check_special_tokens, hf_bpe_model, ordinary_pieces,
)

UNK = "<|unk|>"  # the reserved token of the "reserve" policy
POLICIES = ("error", "reserve")


class CharTokenizer(Tokenizer):
    """Characters to ids. Build one with `CharTokenizer.train(...)` or `CharTokenizer.load(path)`."""

    type_name = "char"

    def __init__(self, chars, unknown="error", special_tokens=DEFAULT_SPECIAL_TOKENS):
        """chars: the ordinary vocabulary, list of single characters (id = position)."""
        self.chars = list(chars)
        if not all(isinstance(c, str) and len(c) == 1 for c in self.chars):
            raise ValueError("chars must be single characters")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("chars must be distinct")
        check_encodable("".join(self.chars))  # a file could list a lone surrogate
        if unknown not in POLICIES:
            raise UserError(f"unknown-character policy must be one of {POLICIES}, got {unknown!r}")
        special_tokens = check_special_tokens(special_tokens)
        if set(special_tokens) & set(self.chars):  # a one-character special would shadow the char
            raise ValueError(f"special tokens {sorted(set(special_tokens) & set(self.chars))} are also characters")
        if unknown == "reserve" and UNK in special_tokens:
            raise UserError(f"{UNK} is reserved for unknown characters; it cannot also be a special token")
        self.unknown = unknown
        self._stoi = {c: i for i, c in enumerate(self.chars)}  # char -> id
        self.unk_id = len(self.chars) if unknown == "reserve" else None
        ordinary = self.chars + ([UNK] if unknown == "reserve" else [])
        super().__init__(special_tokens, n_ordinary=len(ordinary))
        self._itos = ordinary + list(self.special_tokens)  # id -> text, for every id

    @classmethod
    def train(cls, text_or_texts, vocab_size=None, special_tokens=DEFAULT_SPECIAL_TOKENS, unknown="error"):
        """Collect the distinct characters of a string or an iterable of strings.

        Special-token strings in the text are boundaries, not text (see base.ordinary_pieces).
        """
        special_tokens = check_special_tokens(special_tokens)
        seen = set()
        for piece in ordinary_pieces(text_or_texts, special_tokens):
            seen.update(piece)
        tok = cls(sorted(seen), unknown, special_tokens)
        if vocab_size is not None and tok.vocab_size > vocab_size:
            raise UserError(
                f"the text has {len(seen)} distinct characters, which with the reserved and special tokens "
                f"need {tok.vocab_size} ids, more than vocab_size={vocab_size}"
            )
        return tok

    def encode_ordinary(self, text):
        check_encodable(text)
        if self.unk_id is not None:
            return list(map(self._stoi.get, text, repeat(self.unk_id)))
        try:
            return list(map(self._stoi.__getitem__, text))
        except KeyError as e:
            c = e.args[0]
            raise UserError(
                f"character {c!r} (U+{ord(c):04X}) at position {text.index(c)} is not in this char tokenizer's "
                "vocabulary; train on text that contains it, or use unknown='reserve'"
            ) from None

    def decode(self, ids):
        return "".join(map(self._itos.__getitem__, self.check_ids(ids)))

    # ---- files ----

    def _content(self):
        return {
            "type": self.type_name,
            "unknown": self.unknown,
            "chars": self.chars,  # id -> character
            "special_tokens": list(self.special_tokens),  # ids follow the chars (and <|unk|>), in this order
        }

    @classmethod
    def _from_content(cls, content):
        return cls(content["chars"], content["unknown"], content["special_tokens"])

    def _hf_parts(self):
        # A BPE model with no merges is a character lookup: HF splits each piece into
        # characters and maps each one through the vocab. With no pre-tokenizer the whole
        # text (between added tokens) is one piece. Unknown characters map to unk_token;
        # with the "error" policy there is none and HF drops them silently (HF cannot raise),
        # which is the one behaviour the export cannot reproduce.
        vocab = {c: i for i, c in enumerate(self._itos[: self.n_ordinary])}
        return {
            "pre_tokenizer": None,
            "decoder": {"type": "Fuse"},  # join the tokens' texts without spaces
            "model": hf_bpe_model({**vocab, **self.special_tokens}, [], unk_token=UNK if self.unk_id is not None else None),
        }
