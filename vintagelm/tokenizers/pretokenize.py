"""The regex pre-split of byte-level BPE: text -> chunks that merges never cross.

BPE learns and applies merges inside each chunk only, so "dog." and "dog!" share the token
for "dog", and a space sticks to the word after it. The two standard patterns:

    gpt2  the pattern of OpenAI's GPT-2 encoder: contractions, optional space + letters,
          optional space + digits, optional space + punctuation run, whitespace
    gpt4  the cl100k pattern (GPT-4): case-insensitive contractions, digits in groups of at
          most three, punctuation keeps a following newline, newlines grouped apart

A pattern must match every character (both do: their last branches take any whitespace and
any other symbol); `split_chunks` checks that, because a character no branch matches would
silently vanish from the encoding.
"""
import regex

from vintagelm.common import UserError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}  # name -> regex (for `pattern=` and the CLI)


def resolve_pattern(pattern):
    """A pattern name from PATTERNS, or a regex of your own -> (regex source, compiled)."""
    source = PATTERNS.get(pattern, pattern)
    try:
        compiled = regex.compile(source)
    except (regex.error, TypeError) as e:
        raise UserError(f"bad split pattern {pattern!r} ({e}); use one of {sorted(PATTERNS)} or a valid regex") from None
    if compiled.groups:  # findall would return the groups, not the chunks
        raise UserError(f"split pattern {pattern!r} has capturing groups; write them as (?:...)")
    return source, compiled


def pattern_name(source):
    """The PATTERNS name of a regex source, or "custom"."""
    return next((name for name, p in PATTERNS.items() if p == source), "custom")


# A pattern read from a tokenizer file could backtrack catastrophically (`(?:a|a)+$` takes
# exponential time on "aaa...a!"): matching gets a time budget, far above what gpt2 and gpt4
# need (~0.13 us per character measured), and running out of it is a UserError, not a hang.
SECONDS_BASE, SECONDS_PER_CHAR = 2.0, 5e-6


def split_chunks(compiled, text):
    """Split `text` into the pattern's matches: list[str] whose concatenation is `text`."""
    try:
        chunks = compiled.findall(text, timeout=SECONDS_BASE + SECONDS_PER_CHAR * len(text))
    except TimeoutError:
        raise UserError(f"the split pattern takes too long on a text of {len(text):,} characters (it backtracks "
                        "without end); use the gpt2 or gpt4 pattern, or retrain the tokenizer") from None
    if sum(map(len, chunks)) != len(text):  # cheap (C loops); catches patterns with gaps
        position = 0
        for m in compiled.finditer(text):
            if m.start() != position:
                break
            position = m.end()
        raise UserError(
            f"the split pattern does not match character {text[position]!r} at {position}, so it "
            "would be lost; the pattern must match every character (gpt2 and gpt4 do)"
        )
    return chunks
