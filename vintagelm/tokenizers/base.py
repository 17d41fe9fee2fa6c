"""The tokenizer interface shared by CharTokenizer and BPETokenizer.

A tokenizer maps text to a list of integer ids and back. Every tokenizer here has the same id
layout: first its *ordinary* tokens (characters, or bytes and merges), then its *special*
tokens in the order they were given. Special tokens are strings like "<|endoftext|>" that the
data pipeline and the chat format insert as single ids; they are never produced by encoding
ordinary text, and by default `encode` refuses text that contains one (so a document that
happens to mention "<|endoftext|>" cannot silently end itself).

This file owns what does not depend on the kind of tokenizer: special-token handling, the
versioned JSON file format, loading with one-line errors, the fingerprint, and the envelope
of a Hugging Face `tokenizer.json`. Subclasses add one idea each (char.py, bpe.py).
It deliberately does not import Hugging Face `tokenizers`: the export is plain JSON.
"""
import hashlib
import json
import os
import re
from pathlib import Path

from vintagelm.common import UserError, atomic_file, read_json

# The specials every tokenizer gets unless `special_tokens=` says otherwise. Their ids follow
# the ordinary vocabulary in this order, so `<|endoftext|>` is always the first special id.
DEFAULT_SPECIAL_TOKENS = (
    "<|endoftext|>",  # document boundary: the data pipeline puts it between documents
    "<|system|>",  # chat: starts the system prompt (instructions the assistant follows)
    "<|user|>",  # chat: starts a user turn
    "<|assistant|>",  # chat: starts an assistant turn (the tokens the fine-tune learns)
    "<|end|>",  # chat: ends the current turn; generation stops when the model emits it
)
EOT = "<|endoftext|>"

FORMAT = "vintagelm-tokenizer"  # the "format" field of every file we write
VERSION = 1  # bump when the file layout changes; loaders refuse other versions
RETRAIN = "re-create it with `vintage tokenizer train`"


class Tokenizer:
    """Base class: special tokens, encode/decode plumbing, save/load, fingerprint, HF export.

    Subclasses set `type_name` (the "type" in the file), implement `encode_ordinary`, `decode`,
    `_content` (the dict that defines them), `_from_content` and `_hf_parts`, and call
    `super().__init__(special_tokens, n_ordinary)` once they know their ordinary vocab size.
    """

    type_name = None  # "char" | "bpe"
    _types = {}  # type_name -> subclass, filled in by __init_subclass__; used by load()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Tokenizer._types[cls.type_name] = cls

    def __init__(self, special_tokens, n_ordinary):
        special_tokens = check_special_tokens(special_tokens)
        self.n_ordinary = n_ordinary  # ids [0, n_ordinary) are ordinary tokens
        self.special_tokens = {s: n_ordinary + i for i, s in enumerate(special_tokens)}  # str -> id
        self._special_re = special_regex(special_tokens)  # None when there are no specials

    @property
    def vocab_size(self):
        """Number of ids: ordinary tokens plus special tokens (ids are 0..vocab_size-1)."""
        return self.n_ordinary + len(self.special_tokens)

    @property
    def eot_id(self):
        """The id of `<|endoftext|>`, or None when this tokenizer has no such special."""
        return self.special_tokens.get(EOT)

    def __repr__(self):
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, specials={len(self.special_tokens)})"

    # ---- encoding ----

    def encode(self, text, allowed_special="none_raise"):
        """Encode `text` to a list of ids, deciding what to do with special-token strings.

        allowed_special:
            "none_raise"  (default) a special token's string anywhere in `text` is a UserError
            "none"        specials are plain text, exactly like `encode_ordinary`
            "all"         every special token's string becomes its single id
            a set of str  those specials become ids; any other special in `text` is a UserError
        """
        if allowed_special == "all":
            allowed = self.special_tokens.keys()
        elif allowed_special in ("none", "none_raise"):
            allowed = ()
        else:
            allowed = set(allowed_special)
            unknown = sorted(allowed - self.special_tokens.keys())
            if unknown:
                raise UserError(f"allowed_special names {unknown}, which are not special tokens of this tokenizer")
        if allowed_special == "none" or self._special_re is None:
            return self.encode_ordinary(text)
        ids = []
        start = 0  # where the ordinary text before the next special begins
        for m in self._special_re.finditer(text):
            if m.group() not in allowed:
                raise UserError(
                    f"text contains the special token {m.group()!r} at character {m.start()}; encode it as its "
                    "id with allowed_special='all' (CLI: --allow-special), or as text with encode_ordinary()"
                )
            ids += self.encode_ordinary(text[start : m.start()])
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        ids += self.encode_ordinary(text[start:])
        return ids

    def encode_ordinary(self, text):
        """Encode `text` treating every character as ordinary text: never returns a special id."""
        raise NotImplementedError

    def decode(self, ids):
        """Turn ids back into text; special ids become their strings."""
        raise NotImplementedError

    def decode_bytes(self, ids):
        """Ids -> UTF-8 bytes of their text (BPE overrides this: its ids are bytes already)."""
        return self.decode(ids).encode("utf-8")

    def check_ids(self, ids):
        """Raise a UserError naming the first id outside [0, vocab_size); return ids as a list."""
        ids = list(ids)
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise UserError(f"token id {bad} is out of range for this tokenizer (ids are 0..{self.vocab_size - 1})")
        return ids

    # ---- files ----

    def _content(self):
        """The JSON-able dict that fully defines this tokenizer (without format/version)."""
        raise NotImplementedError

    @classmethod
    def _from_content(cls, content):
        """Rebuild from `_content()`; raise ValueError/KeyError/TypeError on malformed content."""
        raise NotImplementedError

    def fingerprint(self):
        """A short hex id of what this tokenizer does: 16 hex digits of sha256(canonical JSON).

        Two tokenizers with the same fingerprint encode every text identically; the data
        pipeline stores it in a dataset's meta.json so a mismatched tokenizer is caught.
        """
        canonical = json.dumps(self._content(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]

    def save(self, path):
        """Write the tokenizer as versioned JSON, atomically (a reader never sees half a file).
        `path` is a file, or a folder (an existing one, or a name ending in "/") to write
        tokenizer.json into; nothing else in the folder is touched. Returns the file's path."""
        doc = {"format": FORMAT, "version": VERSION, **self._content()}
        path = tokenizer_file(path)
        with atomic_file(path) as tmp:
            tmp.write_text(dump_json_lines(doc), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path):
        """Load a file written by `save`. On `Tokenizer` it returns whichever type the file holds;
        on a subclass it insists on that type. Any problem is a one-line UserError naming the file."""
        doc = read_json(path, what="tokenizer file")
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise UserError(f"{path} is not a vintagelm tokenizer file (no \"format\": \"{FORMAT}\"); {RETRAIN}")
        if doc.get("version") != VERSION:
            raise UserError(
                f"tokenizer file {path} has format version {doc.get('version')!r}, but this vintagelm reads "
                f"version {VERSION}; {RETRAIN}"
            )
        kind = doc.get("type")
        if not isinstance(kind, str) or kind not in Tokenizer._types:
            raise UserError(f"tokenizer file {path} has unknown type {kind!r} (known: {sorted(Tokenizer._types)}); {RETRAIN}")
        if cls is not Tokenizer and kind != cls.type_name:
            raise UserError(f"{path} holds a {kind!r} tokenizer, not a {cls.type_name!r} one; load it with load_tokenizer()")
        try:
            return Tokenizer._types[kind]._from_content(doc)
        except (KeyError, TypeError, ValueError, UserError) as e:
            # the file parsed as JSON but its fields are wrong: say so in one line, not a traceback
            what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            raise UserError(f"tokenizer file {path} is malformed ({what}); {RETRAIN}") from None

    # ---- Hugging Face export ----

    def _hf_parts(self):
        """The type-specific parts of a tokenizer.json: dict with model, pre_tokenizer, decoder."""
        raise NotImplementedError

    def export_hf(self, path, chat_template=None, model_max_length=None):
        """Write a Hugging Face `tokenizer.json` that `tokenizers.Tokenizer.from_file` loads, to
        the file `path` or into the folder `path` (an existing one, or a name ending in "/"),
        as HF's own tools do; other files there are left alone. Returns the file's path.

        Into a folder it also writes `tokenizer_config.json` (hf_tokenizer_config), so that
        transformers' AutoTokenizer loads the folder as it is, with our pipeline and specials.
        The specials become HF "added tokens", which HF always splits out of the text, so HF's
        `encode(text)` matches our `encode(text, allowed_special="all")`.
        """
        added = [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for s, i in self.special_tokens.items()
        ]
        doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
               "normalizer": None, "post_processor": None, **self._hf_parts()}
        file = tokenizer_file(path)
        with atomic_file(file) as tmp:
            tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        if file != Path(path):  # a folder was given
            config = self.hf_tokenizer_config(chat_template, model_max_length)
            with atomic_file(file.parent / "tokenizer_config.json") as tmp:
                tmp.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return file

    def hf_tokenizer_config(self, chat_template=None, model_max_length=None):
        """The `tokenizer_config.json` of our HF export: which class reads tokenizer.json and
        which tokens play which role.

        The class is PreTrainedTokenizerFast, which runs tokenizer.json exactly as written.
        Left to guess from a model's config.json, transformers picks GPT2Tokenizer, which
        rebuilds GPT-2's own pipeline from the vocab and drops every space of a character
        tokenizer. `<|endoftext|>` is bos, eos and pad (our documents start and end with it;
        clients such as lm-eval need all three), and nothing is added to encoded text, so ids
        stay ours. Decoding keeps spaces before punctuation as they were."""
        eot = EOT if EOT in self.special_tokens else None
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": eot, "eos_token": eot, "pad_token": eot,
            "unk_token": self._hf_parts()["model"]["unk_token"],  # a char tokenizer's <|unk|>, if it reserves one
            "add_bos_token": False, "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
        }
        if model_max_length is not None:  # the model's context (unset: transformers assumes no limit)
            config["model_max_length"] = model_max_length
        if chat_template is not None:
            config["chat_template"] = chat_template
        return config


def tokenizer_file(path):
    """A tokenizer's file for `path`: path/tokenizer.json when `path` is a folder (an existing
    one, or a name ending in a slash), else `path` itself."""
    text = str(path)
    path = Path(path)
    return path / "tokenizer.json" if path.is_dir() or text.endswith(("/", os.sep)) else path


def hf_bpe_model(vocab, merges, unk_token=None):
    """The "model" of a tokenizer.json: an HF BPE model over `vocab` (token text -> id) and
    `merges` (list of "a b" strings, rank order). Every optional BPE feature is off."""
    return {
        "type": "BPE", "dropout": None, "unk_token": unk_token, "continuing_subword_prefix": None,
        "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
        "vocab": vocab, "merges": merges,
    }


def check_special_tokens(special_tokens):
    """Validate a list of special-token strings (non-empty, distinct); return it as a list."""
    if isinstance(special_tokens, str):
        raise UserError(f"special_tokens must be a list of strings, not the string {special_tokens!r}")
    special_tokens = list(special_tokens)
    for s in special_tokens:
        if not isinstance(s, str) or not s:
            raise UserError(f"special tokens must be non-empty strings, got {s!r}")
        check_encodable(s)
    if len(set(special_tokens)) != len(special_tokens):
        raise UserError(f"special tokens must be distinct, got {special_tokens}")
    return special_tokens


def special_regex(special_tokens):
    """A regex matching any of the specials, longest first, so that when one special is a
    prefix of another the longer wins (leftmost-longest, as HF's added-token matcher does)."""
    if not special_tokens:
        return None
    ordered = sorted(special_tokens, key=lambda s: (-len(s), s))
    return re.compile("|".join(map(re.escape, ordered)))


def check_encodable(text):
    """Raise a UserError if `text` cannot be UTF-8 encoded (it holds a lone surrogate).

    Python strings may contain U+D800..U+DFFF on their own (e.g. from surrogateescape);
    no tokenizer here can represent them losslessly, so we refuse them up front.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        raise UserError(
            f"text contains a lone surrogate {bad!r} (U+{ord(bad):04X}) at character {e.start}, "
            "which is not valid Unicode and cannot be UTF-8 encoded"
        ) from None


def ordinary_pieces(text_or_texts, special_tokens):
    """Yield the training text as pieces of ordinary text, split at special-token strings.

    Training sees the text the way `encode(..., allowed_special="all")` will: a special's
    string is a boundary, not text to learn, so it never shapes the ordinary vocabulary.
    """
    texts = [text_or_texts] if isinstance(text_or_texts, str) else text_or_texts
    pattern = special_regex(special_tokens)
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"training texts must be str, got {type(text).__name__}")
        check_encodable(text)
        if pattern is None:
            yield text
        else:
            yield from pattern.split(text)


def dump_json_lines(doc):
    """Format a flat dict as JSON with one top-level key per line and, for list values, one
    element per line: a merges list stays readable and diffs line by line."""
    lines = []
    for key, value in doc.items():
        if isinstance(value, list) and value:
            items = ",\n".join("    " + json.dumps(v, ensure_ascii=False) for v in value)
            lines.append(f"  {json.dumps(key)}: [\n{items}\n  ]")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"
