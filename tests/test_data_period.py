"""The period filter: years, the 1,000-is-not-a-year rule, modern terms with years, user
term files, and the counts/examples it keeps.    pytest -q tests/test_data_period.py
"""
import pytest

from vintagelm.common import UserError
from vintagelm.data.period import PeriodFilter, Term, load_terms, parse_terms


def reason(before, text, terms=()):
    hit = PeriodFilter(before, list(terms)).find(text)
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
        ("photograph", "a photographer"),
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


def test_builtin_list_is_sane():
    terms = load_terms()
    assert 100 <= len(terms) <= 200
    years = {t.text: t.year for t in terms}
    assert years["telephone"] == 1876 and years["railway"] == 1825 and years["internet"] == 1990
    assert all(t.year is None or 1500 <= t.year <= 2030 for t in terms)


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
    f = PeriodFilter(1850, [Term("telephone", 1876)])
    kept = [p for p in ["old words", "in 1900", "in 1901", "a telephone rang", "more old words"] if f.keep(p, "doc.txt")]
    assert kept == ["old words", "more old words"]
    assert dict(f.counts) == {"year": 2, "term:telephone": 1}
    example = f.examples["term:telephone"][0]
    assert (example.matched, example.year, example.source, example.snippet) == ("telephone", 1876, "doc.txt", "a telephone rang")


def test_unknown_unit_is_a_user_error():
    with pytest.raises(UserError, match="paragraph, document"):
        PeriodFilter(1850, [], unit="sentence")
