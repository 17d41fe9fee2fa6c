"""The period filter: keep only text that could have been written before a cut-off year.

A paragraph (or, with unit="document", a whole document) is dropped when it mentions

* a year >= the cut-off, written in digits. A year is a standalone run of exactly four
  digits from 1000 to 2099, optionally followed by "s" or "'s" (the 1850s). Digits that are
  part of a larger figure are not years: groups joined by a comma or a point ("1,000 ducats",
  "1,850 men", "3.1416", "1850.5"), a number after a currency sign or "#" ("£1500", "#1850"),
  or before "%". Spelled-out years ("eighteen hundred and fifty") are not detected.
* a modern term: a word from `modern_terms.txt` (shipped beside this file) or a user file,
  whose first year of common use is >= the cut-off (a term with no year always counts).
  Matching is case-insensitive on whole words, with simple inflections: -s, -es, -ed, -ing,
  -er, -ers (a final "e" may drop: telephoning; a final consonant+"y" may become -ies/-ied).

The filter counts what it drops by reason ("year", "term:telephone") and keeps the first
few examples of each (the match and a snippet around it), for `vintage prepare --explain`.
"""
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vintagelm.common import UserError, regular_file

BUILTIN_TERMS = Path(__file__).with_name("modern_terms.txt")
UNITS = ("paragraph", "document")
EXAMPLES_PER_REASON = 3
SNIPPET_CHARS = 40  # context shown on each side of a match by --explain

_WORD = re.compile(r"\w+")
_YEAR = re.compile(r"(?<![\w.,£$€#])(1\d{3}|20\d{2})(?:'?s)?(?![\w%]|[.,]\d)")


@dataclass(frozen=True)
class Term:
    text: str  # as written in the list, e.g. "atomic bomb"
    year: int | None  # first year of common use; None = modern whatever the cut-off


@dataclass(frozen=True)
class Hit:
    """Why a piece of text was dropped."""

    reason: str  # "year" or "term:<term>"
    matched: str  # the text that matched, e.g. "1850" or "telephoned"
    year: int | None  # the year found, or the term's year
    snippet: str  # the match with some context, on one line
    source: str = ""


def parse_terms(text, origin):
    """Lines of `TERM<TAB>YEAR` (or just `TERM`); '#' starts a comment. -> [Term]."""
    terms = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        word, _, year = line.partition("\t")
        word, year = " ".join(word.split()), year.strip()
        if not (_WORD.match(word) and _WORD.match(word[-1])):
            raise UserError(f"{origin}:{lineno}: a term must begin and end with a letter or digit, got {word!r}")
        if year and not year.isdigit():
            raise UserError(f"{origin}:{lineno}: expected TERM<TAB>YEAR with a year in digits, got {line!r}")
        terms.append(Term(word, int(year) if year else None))
    return terms


def load_terms(extra_file=None):
    """The shipped term list, extended by `extra_file` (same format). A term listed in both
    takes the year from `extra_file`."""
    terms = {t.text.lower(): t for t in parse_terms(BUILTIN_TERMS.read_text(encoding="utf-8"), BUILTIN_TERMS)}
    if extra_file is not None:
        try:
            text = regular_file(extra_file, "terms file").read_text(encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot read terms file {extra_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UserError(f"terms file {extra_file} is not UTF-8 text") from None
        terms.update((t.text.lower(), t) for t in parse_terms(text, extra_file))
    return list(terms.values())


def _inflect(word):
    """(stem, suffixes): the simple inflections of a term's last word."""
    if len(word) > 2 and word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1], ("y", "ies", "ied")
    if word.endswith("e"):
        return word[:-1], ("e", "es", "ed", "ing", "er", "ers")
    return word, ("", "s", "es", "ed", "ing", "er", "ers")


def _term_pattern(term):
    """Regex for a term and its inflections; only the last word inflects."""
    *head, last = term.lower().split()
    stem, suffixes = _inflect(last)
    last = re.escape(stem) + "(?:" + "|".join(suffixes) + ")"
    return r"\s+".join([re.escape(word) for word in head] + [last])


def _first_words(term):
    """The lower-case words a text must contain (as found by _WORD) for `term` to match in it:
    every inflected form of a one-word term, else just its first word."""
    words = term.lower().split()
    if len(words) == 1 and _WORD.fullmatch(words[0]):
        stem, suffixes = _inflect(words[0])
        return {stem + suffix for suffix in suffixes}
    return {_WORD.match(words[0]).group(0)}


def _snippet(text, start, end):
    left = max(0, start - SNIPPET_CHARS)
    right = min(len(text), end + SNIPPET_CHARS)
    body = " ".join(text[left:right].split())
    return ("..." if left > 0 else "") + body + ("..." if right < len(text) else "")


class PeriodFilter:
    """Decides whether text predates `before`, and keeps count of what it rejected."""

    def __init__(self, before, terms, unit="paragraph"):
        if unit not in UNITS:
            raise UserError(f"filter unit must be one of {', '.join(UNITS)}, not {unit!r}")
        self.before = int(before)
        self.unit = unit
        # only terms that are modern relative to this cut-off take part
        self.terms = [t for t in terms if t.year is None or t.year >= self.before]
        # One alternation with a group per term finds any of them in one scan, but scanning
        # every paragraph with it is slow (each position tries every term). So a paragraph's
        # set of words is checked against the words the terms need first (a set intersection
        # at C speed), and the regex runs only on the rare paragraphs that pass.
        self._needed = set().union(*(_first_words(t.text) for t in self.terms))
        alternation = "|".join(f"({_term_pattern(t.text)})" for t in self.terms)
        self._term_re = re.compile(rf"\b(?:{alternation})\b", re.IGNORECASE)
        self.counts = Counter()  # reason -> number of units dropped
        self.examples = {}  # reason -> [Hit] (the first EXAMPLES_PER_REASON)

    def find(self, text):
        """The first reason `text` is anachronistic, as a Hit, or None if it may stay."""
        for m in _YEAR.finditer(text):
            year = int(m.group(1))
            if year >= self.before:
                return Hit("year", m.group(0), year, _snippet(text, m.start(), m.end()))
        if not self._needed.isdisjoint(_WORD.findall(text.lower())):
            m = self._term_re.search(text)
            if m:
                term = self.terms[m.lastindex - 1]
                return Hit(f"term:{term.text}", m.group(0), term.year, _snippet(text, m.start(), m.end()))
        return None

    def keep(self, text, source=""):
        """True if `text` may stay; otherwise record why not and return False."""
        hit = self.find(text)
        if hit is None:
            return True
        self.counts[hit.reason] += 1
        shown = self.examples.setdefault(hit.reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(Hit(hit.reason, hit.matched, hit.year, hit.snippet, source))
        return False
