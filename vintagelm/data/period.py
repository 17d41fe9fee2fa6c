"""The period filter: keep only text that could have been written before a cut-off year.

A paragraph (or, with unit="document", a whole document) is dropped for the first of

* a year >= the cut-off, written in digits. A year is a standalone run of exactly four
  digits from 1000 to 2099, optionally followed by "s" or "'s" (the 1850s). Digits that are
  part of a larger figure are not years: groups joined by a comma or a point ("1,000 ducats",
  "1,850 men", "3.1416", "1850.5"), a number after a currency sign or "#" ("£1500", "#1850"),
  or before "%". Spelled-out years ("eighteen hundred and fifty") are not detected.
* a modern term: an entry of the dated lexicon `modern_terms.txt` (shipped beside this file;
  its header says how to read it) or of a user file, whose first year of common use is >= the
  cut-off (a term with no year always counts). Matching is case-insensitive on whole words,
  with the inflections of a term's last word (-s, -es, -ed, -ing, -ies, -ied, a doubled final
  consonant), its words joined by spaces, a hyphen or nothing, and British and American
  spellings (SPELLINGS, -ize/-ise).
* a modernity score above its threshold, for what the lexicon misses: a naive-Bayes sum of
  per-word log ratios between today's English and English before 1900 (modernity.json, made
  by `python -m vintagelm.data.period` from the team's texts and the builtin plays; see
  build_modernity). It takes part only for cut-offs up to 1900, the year its period side ends.
  A text of several paragraphs (unit="document") is dropped by the score when at least half
  of its paragraphs score modern.

The filter counts what it drops by reason ("year", "term:telephone", "score") and keeps the
first few examples of each, for `vintage prepare --explain`: the match and a snippet around it,
or for the score the words that raised it most.

The team's labelled set (period_eval.jsonl: modern and period paragraphs, split once into a
tune and a test part by eval_part) measures the filter; benchmarks/bench_period_filter.py
prints its table.
"""
import functools
import hashlib
import json
import math
import re
from collections import Counter
from itertools import repeat
from dataclasses import dataclass
from pathlib import Path

from vintagelm.common import UserError, atomic_file, read_json, regular_file
from vintagelm.data.clean import split_paragraphs

BUILTIN_TERMS = Path(__file__).with_name("modern_terms.txt")
EVAL_FILE = Path(__file__).with_name("period_eval.jsonl")
EVAL_FORMAT = ("vintagelm-period-eval", 1)
SCORE_FILE = Path(__file__).with_name("modernity.json")
SCORE_FORMAT = ("vintagelm-modernity", 1)
SCORE_TEXTS = {side: Path(__file__).with_name(f"modernity_{side}.txt") for side in ("modern", "period")}
UNITS = ("paragraph", "document")
EXAMPLES_PER_REASON = 3
SNIPPET_CHARS = 40  # context shown on each side of a match by --explain

_WORD = re.compile(r"\w+")
_TOKEN = re.compile(r"\w+(?:'\w+)*")  # the filter's words: don't, o'er and mcdonald's are one word each
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


@dataclass(frozen=True)
class EvalItem:
    """One paragraph of the team's labelled set (period_eval.jsonl)."""

    id: str
    label: str  # "modern" or "period"
    topic: str
    text: str
    year: int | None  # a period paragraph's approximate year; None for a modern one
    part: str  # "tune" or "test", from eval_part(id)

    def is_modern(self, before):
        """The label against a cut-off: a period paragraph dated at or after it counts as modern."""
        return self.label == "modern" or self.year >= before


def eval_part(item_id):
    """The fixed split: "tune" when the first byte of sha1(id) is even, else "test". Decided by
    the id alone, so adding items never moves an old one between the parts."""
    return "tune" if hashlib.sha1(item_id.encode("utf-8")).digest()[0] % 2 == 0 else "test"


def eval_items(part=None):
    """The labelled paragraphs, all or one part ("tune"/"test") -> [EvalItem] in file order."""
    lines = EVAL_FILE.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    if (header.get("format"), header.get("version")) != EVAL_FORMAT:
        raise UserError(f"{EVAL_FILE}: not a {EVAL_FORMAT[0]} v{EVAL_FORMAT[1]} file; reinstall vintagelm")
    items = []
    for line in lines[1:]:
        row = json.loads(line)
        item = EvalItem(row["id"], row["label"], row["topic"], row["text"], row.get("year"), eval_part(row["id"]))
        if part is None or item.part == part:
            items.append(item)
    return items


# American -> British spellings of words that occur in terms; each term matches both.
SPELLINGS = {
    "aluminum": "aluminium", "analog": "analogue", "anesthesia": "anaesthesia", "anesthetist": "anaesthetist",
    "armor": "armour", "armored": "armoured", "behavior": "behaviour", "catalog": "catalogue", "center": "centre",
    "color": "colour", "cozy": "cosy", "defense": "defence", "dialog": "dialogue", "disk": "disc",
    "estrogen": "oestrogen", "favorite": "favourite", "fiber": "fibre", "fiberglass": "fibreglass",
    "flavor": "flavour", "gray": "grey", "gynecologist": "gynaecologist", "hemoglobin": "haemoglobin",
    "honor": "honour", "humor": "humour", "jewelry": "jewellery", "kilometer": "kilometre", "labor": "labour",
    "license": "licence", "meter": "metre", "microfiber": "microfibre", "mold": "mould", "mustache": "moustache",
    "neighbor": "neighbour", "neighborhood": "neighbourhood", "odor": "odour", "pajamas": "pyjamas",
    "pediatric": "paediatric", "pediatrician": "paediatrician", "pediatrics": "paediatrics", "plow": "plough",
    "theater": "theatre", "tire": "tyre", "traveler": "traveller", "tumor": "tumour",
}
_SPELLING_PAIRS = {**SPELLINGS, **{uk: us for us, uk in SPELLINGS.items()}}
_IZE = re.compile(r"(?<=[iy])z(?=(?:e|ed|es|er|ers|ing|ation|ations)$)")  # -ize, -ization, -yze: also -ise, -yse
_VOWELS = re.compile(r"[aeiou]+")
_DOUBLES = re.compile(r"(?:^|[^aeiou])[aeiou][bdgklmnprtz]$")  # blog -> blogged, chat -> chatting


def _spellings(word):
    """The spellings of one word of a term: itself, its British/American pair, its -ise form."""
    forms = {word, _SPELLING_PAIRS.get(word, word)}
    return sorted(forms | {_IZE.sub("s", f) for f in forms})


def _inflections(word):
    """The simple inflections of a term's last word (the word itself included). No -er: it
    would turn latte into latter; agent nouns that date a text are listed (blogger)."""
    if len(word) > 2 and word.endswith("y") and word[-2] not in "aeiou":
        return {word, word[:-1] + "ies", word[:-1] + "ied"}
    if word.endswith("e"):
        return {word, word + "s", word + "d", word[:-1] + "ing"}
    forms = {word, word + "s"}
    if word.endswith(("s", "x", "z", "ch", "sh", "o")):
        forms.add(word + "es")
    if _DOUBLES.search(word):  # chat -> chatted; a longer word may keep one consonant (programed)
        forms |= {word + word[-1] + "ed", word + word[-1] + "ing"}
        if len(_VOWELS.findall(word)) == 1:  # cop -> copped, never coped
            return forms
    return forms | {word + "ed", word + "ing"}


def _term_parts(term):
    """A term's words and the separators between them: "cell phone" -> (["cell", "phone"], [" "])."""
    pieces = re.split(r"(\s+|-)", term.lower().strip())
    return pieces[::2], [" " if sep.isspace() else "-" for sep in pieces[1::2]]


def _alternation(forms):
    # longest first, so "phones" is not cut to "phone"; a straight apostrophe also matches a curly one
    return "(?:" + "|".join(re.escape(f).replace("'", "['’]") for f in sorted(forms, key=len, reverse=True)) + ")"


def _term_pattern(term):
    """Regex for a term with its spellings, the inflections of its last word, and its joins:
    a space in the term matches spaces, a hyphen or nothing; a hyphen matches a hyphen or nothing."""
    words, seps = _term_parts(term)
    alts = [set(_spellings(w)) for w in words]
    alts[-1] = set().union(*(_inflections(f) for f in alts[-1]))
    joins = [r"[\s\-]*" if sep == " " else "-?" for sep in seps]
    body = _alternation(alts[0])
    for join, forms in zip(joins, alts[1:]):
        body += join + _alternation(forms)
    return rf"\b{body}\b"


def _written_forms(term):
    """Every way a text may write `term`, one space or hyphen for each join that is not empty:
    its spellings, the inflections of its last word, its joins run together or not."""
    words, seps = _term_parts(term)
    forms = {""}
    for i, word in enumerate(words):
        joins = [""] if i == 0 else ["", seps[i - 1]]
        forms = {f + join + spelled for f in forms for join in joins for spelled in _spellings(word)}
    return set().union(*(_inflections(f) for f in forms))


def _edge_tokens(term):
    """(first words, last words): the words (tokens) that a text holds where `term` matches in
    it; at least one of each set."""
    tokens = [_TOKEN.findall(form) for form in _written_forms(term)]
    return {t[0] for t in tokens}, {t[-1] for t in tokens}


def _snippet(text, start, end):
    left = max(0, start - SNIPPET_CHARS)
    right = min(len(text), end + SNIPPET_CHARS)
    body = " ".join(text[left:right].split())
    return ("..." if left > 0 else "") + body + ("..." if right < len(text) else "")


# ---------------------------------------------------------------- the modernity score
# How build_modernity fits the score; chosen by 5-fold cross-validation on the tune part.
SCORE_PRIOR = 2000  # pseudo-words that smooth each side's word rates toward the pooled rates
SCORE_PLAYS_ONLY_MIN = 3  # a word only the plays use is kept when they use it this often
SCORE_SHAKESPEARE = 0.5  # the builtin plays' share of the period side's word rates; the rest is period prose
SCORE_CLIP = 4.0  # no word moves a paragraph's sum by more than this many nats
SCORE_MIN_WORDS = 20  # the sum is divided by sqrt(max(words, this)): a short text is not amplified
SCORE_KEEP = 0.995  # the threshold keeps this share of the held-out period paragraphs
SCORE_FOLDS = 5
SCORE_PERIOD_END = 1900  # the period side is text before this year; the score serves cut-offs up to it
SCORE_DOCUMENT_SHARE = 0.5  # a text of several paragraphs is modern when this share of them is
EXPLAIN_WORDS = 3  # words shown by --explain for a score hit

_QUOTED = re.compile(r'"[^"]*"|\u201c[^\u201d]*\u201d')


def _words(text):
    """The words of `text` as the filter reads them: lower case, curly apostrophes straight."""
    return _TOKEN.findall(text.replace("\u2019", "'").lower())


def tokens(text):
    """The distinct words of `text` (_words)."""
    return set(_words(text))


def score_words(text, words=None):
    """(the words outside double quotation marks, the words found only inside them); `words`:
    tokens(text), when the caller has it already."""
    if '"' not in text and "\u201c" not in text:
        return (tokens(text) if words is None else words), set()
    inside = {w for m in _QUOTED.finditer(text) for w in tokens(m.group(0))}
    outside = tokens(_QUOTED.sub(" ", text))
    return outside, inside - outside


@dataclass(frozen=True)
class ModernityScore:
    """A paragraph's score: the sum, over its distinct words, of log(rate in modern text / rate in
    period text), divided by sqrt(max(words, min_words)). Above `threshold` it reads as modern."""

    weights: dict  # word -> clipped log ratio; a word not listed counts 0
    threshold: float
    period_end: int  # the score takes part for cut-offs up to this year
    min_words: int

    def contributions(self, text):
        """[(word, what it adds)] for the distinct words of `text`. Quoted speech may lower the
        score but never raise it: period novels put their dialogue, with its don't and I'm,
        inside quotation marks."""
        outside, inside = score_words(text)
        get = self.weights.get
        return [(w, get(w, 0.0)) for w in outside] + [(w, min(0.0, get(w, 0.0))) for w in inside]

    def score(self, text, words=None):
        """The score of `text`; `words`: tokens(text), when the caller has it already."""
        outside, inside = score_words(text, words)
        get = self.weights.get
        # fsum: exact, so the score does not depend on the order a set yields the words in
        total = math.fsum(map(get, outside, repeat(0.0)))
        if inside:
            total += math.fsum(min(0.0, get(w, 0.0)) for w in inside)
        return total / math.sqrt(max(len(outside) + len(inside), self.min_words))

    def explain(self, text):
        """The words that raised the score of `text` most, largest first: [(word, weight)]."""
        raised = sorted((p for p in self.contributions(text) if p[1] > 0), key=lambda p: (-p[1], p[0]))
        return raised[:EXPLAIN_WORDS]


def load_modernity(path=SCORE_FILE):
    """A modernity.json file -> ModernityScore; a file that is not one is a UserError."""
    data = read_json(path, "modernity score file")
    if not isinstance(data, dict) or (data.get("format"), data.get("version")) != SCORE_FORMAT:
        raise UserError(f"{path} is not a {SCORE_FORMAT[0]} v{SCORE_FORMAT[1]} file; "
                        "rebuild it with: python -m vintagelm.data.period")
    weights, threshold = data.get("weights"), data.get("threshold")
    numbers = (int, float)
    if not (isinstance(weights, dict) and all(isinstance(v, numbers) and math.isfinite(v) for v in weights.values())
            and isinstance(threshold, numbers) and math.isfinite(threshold)
            and isinstance(data.get("period_end"), int) and isinstance(data.get("min_words"), int)
            and data["min_words"] >= 1):
        raise UserError(f"{path}: weights, threshold, period_end or min_words missing or malformed; "
                        "rebuild it with: python -m vintagelm.data.period")
    return ModernityScore(weights, float(threshold), data["period_end"], data["min_words"])


@functools.cache
def builtin_modernity():
    return load_modernity(SCORE_FILE)


def _text_paragraphs(path):
    """The paragraphs of one of the score's training texts ('#' lines are comments)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return split_paragraphs("\n".join(lines))


def modernity_training_texts():
    """-> {"shakespeare", "period", "modern": [paragraph]}: the builtin plays, and the team's
    period and modern texts with the TUNE part's paragraphs of each label (never the test part)."""
    from vintagelm.data.sources import shakespeare_documents

    tune = eval_items("tune")
    return {
        "shakespeare": [p for doc in shakespeare_documents() for p in split_paragraphs(doc.text)],
        "period": _text_paragraphs(SCORE_TEXTS["period"]) + [it.text for it in tune if it.label == "period"],
        "modern": _text_paragraphs(SCORE_TEXTS["modern"]) + [it.text for it in tune if it.label == "modern"],
    }


def _word_counts(texts):
    counts = Counter()
    for text in texts:
        counts.update(_words(text))
    return counts


def fit_weights(shakespeare, period, modern):
    """Word Counters of the three sides -> {word: weight}. Each side's rate of a word is
    smoothed toward its rate in all three together (SCORE_PRIOR pseudo-words), so a word one
    side never saw takes a rate from the others instead of a guess; the period rate mixes the
    plays and the period prose (SCORE_SHAKESPEARE), so the plays' million words do not drown
    the prose. Words only the plays use, fewer than SCORE_PLAYS_ONLY_MIN times, are left out:
    they barely move other text, and they would flatter the filter on the plays themselves."""
    sides = (shakespeare, period, modern)
    pooled = shakespeare + period + modern
    pooled_total = sum(pooled.values())
    totals = [sum(c.values()) + SCORE_PRIOR for c in sides]
    weights = {}
    for word in sorted(pooled):
        if not word[0].isalpha() or pooled[word] == shakespeare[word] < SCORE_PLAYS_ONLY_MIN:
            continue  # numbers weigh nothing
        prior = SCORE_PRIOR * pooled[word] / pooled_total
        rates = [(c[word] + prior) / total for c, total in zip(sides, totals)]
        period_rate = SCORE_SHAKESPEARE * rates[0] + (1 - SCORE_SHAKESPEARE) * rates[1]
        weights[word] = round(max(-SCORE_CLIP, min(SCORE_CLIP, math.log(rates[2] / period_rate))), 3)
    return weights


def _fold(text):
    return hashlib.sha1(text.encode("utf-8")).digest()[0] % SCORE_FOLDS


def calibrate_threshold(texts):
    """The threshold that keeps SCORE_KEEP of the period paragraphs when each is scored by a
    model fitted without it (SCORE_FOLDS folds by a hash of the text), and the held-out scores
    of both labels -> (threshold, {"period": [score], "modern": [score]})."""
    shakespeare = _word_counts(texts["shakespeare"])
    held_out = {"period": [], "modern": []}
    for k in range(SCORE_FOLDS):
        fitted = {side: _word_counts(p for p in texts[side] if _fold(p) != k) for side in held_out}
        model = ModernityScore(fit_weights(shakespeare, fitted["period"], fitted["modern"]), 0.0,
                               SCORE_PERIOD_END, SCORE_MIN_WORDS)
        for side in held_out:
            held_out[side] += [model.score(p) for p in texts[side] if _fold(p) == k]
    ranked = sorted(held_out["period"], reverse=True)
    # never below 0: a text is read as modern only on positive evidence, so one of unknown words stays
    return max(0.0, ranked[int((1 - SCORE_KEEP) * len(ranked))]), held_out


def build_modernity():
    """The modernity score as the JSON-able dict stored in modernity.json."""
    texts = modernity_training_texts()
    threshold, held_out = calibrate_threshold(texts)
    weights = fit_weights(*(_word_counts(texts[side]) for side in ("shakespeare", "period", "modern")))
    return {
        "format": SCORE_FORMAT[0], "version": SCORE_FORMAT[1],
        "provenance": "made by `python -m vintagelm.data.period` from the builtin Shakespeare, "
                      "modernity_period.txt, modernity_modern.txt and the tune part of period_eval.jsonl",
        "period_end": SCORE_PERIOD_END, "min_words": SCORE_MIN_WORDS,
        "threshold": round(threshold, 4),
        "calibration": {
            "folds": SCORE_FOLDS, "keep": SCORE_KEEP,
            "held_out_period_kept": sum(s <= threshold for s in held_out["period"]) / len(held_out["period"]),
            "held_out_modern_caught": sum(s > threshold for s in held_out["modern"]) / len(held_out["modern"]),
            "paragraphs": {side: len(texts[side]) for side in texts},
        },
        "weights": weights,
    }


class PeriodFilter:
    """Decides whether text predates `before`, and keeps count of what it rejected.

    `modernity`: the score for what the lexicon misses; "builtin" (modernity.json), None for
    none, or a ModernityScore. It is left out for cut-offs after its period_end."""

    def __init__(self, before, terms, unit="paragraph", modernity="builtin"):
        if unit not in UNITS:
            raise UserError(f"filter unit must be one of {', '.join(UNITS)}, not {unit!r}")
        self.before = int(before)
        self.unit = unit
        # only terms that are modern relative to this cut-off take part
        self.terms = [t for t in terms if t.year is None or t.year >= self.before]
        # Trying two thousand term patterns on every paragraph would be slow, so each term is
        # filed under the words a text holds where the term begins (_edge_tokens): a paragraph's
        # words meet those keys in one set intersection at C speed, and of the terms filed under
        # the words it shares, only those whose last word it also holds are tried.
        self._patterns = {}  # term index -> compiled pattern, made when a text first needs it
        self._lasts = []
        self._by_key = {}
        for i, term in enumerate(self.terms):
            firsts, lasts = _edge_tokens(term.text)
            self._lasts.append(frozenset(lasts))
            for key in firsts:
                self._by_key.setdefault(key, []).append(i)
        self._keys = frozenset(self._by_key)  # (set & set walks the smaller one; set & dict walks the dict)
        if modernity == "builtin":
            modernity = builtin_modernity()
        self.modernity = modernity if modernity is not None and self.before <= modernity.period_end else None
        self.counts = Counter()  # reason -> number of units dropped
        self.examples = {}  # reason -> [Hit] (the first EXAMPLES_PER_REASON)

    def find(self, text):
        """The first reason `text` is anachronistic, as a Hit, or None if it may stay."""
        for m in _YEAR.finditer(text):
            year = int(m.group(1))
            if year >= self.before:
                return Hit("year", m.group(0), year, _snippet(text, m.start(), m.end()))
        words = tokens(text)
        hit = self._find_term(text, words)
        if hit is None and self.modernity is not None:
            hit = self._find_score(text, words)
        return hit

    def _find_term(self, text, words):
        """The leftmost modern term in `text` (whose tokens are `words`), as a Hit, or None."""
        candidates = {i for key in words & self._keys for i in self._by_key[key] if not self._lasts[i].isdisjoint(words)}
        best = None
        for i in sorted(candidates):
            if i not in self._patterns:
                self._patterns[i] = re.compile(_term_pattern(self.terms[i].text), re.IGNORECASE)
            m = self._patterns[i].search(text)
            if m and (best is None or m.start() < best[1].start()):
                best = (i, m)
        if best is None:
            return None
        term, m = self.terms[best[0]], best[1]
        return Hit(f"term:{term.text}", m.group(0), term.year, _snippet(text, m.start(), m.end()))

    def _find_score(self, text, words):
        """A Hit when the modernity score reads `text` (whose tokens are `words`) as modern: the
        text itself, or, when it has several paragraphs, at least SCORE_DOCUMENT_SHARE of them
        (the first one shown)."""
        paragraphs = split_paragraphs(text) if "\n" in text else [text]
        if len(paragraphs) == 1:
            value = self.modernity.score(text, words)
            flagged = [(text, value)] if value > self.modernity.threshold else []
        else:
            flagged = [(p, value) for p in paragraphs if (value := self.modernity.score(p)) > self.modernity.threshold]
        if not flagged or len(flagged) < SCORE_DOCUMENT_SHARE * len(paragraphs):
            return None
        paragraph, value = flagged[0]
        raised = self.modernity.explain(paragraph)
        words = ", ".join(f"{word} {weight:+.1f}" for word, weight in raised)
        share = f" in {len(flagged)} of {len(paragraphs)} paragraphs" if len(paragraphs) > 1 else ""
        # matched: the strongest word as the text writes it, so a caller may blank it out and look again
        top = re.search(r"(?<!\w)" + re.escape(raised[0][0]).replace("'", "['\u2019]") + r"(?!\w)", paragraph, re.IGNORECASE)
        return Hit("score", top.group(0), None, f"score {value:.2f} > {self.modernity.threshold:.2f}{share} "
                   f"({words}): " + _snippet(paragraph, 0, 0))

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


def write_modernity(path=SCORE_FILE):
    """Build the score and write it to `path`: the header indented, the weights one per line."""
    model = build_modernity()
    weights = model.pop("weights")
    head = json.dumps(model, indent=1)[:-2]  # without the closing brace
    rows = ",\n".join(f"  {json.dumps(word)}: {weight:g}" for word, weight in weights.items())
    with atomic_file(path) as tmp:
        tmp.write_text(f'{head},\n "weights": {{\n{rows}\n }}\n}}\n', encoding="utf-8")


if __name__ == "__main__":  # python -m vintagelm.data.period: rebuild modernity.json from the texts
    write_modernity()
    print(f"wrote {SCORE_FILE}")
