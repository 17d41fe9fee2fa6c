"""`vintage corpus`: Project Gutenberg's catalog read and judged by the rules, and the real download
code run against a loopback HTTP server serving a catalog and books made here (never the internet).
    pytest -q tests/test_data_catalog.py
"""
import argparse
import json

import pytest
from test_data_gutenberg import BookServer

from vintagelm.commands import corpus as corpus_command
from vintagelm.common import UserError
from vintagelm.data import catalog as cat
from vintagelm.data.prepare import prepare_dataset

HEADER = "Text#,Type,Issued,Title,Language,Authors,Subjects,LoCC,Bookshelves\n"

# ---- the books the server holds ----

RABBIT = ("The rabbit took a watch out of its waistcoat pocket, looked at it, and hurried on across the "
          "field; and the girl, burning with curiosity, ran after it and was just in time to see it pop down "
          "a large rabbit-hole under the hedge.")
POOL = ("She swam about in the pool of her own tears, and presently she heard something splashing about a "
        "little way off, and she swam nearer to make out what it was: it was only a mouse that had slipped "
        "in like herself.")
MODERN = ("In 1923 the family bought a television set and watched the news every evening, which no rabbit "
          "in the old story could have done.")
CAFE = ("At the café on the quay the naïve young clerk ordered a crème and a roll, and paid for them with "
        "the last of his wages, for the carriage to Marseilles left at dawn and he meant to be on it.")
PREFACE = ("The pictures in this edition were drawn for it by a friend of the author, who asked that his "
           "name not be printed, and who hopes that young readers will forgive the liberties he took.")
INN = ("The landlord of the inn lit a candle and led the travellers up the narrow stair, complaining all "
       "the while of the price of corn and the wickedness of the parish overseer.")


def book_bytes(title, paragraphs, encoding="utf-8", header="modern"):
    """A Project Gutenberg plain-text file: header, the paragraphs hard-wrapped, licence."""
    start = {"modern": f"*** START OF THE PROJECT GUTENBERG EBOOK {title.upper()} ***",
             "old": "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*"}[header]
    body = "\n\n".join(_wrap(p) for p in paragraphs)
    text = (f"The Project Gutenberg eBook of {title}\n\nTitle: {title}\n\n{start}\n\n{body}\n\n"
            f"*** END OF THE PROJECT GUTENBERG EBOOK {title.upper()} ***\n\n*** START: FULL LICENSE ***\n")
    return text.encode(encoding)


def _wrap(paragraph, width=70):
    lines, line = [], ""
    for word in paragraph.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def url(book_id):
    return f"/cache/epub/{book_id}/pg{book_id}.txt"


def every_url(book_id):
    """The requests for a book the site lacks: each URL form Project Gutenberg has used."""
    return [form.format(id=book_id) for form in cat.gutenberg.URL_FORMS]


# id, type, title, language, authors, subjects, bookshelves, served text (None: 404)
ROWS = [
    (11, "Text", "Alice's Adventures", "en", "Carroll, Lewis, 1832-1898", "Fantasy fiction", "Category: Novels",
     book_bytes("Alice's Adventures", [RABBIT, POOL, MODERN])),
    (12, "Text", "The Clerk of Marseilles", "en", "Dumas, Alexandre, 1802-1870; Smith, J., 1790-1850 [Translator]",
     "Adventure stories; France -- Fiction", "", book_bytes("The Clerk of Marseilles", [CAFE, POOL], "latin-1")),
    # another edition of 11: other header, Windows line ends, the same text
    (13, "Text", "Alice's Adventures (old edition)", "en", "Carroll, Lewis, 1832-1898", "Fantasy fiction", "",
     book_bytes("Alice", [RABBIT, POOL, MODERN], header="old").replace(b"\n", b"\r\n")),
    (14, "Text", "A Tramp Abroad", "en", "Twain, Mark, 1835-1910", "Travel -- Fiction", "", book_bytes("T", [INN])),
    (15, "Text", "Le Comte", "fr", "Dumas, Alexandre, 1802-1870", "Fiction", "", book_bytes("C", [INN])),
    (16, "Text", "The Lost Inn", "en", "Crabbe, George, 1754-1832", "Inns -- Fiction", "", None),
    (17, "Sound", "Alice, read aloud", "en", "Carroll, Lewis, 1832-1898", "Fiction", "", book_bytes("S", [INN])),
    (18, "Text", "Songs of the Parish", "en", "Clare, John, 1793-1864", "English poetry", "", book_bytes("P", [INN])),
    (19, "Text", "The Old Ballad Book", "en", "Anonymous", "Ballads -- Fiction", "", book_bytes("B", [INN])),
    (20, "Text", "The Atlas", "en", "Mercator, Gerhard, 1512-1594", "Maps -- Fiction", "", b"PK\x03\x04\x00\x00" * 40),
    (21, "Text", "The Odyssey", "en", "Homer, 751? BCE-651? BCE; Butler, Samuel, 1835-1902 [Translator]",
     "Epic poetry -- Fiction", "", book_bytes("O", [INN])),
    (22, "Text", "The Inn at Dawn", "en", "Austen, Jane, 1775-1817", "Inns -- Fiction", "", book_bytes("I", [INN])),
    # an edition of 11 with a preface of its own: two of its three long paragraphs came before
    (23, "Text", "Alice (illustrated)", "en", "Carroll, Lewis, 1832-1898", "Fantasy fiction", "",
     book_bytes("Alice", [PREFACE, RABBIT, POOL])),
]


def catalog_csv(rows=ROWS):
    def quoted(field):
        return '"' + str(field).replace('"', '""') + '"'
    lines = [",".join(map(quoted, (i, typ, "2000-01-01", title, lang, authors, subjects, "PR", shelves)))
             for i, typ, title, lang, authors, subjects, shelves, _ in rows]
    return (HEADER + "\n".join(lines) + "\n").encode("utf-8")


def site(rows=ROWS):
    """path -> bytes: the catalog where a mirror keeps it, and every book that is served."""
    pages = {url(row[0]): row[-1] for row in rows if row[-1] is not None}
    pages[cat.CATALOG_PATH] = catalog_csv(rows)
    return pages


RULE = cat.Rule(1900, ("en",), ("fiction",))


class Sleeps(list):
    """An injected sleep: records each pause instead of waiting."""

    def __call__(self, seconds):
        self.append(seconds)


def build(tmp_path, server, rule=RULE, **kwargs):
    kwargs.setdefault("sleep", Sleeps())
    kwargs.setdefault("log", lambda line: None)
    return cat.build_corpus(tmp_path / "corpus", rule, base_url=server.url, cache=tmp_path / "cache", **kwargs)


def statuses(manifest):
    return {book["id"]: book["status"] for book in manifest["books"]}


def book_requests(server):
    return [path for path in server.requests if path != cat.CATALOG_PATH]


# ---- reading the catalog ----

@pytest.mark.parametrize("item, expected", [
    ("Austen, Jane, 1775-1817", ("Austen, Jane", 1775, 1817, None, "")),
    ("Pusey, E. B. (Edward Bouverie), 1800-1882 [Translator]", ("Pusey, E. B. (Edward Bouverie)", 1800, 1882, None, "Translator")),
    ("Homer, 751? BCE-651? BCE", ("Homer", -751, -651, None, "")),
    ("Augustine, of Hippo, Saint, 354-430", ("Augustine, of Hippo, Saint", 354, 430, None, "")),
    ("Defoe, Daniel, 1661?-1731", ("Defoe, Daniel", 1661, 1731, None, "")),
    ("Smith, John, -1817", ("Smith, John", None, 1817, None, "")),
    ("Smith, John, 1775-", ("Smith, John", 1775, None, None, "")),
    ("Smith, John, ?-1817 [Editor]", ("Smith, John", None, 1817, None, "Editor")),
    ("Jones, Ann, active 1850", ("Jones, Ann", None, None, 1850, "")),
    ("Anonymous", ("Anonymous", None, None, None, "")),
    ("Sewell, Anna", ("Sewell, Anna", None, None, None, "")),
    ("Tacitus, Cornelius, 56?-117? [Author]", ("Tacitus, Cornelius", 56, 117, None, "Author")),
    ("Caesar, Julius, 100 BC-44 BC", ("Caesar, Julius", -100, -44, None, "")),
])
def test_authors_entries_parse(item, expected):
    person = cat.parse_person(item)
    assert (person.name, person.birth, person.death, person.active, person.role) == expected


@pytest.mark.parametrize("item, ok", [
    ("Carroll, Lewis, 1832-1898", True),
    ("Twain, Mark, 1835-1910", False),
    ("Dickens, Charles, 1812-1870", True),
    ("Kipling, Rudyard, 1865-1900", False),  # died in the cut-off year: not before it
    ("Homer, 751? BCE-651? BCE", True),
    ("Chaucer, Geoffrey, 1343?-", True),  # no death year, but born more than a lifespan before 1900
    ("Hardy, Thomas, 1840-", False),  # no death year and born too late to be sure
    ("Jones, Ann, active 1750", True),
    ("Jones, Ann, active 1850", False),
    ("Anonymous", False),
])
def test_died_before_rule(item, ok):
    assert cat.died_before(cat.parse_person(item), 1900)[0] is ok


def test_rules_give_each_book_its_first_failing_reason(tmp_path):
    (tmp_path / "pg.csv").write_bytes(catalog_csv())
    entries = cat.select(cat.read_catalog(tmp_path / "pg.csv"), cat.Rule(1900, ("en",), ("fiction",), limit=3))
    got = {e.book.id: (e.status, e.reason) for e in entries}
    assert [e.book.id for e in entries] == sorted(row[0] for row in ROWS)
    assert {i: s for i, (s, _) in got.items()} == {
        11: "selected", 12: "selected", 13: "selected", 14: "year", 15: "language", 16: "limit", 17: "type",
        18: "subject", 19: "year", 20: "limit", 21: "year", 22: "limit", 23: "limit"}
    assert got[14][1] == "Twain, Mark died 1910, not before 1900"
    assert got[21][1] == "Butler, Samuel (Translator) died 1902, not before 1900"  # not Homer
    assert got[19][1] == "no dates for Anonymous"
    assert got[15][1] == "language fr, not only en"
    assert got[12][1] == "Dumas, Alexandre died 1870; Smith, J. (Translator) died 1850"
    assert got[16][1] == "beyond the first 3 selected books"


# ---- building a corpus from the local server ----

def test_corpus_from_local_site(tmp_path):
    sleeps = Sleeps()
    with BookServer(site()) as server:
        manifest = build(tmp_path, server, sleep=sleeps)
        requests = list(server.requests)
    out = tmp_path / "corpus"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "pg11.txt", "pg12.txt", "pg22.txt"]
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8")) == manifest
    assert statuses(manifest) == {
        11: "kept", 12: "kept", 13: "duplicate", 14: "year", 15: "language", 16: "download", 17: "type",
        18: "subject", 19: "year", 20: "not-text", 21: "year", 22: "kept", 23: "duplicate"}
    reasons = {book["id"]: book["reason"] for book in manifest["books"]}
    assert reasons[13] == "the same text as book 11"
    assert reasons[23] == "another edition of an earlier book: 2 of its 3 long paragraphs came before"
    assert "book 16 not found" in reasons[16]

    # header and licence gone, lines as wrapped, the modern paragraph dropped by the period filter
    assert (out / "pg11.txt").read_text(encoding="utf-8") == f"{_wrap(RABBIT)}\n\n{_wrap(POOL)}\n"
    # Latin-1 decoded; POOL was seen in book 11, so it is dropped here as a repeat
    assert (out / "pg12.txt").read_text(encoding="utf-8") == f"{_wrap(CAFE)}\n"
    books = {book["id"]: book for book in manifest["books"]}
    assert books[11]["paragraphs"] == {"read": 3, "duplicate": 0, "period": 1, "kept": 2}
    assert books[12]["paragraphs"] == {"read": 2, "duplicate": 1, "period": 0, "kept": 1}
    assert manifest["counts"]["kept"] == 3 and sum(manifest["counts"].values()) == len(ROWS)
    assert "died before 1900" in manifest["rule"]["in_words"]

    # only the selected books were asked for (16, missing, under each URL form), each once,
    # the catalog from the mirror's feeds path; one polite pause before every request but the first
    assert requests[0] == cat.CATALOG_PATH
    assert requests[1:] == [url(11), url(12), url(13), *every_url(16), url(20), url(22), url(23)]
    assert sleeps == [cat.DEFAULT_DELAY_S] * (len(requests) - 1)


def test_prepare_reads_the_corpus_folder(tmp_path):
    with BookServer(site()) as server:
        build(tmp_path, server)
    meta = prepare_dataset([str(tmp_path / "corpus")], "char", tmp_path / "data", progress=False)
    assert meta["documents"]["read"] == 3 and meta["documents"]["kept"] == 3  # the three books, not the manifest


def test_failed_book_is_fetched_on_the_next_run_and_nothing_else(tmp_path):
    pages = site()
    held_back = pages.pop(url(12))  # the server fails on this book the first time
    with BookServer(pages) as server:
        first = build(tmp_path, server)
        assert statuses(first)[12] == "download"
        assert not (tmp_path / "corpus" / "pg12.txt").exists()
        server.requests.clear()
        pages[url(12)] = held_back
        sleeps = Sleeps()
        second = build(tmp_path, server, sleep=sleeps)
        # the catalog and the books from the first run come from the cache; 16 is still missing
        assert book_requests(server) == [url(12), *every_url(16)]
        assert cat.CATALOG_PATH not in server.requests
        assert sleeps == [cat.DEFAULT_DELAY_S] * (len(server.requests) - 1)
    assert statuses(second)[12] == "kept"
    assert (tmp_path / "corpus" / "pg12.txt").read_text(encoding="utf-8") == f"{_wrap(CAFE)}\n"


def test_interrupted_run_continues_where_it_stopped(tmp_path):
    class Interrupt(Sleeps):
        def __call__(self, seconds):
            super().__call__(seconds)
            if len(self) == 3:  # Ctrl-C during the pause before the third book
                raise KeyboardInterrupt

    with BookServer(site()) as server:
        with pytest.raises(KeyboardInterrupt):
            build(tmp_path, server, sleep=Interrupt())
        assert not (tmp_path / "corpus").exists()
        assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []  # no temporaries left
        assert sorted(p.name for p in (tmp_path / "cache").glob("pg*.txt")) == ["pg11.txt", "pg12.txt"]
        done = list(server.requests)
        server.requests.clear()
        manifest = build(tmp_path, server)
        assert book_requests(server) == [url(13), *every_url(16), url(20), url(22), url(23)]
        assert set(book_requests(server)).isdisjoint(done)
    assert statuses(manifest)[11] == statuses(manifest)[12] == "kept"


def test_unreachable_site_stops_the_run_and_says_how_to_continue(tmp_path):
    rows = [(30 + i, "Text", f"Book {i}", "en", "Austen, Jane, 1775-1817", "Fiction", "", None) for i in range(8)]
    (tmp_path / "pg.csv").write_bytes(catalog_csv(rows))
    with BookServer({}) as server:
        dead = server.url  # nothing listens there once the server has stopped
    with pytest.raises(UserError, match=r"stopped: the last 5 downloads failed .*run the same command again") as e:
        cat.build_corpus(tmp_path / "corpus", RULE, catalog=tmp_path / "pg.csv", base_url=dead,
                         cache=tmp_path / "cache", sleep=Sleeps(), log=lambda line: None)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "corpus").exists()


@pytest.mark.parametrize("content, message", [
    (b"Title,Authors\nEmma,Austen\n", r"lacks the column\(s\) Text#, Type, Language, Subjects, Bookshelves"),
    (b"", r"lacks the column"),
    (HEADER.encode() + b"12a,Text,2000,T,en,\"Austen, Jane, 1775-1817\",Fiction,PR,\n", r"line 2: Text# '12a' is not a book number"),
    (HEADER.encode() + b"1,Text,2000,T,en,\"Twain, Mark, 1835-1910\",Fiction,PR,\n", r"no book in the catalog passes the rules \(1 year\)"),
    # a quote that never closes swallows the rest of the file into one field
    (HEADER.encode() + b'1,Text,2000,"The Unclosed\n' + b"2,Text,2000,T,en,A,F,PR,\n" * 20000, r"line \d+: not valid CSV"),
])
def test_bad_catalog_is_a_one_line_error(tmp_path, content, message):
    (tmp_path / "pg.csv").write_bytes(content)
    with BookServer({}) as server:
        with pytest.raises(UserError, match=message) as e:
            cat.build_corpus(tmp_path / "corpus", RULE, catalog=tmp_path / "pg.csv", base_url=server.url,
                             cache=tmp_path / "cache", sleep=Sleeps(), log=lambda line: None)
        assert server.requests == []
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pg.csv"]


def test_catalog_url_that_is_not_found_is_a_user_error(tmp_path):
    with BookServer({cat.CATALOG_PATH: b"<!DOCTYPE html><html>busy</html>"}) as server:
        with pytest.raises(UserError, match="no catalog at .*pg_catalog.csv"):
            build(tmp_path, server)
    assert not (tmp_path / "corpus").exists()
    assert not any((tmp_path / "cache").glob("catalog-*"))


def test_no_book_left_writes_nothing(tmp_path):
    by_id = {row[0]: row for row in ROWS}
    empty = by_id[13][:-1] + (book_bytes("Empty", []),)  # a header and a licence, no book between
    modern = (25, "Text", "Wireless Days", "en", "Austen, Jane, 1775-1817", "Fiction", "",
              book_bytes("Wireless Days", ["The airline lost her suitcase in 1952, so she spent the holiday "
                                           "in borrowed jeans, phoning the airport from the motel lobby."]))
    rows = [empty, by_id[16], by_id[20], modern]
    with BookServer(site(rows)) as server:
        with pytest.raises(UserError, match=r"no book left to write \(1 empty, 1 download, 1 not-text, 1 period\)"):
            build(tmp_path, server)
    assert not (tmp_path / "corpus").exists()


def test_foreign_out_folder_is_refused_before_any_download(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "notes.txt").write_text("mine")
    with BookServer(site()) as server:
        with pytest.raises(UserError, match="holds files this program did not write"):
            build(tmp_path, server)
        assert server.requests == []
    assert (tmp_path / "corpus" / "notes.txt").read_text() == "mine"


def test_command_line(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    corpus_command.add_arguments(parser)
    with BookServer(site()) as server:
        args = parser.parse_args(["--before", "1900", "--subject", "fiction", "--limit", "2", "--delay", "0",
                                  "--mirror", server.url, "--cache", str(tmp_path / "cache"),
                                  "--out", str(tmp_path / "corpus")])
        assert corpus_command.run(args) == 0
        # a second run replaces the corpus it wrote, from the cache alone
        server.requests.clear()
        assert corpus_command.run(args) == 0
        assert server.requests == []
    out = capsys.readouterr().out
    assert f"corpus {tmp_path / 'corpus'}: 2 books, 3 paragraphs kept" in out
    assert "[3/2]" not in out and "[2/2] 12 The Clerk of Marseilles: kept" in out
    assert sorted(p.name for p in (tmp_path / "corpus").iterdir()) == ["manifest.json", "pg11.txt", "pg12.txt"]
