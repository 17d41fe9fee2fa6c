"""The period filter: years, the 1,000-is-not-a-year rule, the dated lexicon (inflections,
joins, spellings, file format), user term files, the modernity score (its file, its fitting and
calibration, quoted speech, documents), --explain, and the filter measured on the team's
labelled set (tune/test split) as a regression guard.    pytest -q tests/test_data_period.py
"""
import hashlib
import json
import math
import re
from collections import Counter

import pytest

from vintagelm import cli
from vintagelm.common import UserError
from vintagelm.data import period
from vintagelm.data.period import (ModernityScore, PeriodFilter, Term, eval_items, eval_part, load_modernity,
                                   load_terms, parse_terms)


def reason(before, text, terms=()):
    """The lexicon and year rules alone (the score is tested on its own below)."""
    hit = PeriodFilter(before, list(terms), modernity=None).find(text)
    return None if hit is None else (hit.reason, hit.matched)


@pytest.mark.parametrize(
    "text, found",
    [
        ("It happened in 1850, in the spring.", ("year", "1850")),
        ("The 1850s were loud.", ("year", "1850s")),
        ("in the 1850's", ("year", "1850's")),
        ("dated 12/3/1851", ("year", "1851")),
        ("the years 1620-1851", ("year", "1851")),  # 1620 is early enough; 1851 is not
        ("He lent 1,000 ducats.", None),  # comma-grouped digits are an amount, not a year
        ("a host of 1,850 men", None),
        ("she paid £1900 for it", None),
        ("pi is 3.1416", None),
        ("a 1900% rise", None),
        ("the year 1849 ended", None),  # before the cut-off
        ("in 2100 perhaps", None),  # out of the 1000-2099 range
        ("ship number A1900", None),  # part of a word
        ("it was 1850.", ("year", "1850")),
    ],
)
def test_year_rule(text, found):
    assert reason(1850, text) == found


def test_terms_apply_only_when_their_year_is_at_or_after_the_cutoff():
    terms = [Term("telephone", 1876), Term("railway", 1825)]
    assert reason(1850, "He telephoned at once.", terms) == ("term:telephone", "telephoned")
    assert reason(1850, "the Railways of England", terms) is None  # 1825 < 1850: not modern
    assert reason(1800, "the Railways of England", terms) == ("term:railway", "Railways")
    assert reason(1877, "He telephoned at once.", terms) is None


@pytest.mark.parametrize(
    "term, text",
    [
        ("telephone", "two telephones"),
        ("telephone", "TELEPHONING"),
        ("telegraph", "they telegraphed"),
        ("photograph", "photographed"),
        ("battery", "the batteries"),
        ("atomic bomb", "atomic\n  bombs"),
        ("x-ray", "X-rays"),
    ],
)
def test_term_inflections(term, text):
    assert reason(1000, text, [Term(term, 1900)]) is not None


@pytest.mark.parametrize("text", ["telephonesque", "microtelephone", "radiology"])
def test_terms_match_whole_words_only(text):
    assert reason(1000, text, [Term("telephone", 1900), Term("radio", 1910)]) is None


@pytest.mark.parametrize(
    "term, text",
    [
        ("cell phone", "her cellphone"),  # a space in a term: spaces, a hyphen or nothing
        ("cell phone", "two cell-phones"),
        ("e-mail", "I emailed him"),  # a hyphen: a hyphen or nothing
        ("tire pressure", "check the tyre pressure"),  # American term, British text
        ("paediatrician", "the pediatrician said"),  # and the other way round
        ("globalization", "globalisation"),  # -ize / -ise
        ("breathalyzer", "two breathalysers"),
        ("blog", "she blogged daily"),  # a doubled final consonant
        ("chat room", "chatrooms"),
        ("mcdonald's", "at McDonald\u2019s"),  # a curly apostrophe
        ("pasteurize", "pasteurising"),
    ],
)
def test_term_joins_and_spellings(term, text):
    assert reason(1000, text, [Term(term, 1900)]) is not None


@pytest.mark.parametrize(
    "term, text",
    [
        ("drive-in", "a drive in the park"),  # a hyphen never matches a space
        ("latte", "the latter end"),  # no -er: latte is not latter
        ("cop", "he coped with it"),  # one syllable doubles: copped, never coped
        ("chat room", "chat about the room"),
    ],
)
def test_terms_do_not_match_other_words(term, text):
    assert reason(1000, text, [Term(term, 1900)]) is None


def _normal_form(term):
    """A term as the matcher sees it: lower case, joins dropped, British spellings."""
    words, _ = period._term_parts(term)
    return "".join(max(period._spellings(w), key=lambda f: (f in period.SPELLINGS.values(), f)) for w in words)


def test_lexicon_file_format():
    text = period.BUILTIN_TERMS.read_text(encoding="utf-8")
    assert text.startswith("# vintagelm-terms v2")
    rows = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    rows = [row for row in rows if row]
    assert all(re.fullmatch(r"[^\t]+\t\d{4}", row) for row in rows), "every entry is TERM<TAB>YEAR"
    terms = load_terms()
    assert len(terms) == len(rows) >= 1000
    assert all(isinstance(t.year, int) and 1500 <= t.year <= 2030 for t in terms)
    normal = Counter(_normal_form(t.text) for t in terms)
    assert [form for form, n in normal.items() if n > 1] == [], "terms unique after joins and spellings"
    years = {t.text: t.year for t in terms}
    assert years["telephone"] == 1876 and years["railway"] == 1825 and years["internet"] == 1990
    assert sum(" " in t.text or "-" in t.text for t in terms) >= 300  # multi-word and hyphenated forms


def test_no_inflection_of_a_modern_term_is_a_period_word():
    # "improv" once matched "improved": an inflected form of a term dated 1900 or later must not
    # be a word the period texts (the plays, the team's period prose) already use
    texts = period.modernity_training_texts()
    period_words = {w for p in texts["shakespeare"] + texts["period"] for w in period._WORD.findall(p.lower())}
    clashes = []
    for t in load_terms():
        words, _ = period._term_parts(t.text)
        if t.year >= 1900 and len(words) == 1:
            own = set(period._spellings(words[0]))
            clashes += [(t.text, f) for f in sorted(period._written_forms(t.text) - own) if f in period_words]
    assert clashes == []


def test_user_terms_file_extends_and_overrides(tmp_path):
    path = tmp_path / "terms.txt"
    path.write_text("# my list\nwireless\t1900\nhorseless carriage\ntelephone\t1950  # later, for this corpus\n")
    terms = {t.text: t.year for t in load_terms(path)}
    assert terms["wireless"] == 1900 and terms["horseless carriage"] is None and terms["telephone"] == 1950
    assert "railway" in terms  # the shipped list is still there
    always = PeriodFilter(3000, load_terms(path))  # a term without a year is modern for any cut-off
    assert always.find("a horseless carriage").reason == "term:horseless carriage"


@pytest.mark.parametrize("line", ["telephone\tsoon", "\u00a3money\t1900"])
def test_bad_term_lines_are_user_errors(line):
    with pytest.raises(UserError, match="terms.txt:2"):
        parse_terms(f"# header\n{line}\n", "terms.txt")


def test_missing_terms_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="terms file not found"):
        load_terms(tmp_path / "nope.txt")


def test_counts_and_examples():
    f = PeriodFilter(1850, [Term("telephone", 1876)], modernity=None)
    kept = [p for p in ["old words", "in 1900", "in 1901", "a telephone rang", "more old words"] if f.keep(p, "doc.txt")]
    assert kept == ["old words", "more old words"]
    assert dict(f.counts) == {"year": 2, "term:telephone": 1}
    example = f.examples["term:telephone"][0]
    assert (example.matched, example.year, example.source, example.snippet) == ("telephone", 1876, "doc.txt", "a telephone rang")


def test_unknown_unit_is_a_user_error():
    with pytest.raises(UserError, match="paragraph, document"):
        PeriodFilter(1850, [], unit="sentence")


# ---- the modernity score ----

TOY = ModernityScore({"okay": 3.0, "kids": 2.0, "thee": -3.0, "said": 0.0}, threshold=1.0, period_end=1900, min_words=1)


def test_score_sums_the_words_and_divides_by_the_root_of_their_number():
    assert TOY.score("Okay kids, okay.") == pytest.approx((3.0 + 2.0) / math.sqrt(2))  # distinct words
    assert TOY.score("okay thee kids") == pytest.approx(2.0 / math.sqrt(3))
    assert TOY.score("unknown words only") == 0.0
    long = ModernityScore(TOY.weights, 1.0, 1900, min_words=25)
    assert long.score("okay kids") == pytest.approx(5.0 / 5)  # a short text is not amplified
    assert TOY.explain("thee kids okay said") == [("okay", 3.0), ("kids", 2.0)]


def test_quoted_speech_can_lower_the_score_but_never_raise_it():
    assert TOY.score('"Okay, kids," said he.') == 0.0
    assert TOY.score("\u201cOkay, kids,\u201d said he.") == 0.0
    assert TOY.score('"Thee," said he, okay.') == pytest.approx((3.0 - 3.0) / math.sqrt(3))
    f = PeriodFilter(1850, [], modernity=TOY)
    assert f.find('"Okay, kids," said he.') is None
    hit = f.find("Okay, kids, he said.")
    assert (hit.reason, hit.matched, hit.year) == ("score", "Okay", None)
    assert "(okay +3.0, kids +2.0)" in hit.snippet


def test_score_hit_names_a_word_the_text_holds():
    # callers blank out hit.matched and search again (lab.data_quality.modern_hits): it must be
    # in the text as written, so each round removes something
    f = PeriodFilter(1850, [], modernity=TOY)
    line = "OKAY! Kids, okay."
    for _ in range(5):
        hit = f.find(line)
        if hit is None:
            break
        assert hit.matched in line
        line = line.replace(hit.matched, " ", 1)
    assert f.find(line) is None


def test_a_document_is_modern_when_half_its_paragraphs_are():
    f = PeriodFilter(1850, [], unit="document", modernity=TOY)
    assert f.find("okay kids\n\nthee\n\nthee said") is None  # one of three
    hit = f.find("okay kids\n\nthee\n\nkids okay")  # two of three
    assert hit.reason == "score" and "in 2 of 3 paragraphs" in hit.snippet


def test_score_takes_part_only_up_to_its_period_end():
    assert PeriodFilter(1900, [], modernity=TOY).find("okay kids") is not None
    assert PeriodFilter(1901, [], modernity=TOY).find("okay kids") is None
    assert PeriodFilter(1800, [], modernity=None).find("okay kids") is None


def test_fit_weights_signs_smoothing_and_caps():
    plays = Counter({"thou": 50, "the": 100, "sword": 5, "yorick": 1})
    prose = Counter({"the": 50, "carriage": 5, "lunch": 1})
    modern = Counter({"the": 50, "okay": 5, "lunch": 5})
    w = period.fit_weights(plays, prose, modern)
    assert w["okay"] > 0 > w["thou"] and w["carriage"] < 0
    assert abs(w["the"]) < 0.5  # about as common on both sides
    assert "yorick" not in w  # a word only the plays use, once: left out
    assert max(map(abs, w.values())) <= period.SCORE_CLIP
    assert w["okay"] > w["lunch"]


def test_builtin_score_file_is_what_the_texts_make():
    shipped = json.loads(period.SCORE_FILE.read_text(encoding="utf-8"))
    assert (shipped["format"], shipped["version"]) == period.SCORE_FORMAT
    model = load_modernity()
    assert all(math.isfinite(v) for v in model.weights.values()) and model.threshold >= 0
    rebuilt = period.build_modernity()
    assert rebuilt["threshold"] == pytest.approx(shipped["threshold"], abs=1e-3)
    assert rebuilt["weights"].keys() == shipped["weights"].keys()
    assert max(abs(rebuilt["weights"][w] - shipped["weights"][w]) for w in rebuilt["weights"]) <= 1e-3
    assert rebuilt["calibration"]["held_out_period_kept"] >= period.SCORE_KEEP


def test_score_training_texts_never_hold_a_test_paragraph():
    texts = period.modernity_training_texts()
    test = {it.text for it in eval_items("test")}
    assert test.isdisjoint(texts["period"]) and test.isdisjoint(texts["modern"])
    for side in ("modern", "period"):
        assert period.SCORE_TEXTS[side].read_text(encoding="utf-8").startswith("# vintagelm-modernity-text v1")


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not valid JSON"),
        ('{"format": "vintagelm-modernity", "version": 2}', "not a vintagelm-modernity v1 file"),
        ('{"format": "vintagelm-modernity", "version": 1, "weights": {"a": "x"}, "threshold": 1,'
         ' "period_end": 1900, "min_words": 20}', "malformed"),
        ('{"format": "vintagelm-modernity", "version": 1, "weights": {}, "threshold": 1e999,'
         ' "period_end": 1900, "min_words": 20}', "malformed"),
    ],
)
def test_bad_score_files_are_user_errors(tmp_path, content, message):
    path = tmp_path / "modernity.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_modernity(path)


# ---- the labelled set and the filter measured on it ----

def test_labelled_set_format_and_split():
    items = eval_items()
    ids = [it.id for it in items]
    assert len(set(ids)) == len(ids) and len({it.text for it in items}) == len(items)
    modern = [it for it in items if it.label == "modern"]
    old = [it for it in items if it.label == "period"]
    assert len(modern) >= 150 and len(old) >= len(modern) and len(modern) + len(old) == len(items)
    assert len({it.topic for it in modern}) >= 15
    assert all(isinstance(it.year, int) and 1700 <= it.year <= 1899 for it in old)
    assert all(it.year is None for it in modern)
    # the split rule, computed here from its definition: sha1 of the id, first byte even -> tune
    for it in items:
        assert it.part == ("tune" if hashlib.sha1(it.id.encode()).digest()[0] % 2 == 0 else "test")
        assert eval_part(it.id) == it.part
    for label in ("modern", "period"):
        parts = Counter(it.part for it in items if it.label == label)
        assert min(parts.values()) >= 0.4 * sum(parts.values())


@pytest.fixture(scope="module")
def filters():
    terms = load_terms()
    return {before: PeriodFilter(before, terms) for before in (1800, 1850, 1900)}


# Measured when the lexicon and the score were fitted (tune part only); the test part's recall
# is a regression guard at the measured level, not a target met.
TEST_RECALL = {1800: 0.97, 1850: 0.97, 1900: 0.95}


@pytest.mark.parametrize("before", [1800, 1850, 1900])
def test_recall_on_the_test_part(filters, before):
    modern = [it for it in eval_items("test") if it.label == "modern"]
    caught = sum(filters[before].find(it.text) is not None for it in modern)
    assert caught / len(modern) >= TEST_RECALL[before]


@pytest.mark.parametrize("before", [1800, 1850, 1900])
def test_period_paragraphs_are_kept(filters, before):
    for part in ("tune", "test"):
        old = [it for it in eval_items(part) if it.label == "period" and it.year < before]
        dropped = [(it.id, filters[before].find(it.text).reason) for it in old if filters[before].find(it.text)]
        assert len(dropped) <= 0.01 * len(old), dropped


def test_explain_shows_the_term_or_the_score_words(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "letters.txt").write_text(
        "The carrier brought your letter, and I read it by the fire.\n\n"
        "Honestly, the kids were pretty tired, so we just ordered pizza and watched something.\n\n"
        "Honestly the kids were exhausted by the time we got back, so we just stayed in.\n\n"
        "The rain fell all the evening upon the orchard and the lane.\n")
    argv = ["prepare", "--source", str(corpus), "--tokenizer", "char", "--before", "1900", "--explain",
            "--out", str(tmp_path / "ds")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "term:pizza: 'pizza' (1935) in" in out
    score_line = next(line for line in out.splitlines() if line.strip().startswith("score:"))
    # the match shown is the word that raised the score most, the first of those listed
    matched, listed = re.search(r"score: '(\w+)' in .*\((\w+) \+[\d.]+, .*\): ", score_line).group(1, 2)
    assert matched.lower() == listed and "kids +" in score_line and "Honestly the kids" in score_line
