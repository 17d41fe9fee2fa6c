"""Text hygiene shared by every source: decoding, normalisation, unwrapping, exact de-duplication.

Everything here is a pure function of its input (the `Deduplicator` holds only a set of
hashes), so the same corpus always cleans to the same text. Nothing here knows about
periods, tokenizers or files on disk.
"""
import hashlib
import re
import unicodedata

TAB_SIZE = 4  # tabs become spaces at 4-column stops, so indented verse keeps its shape
WRAP_SLACK = 0.9  # unwrap(): a line counts as full at 90% of the wrap width
DEDUP_MIN_CHARS = 100  # shorter paragraphs are never called duplicates (see Deduplicator)

_BLANK_RUN = re.compile(r"\n{3,}")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


# byte-order marks that name an encoding (UTF-32 first: its little-endian mark starts like UTF-16's)
BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"),
        (b"\xfe\xff", "utf-16"))


def decode_bytes(data):
    """Bytes of a text file -> str. A UTF-16 or UTF-32 byte-order mark names its encoding;
    else strict UTF-8 (a leading UTF-8 mark is dropped); otherwise Windows-1252, which is what
    "Latin-1" files from the web usually are; and if a byte is undefined even there (0x81,
    0x8D, 0x8F, 0x90, 0x9D), true Latin-1, which never fails.
    """
    for bom, encoding in BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)  # the codec reads the mark for the byte order, then drops it
            except UnicodeDecodeError:
                break  # not that encoding after all: fall through to the guesses below
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1")


def normalize_text(text):
    """Unicode NFC; newlines \\r\\n and \\r -> \\n; stray byte-order marks removed; tabs expanded;
    trailing spaces stripped from every line; runs of blank lines collapsed to one blank line;
    no blank lines at the start or end.

    >>> normalize_text("Cafe\\u0301\\t \\r\\n\\r\\n\\r\\n\\r\\nend  ")
    'Café\\n\\nend'
    """
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    lines = [line.expandtabs(TAB_SIZE).rstrip() for line in text.split("\n")]
    text = _BLANK_RUN.sub("\n\n", "\n".join(lines))
    return text.strip("\n")


def split_paragraphs(text):
    """Paragraphs are separated by blank lines. Empty paragraphs are dropped."""
    return [p for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


def join_paragraphs(paragraphs):
    return "\n\n".join(paragraphs)


def unwrap(text):
    """Join hard-wrapped lines of prose back into one line per paragraph, keeping verse.

    The rule is the one a line breaker follows: a line was broken by the wrapper only if the
    next line's first word would (nearly) not have fitted on it. With `width` = the length of
    the longest 5% of the text's lines (the wrap width of a Gutenberg file, typically 70-75),
    line i is joined to line i+1 (with one space) when
        len(line i) + 1 + len(first word of line i+1) > 0.9 * width
    and neither line is indented. The 10% slack is there because wrappers do not fill every
    line to the last column. So short lines (verse, headings, a letter's sign-off) and
    indented lines (poetry, tables, centred titles) stay as they are, and blank-line
    paragraph breaks are never touched. Meant for prose; a play or a book of verse has no
    wrapped lines to join.
    """
    lines = text.split("\n")
    lengths = sorted(len(line) for line in lines if line.strip())
    if not lengths:
        return text
    width = lengths[int(0.95 * (len(lengths) - 1))]
    out = [lines[0]]
    for prev, line in zip(lines, lines[1:]):
        words = line.split()
        wrapped = (
            prev.strip() and words and not prev[0].isspace() and not line[0].isspace()
            and len(prev) + 1 + len(words[0]) > WRAP_SLACK * width
        )
        if wrapped:
            out[-1] += " " + line
        else:
            out.append(line)
    return "\n".join(out)


def _digest(text):
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class Deduplicator:
    """Exact de-duplication of documents and paragraphs across a whole prepare run.

    Keeps the first occurrence. Only 16-byte hashes are remembered, so the state grows with
    the number of distinct paragraphs, not with the size of the text. Paragraphs shorter
    than `min_chars` are always kept: a play repeats "Exeunt." and "HAMLET\\nAy, my lord."
    and a novel repeats "CHAPTER I." legitimately; what we want gone is repeated boilerplate
    and the same passage reprinted in two editions, which is longer than that.
    """

    def __init__(self, min_chars=DEDUP_MIN_CHARS):
        self.min_chars = min_chars
        self._documents = set()
        self._paragraphs = set()

    def is_duplicate_document(self, text):
        """True if this exact text was seen before; otherwise remember it and return False."""
        key = _digest(text)
        if key in self._documents:
            return True
        self._documents.add(key)
        return False

    def unique_paragraphs(self, paragraphs):
        """-> (kept paragraphs, number dropped as duplicates); remembers the kept ones."""
        kept = []
        for paragraph in paragraphs:
            if len(paragraph) >= self.min_chars:
                key = _digest(paragraph)
                if key in self._paragraphs:
                    continue
                self._paragraphs.add(key)
            kept.append(paragraph)
        return kept, len(paragraphs) - len(kept)
