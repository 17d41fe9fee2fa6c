"""A period corpus from Project Gutenberg's catalog: select books, download them politely, clean them.

The catalog is Project Gutenberg's pg_catalog.csv, one row per book with the columns
"Text#", "Type", "Issued", "Title", "Language", "Authors", "Subjects", "LoCC", "Bookshelves".
Language, Subjects and Bookshelves are "; "-separated lists; Authors is a "; "-separated list
of people, each "Last, First, BIRTH-DEATH [Role]", where the dates may be missing, "?",
approximate ("1775?"), "BCE", one-sided ("-1817", "1775-") or "active 1850".

A book is selected when it passes every rule below; the first rule it fails is its reason in
the manifest:
  type      its Type is "Text" (not "Sound", "Image", ...);
  language  every language it is in was asked for (an "en; fr" book is not an English book);
  subject   one of the asked subjects is part of (case-insensitive) one of its Subjects or
            Bookshelves; with no subject asked, any book passes;
  year      every person the catalog names for it (author, editor, translator, illustrator)
            died before the cut-off: the catalog gives a death year before it, or, with no death
            year, a birth or active year at least LIFESPAN years before it. A book with no
            person, or a person with no dates (Anonymous), fails: the rule must show the book
            is old, and an edition's translator or editor writes words of their own;
  limit     it is among the first `limit` books, by number, that pass the rules above.
Each selected book is then downloaded once into the Gutenberg cache (`gutenberg.download`:
atomic writes, so a killed run leaves no partial book and the next run asks only for what is
missing), one request every `delay` seconds; its header and licence are stripped; a book whose
text (whitespace aside) equals an earlier one's is dropped, and so is another edition of an earlier
book (more than EDITION_SHARE of its long paragraphs seen before: editions differ in a preface or a
few lines, and a play's short speeches are never called repeats); in the books kept, paragraphs seen
before (`clean.Deduplicator`) and paragraphs the period filter rejects (`period.PeriodFilter`) go.

The corpus folder holds one pgID.txt per kept book and manifest.json: the rule in words, counts,
and every catalog row with its status ("kept" or why it was dropped). `vintage prepare --source
FOLDER` tokenizes it. Near-duplicate editions (different wording) are not detected here.
"""
import csv
import hashlib
import io
import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from vintagelm.common import UserError, atomic_dir, atomic_file, read_json, regular_file
from vintagelm.data import clean, gutenberg
from vintagelm.data.period import PeriodFilter, load_terms

FORMAT = "vintagelm-corpus"
VERSION = 1
MANIFEST = "manifest.json"
CATALOG_PATH = "/cache/epub/feeds/pg_catalog.csv"  # on the Gutenberg site or a mirror
COLUMNS = ("Text#", "Type", "Title", "Language", "Authors", "Subjects", "Bookshelves")  # the ones we read
DEFAULT_DELAY_S = 2.0  # between two requests: Project Gutenberg asks robots not to hurry
LIFESPAN = 100  # years: someone born (or active) this long before the cut-off died before it
FAILURES_IN_A_ROW = 5  # this many failed downloads in a row means the site is unreachable: stop
EDITION_SHARE = 0.5  # a book more than this share of whose long paragraphs came before is another edition


@dataclass(frozen=True)
class Person:
    name: str  # "Austen, Jane"
    birth: int | None  # negative for BCE
    death: int | None
    active: int | None  # the "active" year, when that is all the catalog knows
    role: str  # "" for an author, else the catalog's "[Role]": "Translator", "Editor", ...

    def label(self):
        return f"{self.name} ({self.role})" if self.role else self.name


@dataclass(frozen=True)
class Book:
    id: int
    type: str
    title: str
    authors: str  # as the catalog writes them, for the manifest
    languages: tuple  # ("en",)
    people: tuple  # (Person, ...)
    subjects: tuple  # Subjects and Bookshelves entries together


@dataclass(frozen=True)
class Rule:
    before: int  # the cut-off year
    languages: tuple = ("en",)
    subjects: tuple = ()
    limit: int | None = None

    def describe(self):
        subjects = " or ".join(repr(s) for s in self.subjects) if self.subjects else "any subject"
        limit = f"; the first {self.limit} by number" if self.limit else ""
        return (
            f"Text books in {' or '.join(self.languages)} only, on {subjects}, whose every named person "
            f"(author, editor, translator, illustrator) died before {self.before} (a death year before it, "
            f"or with none a birth or active year before {self.before - LIFESPAN}){limit}; then paragraphs "
            f"seen before or dated {self.before} or later by the period filter are dropped"
        )


@dataclass
class Entry:
    """A catalog row's line in the manifest: the book and what became of it."""

    book: Book
    status: str  # "kept", "selected" (while in progress), or why it was dropped: "language", "year", ...
    reason: str  # in words
    paragraphs: dict | None = None  # read, duplicate, period, kept (books that were read)

    def to_json(self):
        out = {"id": self.book.id, "title": self.book.title, "authors": self.book.authors,
               "status": self.status, "reason": self.reason}
        if self.status == "kept":
            out["file"] = book_file(self.book.id)
        if self.paragraphs is not None:
            out["paragraphs"] = self.paragraphs
        return out


def book_file(book_id):
    return f"pg{book_id}.txt"


# ---- reading the catalog ----

def parse_year(text):
    """One side of a date range -> int (negative for BCE), or None when unknown ("?", "", "15th cent.")."""
    text = text.replace("?", "").strip().upper()  # "1661?": the catalog's guess is good enough here
    digits = text.removesuffix("BCE").removesuffix("BC").strip()
    if not digits.isdigit():
        return None
    return -int(digits) if text.endswith("BC") or text.endswith("BCE") else int(digits)


def parse_person(item):
    """One entry of the Authors column -> Person.

    >>> parse_person("Pusey, E. B. (Edward Bouverie), 1800-1882 [Translator]")
    Person(name='Pusey, E. B. (Edward Bouverie)', birth=1800, death=1882, active=None, role='Translator')
    """
    item, role = item.strip(), ""
    if item.endswith("]") and "[" in item:
        item, _, role = item[:-1].rpartition("[")
        item, role = item.strip(), role.strip()
    name, sep, dates = item.rpartition(",")
    if not sep or not any(c.isdigit() for c in dates):
        return Person(item, None, None, None, role)  # no dates: the last part is part of the name
    dates, birth, death, active = dates.strip(), None, None, None
    if dates.lower().startswith(("active", "fl.", "fl ")):
        active = max((y for y in map(parse_year, dates.split(None, 1)[-1].split("-")) if y is not None), default=None)
    elif "-" in dates:
        left, _, right = dates.partition("-")
        birth, death = parse_year(left), parse_year(right)
    return Person(name.strip(), birth, death, active, role)


def _split_list(field):
    return tuple(part.strip() for part in (field or "").split(";") if part.strip())


def read_catalog(path):
    """pg_catalog.csv -> [Book], in the file's order, a book number's first row only.

    A file without the needed columns, or a row whose Text# is not a number, is a UserError
    naming the file (and line)."""
    path = regular_file(path, "catalog")
    try:
        text = clean.decode_bytes(path.read_bytes())
    except OSError as e:
        raise UserError(f"cannot read catalog {path}: {e.strerror}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    books, seen = [], set()
    try:
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise UserError(
                f"catalog {path} lacks the column(s) {', '.join(missing)}; expected Project Gutenberg's "
                f"pg_catalog.csv (from https://www.gutenberg.org{CATALOG_PATH})"
            )
        for row in reader:
            number = (row["Text#"] or "").strip()
            if not number.isdigit():
                raise UserError(f"catalog {path}, line {reader.line_num}: Text# {number!r} is not a book number")
            if int(number) in seen:
                continue
            seen.add(int(number))
            books.append(Book(
                id=int(number), type=(row["Type"] or "").strip(), title=" ".join((row["Title"] or "").split()),
                authors=" ".join((row["Authors"] or "").split()), languages=_split_list(row["Language"]),
                people=tuple(map(parse_person, _split_list(row["Authors"]))),
                subjects=_split_list(row["Subjects"]) + _split_list(row["Bookshelves"]),
            ))
    except csv.Error as e:
        raise UserError(f"catalog {path}, line {reader.line_num}: not valid CSV ({e})") from None
    return books


def catalog_location(catalog=None, base_url=None):
    """`catalog` (a file or a URL) as given, else the mirror's pg_catalog.csv URL."""
    return str(catalog) if catalog else gutenberg.mirror_url(base_url) + CATALOG_PATH


def catalog_file(catalog=None, *, base_url=None, cache=None, before_request=None, log=print):
    """The local path of the catalog: `catalog` itself when it is a file; a URL (default: the
    mirror's pg_catalog.csv) is downloaded once into the Gutenberg cache and reused after."""
    url = catalog_location(catalog, base_url)
    if not url.startswith(("http://", "https://")):
        return regular_file(url, "catalog")
    target = gutenberg.cache_dir(cache) / f"catalog-{hashlib.sha256(url.encode()).hexdigest()[:12]}.csv"
    if target.is_file():
        log(f"catalog: {url} (cached in {target}; delete it to fetch a newer one)")
        return target
    log(f"catalog: downloading {url}")
    if before_request is not None:
        before_request()
    data = gutenberg.fetch(url)
    if data is None:
        raise UserError(f"no catalog at {url} (not found, or an HTML page); check --catalog or --mirror")
    with atomic_file(target) as tmp:
        tmp.write_bytes(data)
    return target


# ---- the rules ----

def died_before(person, before):
    """-> (whether `person` certainly died before the year `before`, why in words)."""
    who = person.label()
    if person.death is not None:
        if person.death < before:
            return True, f"{who} died {_year_words(person.death)}"
        return False, f"{who} died {_year_words(person.death)}, not before {before}"
    known = max((y for y in (person.birth, person.active) if y is not None), default=None)
    if known is None:
        return False, f"no dates for {who}"
    if known <= before - LIFESPAN:
        return True, f"{who} {'born' if known == person.birth else 'active'} {_year_words(known)}"
    return False, f"no death year for {who} (born or active {_year_words(known)})"


def _year_words(year):
    return f"{-year} BCE" if year < 0 else str(year)


def judge(book, rule):
    """-> (status, reason): "selected" and the year rule's evidence, or the first rule `book` fails."""
    if book.type.lower() != "text":
        return "type", f"type {book.type or '(none)'}, not Text"
    wanted = {language.lower() for language in rule.languages}
    others = [language for language in book.languages if language.lower() not in wanted]
    if others or not book.languages:
        return "language", f"language {'; '.join(book.languages) or '(none)'}, not only {' or '.join(rule.languages)}"
    if rule.subjects and not any(s.lower() in subject.lower() for s in rule.subjects for subject in book.subjects):
        return "subject", f"no subject or bookshelf mentions {' or '.join(rule.subjects)}"
    if not book.people:
        return "year", "no author named, so no date to show the book is old"
    evidence = []
    for person in book.people:
        ok, why = died_before(person, rule.before)
        if not ok:
            return "year", why
        evidence.append(why)
    return "selected", "; ".join(evidence)


def select(books, rule):
    """-> [Entry] for every book, by number; those that pass every rule have status "selected"."""
    entries = [Entry(book, *judge(book, rule)) for book in sorted(books, key=lambda b: b.id)]
    chosen = [entry for entry in entries if entry.status == "selected"]
    for entry in chosen[rule.limit:] if rule.limit else ():
        entry.status, entry.reason = "limit", f"beyond the first {rule.limit} selected books"
    return entries


# ---- downloading and cleaning ----

class Pacer:
    """Called before each request: sleeps `delay` seconds before every request but the first."""

    def __init__(self, delay, sleep=time.sleep):
        self.delay, self.sleep, self.requests = delay, sleep, 0

    def __call__(self):
        if self.requests and self.delay > 0:
            self.sleep(self.delay)
        self.requests += 1


class BookCleaner:
    """Header stripping, de-duplication across books and the period filter, one book at a time."""

    def __init__(self, before, terms_file=None):
        self.period = PeriodFilter(before, load_terms(terms_file), "paragraph")
        self.dedup = clean.Deduplicator()
        self.texts = {}  # digest of a kept book's text, whitespace collapsed -> its number

    def clean(self, entry, data):
        """Raw bytes of `entry`'s book -> the text to keep, or None; sets entry's status and reason."""
        text = clean.decode_bytes(data)
        if "\x00" in text:  # no text file holds a NUL; an archive or an image does
            return self._drop(entry, "not-text", "the download is not plain text (it holds NUL bytes)")
        text = gutenberg.strip_boilerplate(clean.normalize_text(text))
        if not text:
            return self._drop(entry, "empty", "nothing left once the Gutenberg header and licence are stripped")
        key = hashlib.blake2b(" ".join(text.split()).encode("utf-8"), digest_size=16).digest()
        if key in self.texts:
            return self._drop(entry, "duplicate", f"the same text as book {self.texts[key]}")
        self.texts[key] = entry.book.id
        paragraphs = clean.split_paragraphs(text)
        # (the new paragraphs of an edition dropped here stay remembered: a third book rarely shares them)
        unique, n_duplicate = self.dedup.unique_paragraphs(paragraphs)
        n_long = sum(len(p) >= self.dedup.min_chars for p in paragraphs)
        if n_duplicate > EDITION_SHARE * n_long:
            return self._drop(entry, "duplicate", f"another edition of an earlier book: {n_duplicate} of its "
                                                  f"{n_long} long paragraphs came before")
        kept = [p for p in unique if self.period.keep(p, book_file(entry.book.id))]
        entry.paragraphs = {"read": len(paragraphs), "duplicate": n_duplicate,
                            "period": len(unique) - len(kept), "kept": len(kept)}
        if not kept:
            return self._drop(entry, "period", f"the period filter rejected all {len(unique)} paragraphs")
        entry.status = "kept"
        entry.reason += f"; {len(kept)} of {len(paragraphs)} paragraphs left"
        return clean.join_paragraphs(kept)

    @staticmethod
    def _drop(entry, status, reason):
        entry.status, entry.reason = status, reason
        return None


def build_corpus(
    out_dir, rule, *, catalog=None, base_url=None, cache=None, delay=DEFAULT_DELAY_S, terms_file=None,
    sleep=time.sleep, log=print,
):
    """Select books from the catalog by `rule`, download and clean them, and write the corpus
    folder `out_dir` (pgID.txt files + manifest.json, see the module docstring) -> manifest.

    The folder is written beside `out_dir` and renamed into place at the end, so a run that is
    stopped leaves no half corpus; the books downloaded so far stay in the cache, and running
    the same command again asks the site only for the rest."""
    if rule.limit is not None and rule.limit < 1:
        raise UserError(f"--limit must be at least 1, not {rule.limit}")
    if not delay >= 0:
        raise UserError(f"--delay must be 0 or more seconds, not {delay}")
    pace = Pacer(delay, sleep)
    cleaner = BookCleaner(rule.before, terms_file)  # a bad terms file fails before any download
    try:
        with atomic_dir(out_dir, is_ours=is_corpus) as tmp:
            tmp.mkdir()
            where = catalog_file(catalog, base_url=base_url, cache=cache, before_request=pace, log=log)
            entries = select(read_catalog(where), rule)
            chosen = [entry for entry in entries if entry.status == "selected"]
            if not chosen:
                raise UserError(f"no book in the catalog passes the rules ({_counts_words(entries)}); "
                                "loosen --language, --subject or --before")
            for i, entry in enumerate(chosen, 1):
                _fetch_and_clean(entry, cleaner, tmp, cache=cache, base_url=base_url, pace=pace)
                log(f"[{i}/{len(chosen)}] {entry.book.id} {entry.book.title[:50]}: {entry.status} ({entry.reason})")
                _stop_if_unreachable(chosen[:i], cache)
            if not any(entry.status == "kept" for entry in entries):
                raise UserError(f"no book left to write ({_counts_words(chosen)}); nothing was written")
            manifest = _manifest(entries, rule, catalog_location(catalog, base_url), gutenberg.mirror_url(base_url),
                                 cleaner.period)
            _write_manifest(tmp / MANIFEST, manifest)
    except OSError as e:  # a full disk, a read-only folder
        raise UserError(f"cannot write the corpus {out_dir} ({e.strerror or e}); the downloaded books "
                        "stay in the cache") from None
    return manifest


def _fetch_and_clean(entry, cleaner, folder, *, cache, base_url, pace):
    """Download `entry`'s book (or find it in the cache), clean it and write what is kept."""
    try:
        path = gutenberg.download(entry.book.id, cache=cache, base_url=base_url, before_request=pace)
    except UserError as e:  # not found, an HTTP error, the network: this book only
        entry.status, entry.reason = "download", str(e)
        return
    try:
        data = path.read_bytes()
    except OSError as e:
        entry.status, entry.reason = "download", f"cannot read {path}: {e.strerror}"
        return
    text = cleaner.clean(entry, data)
    if text is not None:
        (folder / book_file(entry.book.id)).write_text(text + "\n", encoding="utf-8")


def _stop_if_unreachable(done, cache):
    """Stop the run when the last FAILURES_IN_A_ROW downloads all failed: the site is down."""
    last = done[-FAILURES_IN_A_ROW:]
    if len(last) == FAILURES_IN_A_ROW and all(entry.status == "download" for entry in last):
        raise UserError(
            f"stopped: the last {FAILURES_IN_A_ROW} downloads failed (last: {last[-1].reason}); the books "
            f"downloaded so far are kept in {gutenberg.cache_dir(cache)}; run the same command again to continue"
        )


def _counts_words(entries):
    return ", ".join(f"{n} {status}" for status, n in Counter(e.status for e in entries).most_common())


def is_corpus(folder):
    """Whether `folder` holds a corpus this program wrote (its manifest says so)."""
    try:
        manifest = read_json(Path(folder) / MANIFEST, "corpus manifest")
    except UserError:
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def _manifest(entries, rule, catalog, mirror, period):
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "catalog": catalog,
        "mirror": mirror,
        "rule": {"before": rule.before, "languages": list(rule.languages), "subjects": list(rule.subjects),
                 "limit": rule.limit, "in_words": rule.describe()},
        "counts": dict(Counter(e.status for e in entries).most_common()),
        "paragraphs_dropped_by_period": dict(period.counts),
        "books": [entry.to_json() for entry in entries],
    }


def _write_manifest(path, manifest):
    """Indented JSON with one line per book, so a manifest of the whole catalog (some 70,000
    rows) stays a file one can read and grep."""
    head = {k: v for k, v in manifest.items() if k != "books"}
    books = ",\n".join("    " + json.dumps(book, ensure_ascii=False) for book in manifest["books"])
    text = json.dumps(head, indent=2, ensure_ascii=False)[: -len("\n}")] + ',\n  "books": [\n' + books + "\n  ]\n}\n"
    path.write_text(text, encoding="utf-8")


def format_summary(manifest, out_dir):
    """The lines `vintage corpus` prints at the end."""
    counts = manifest["counts"]
    kept = [b for b in manifest["books"] if b["status"] == "kept"]
    paragraphs = sum(b["paragraphs"]["kept"] for b in kept)
    dropped = ", ".join(f"{n} {status}" for status, n in counts.items() if status != "kept")
    return [
        f"corpus {out_dir}: {len(kept)} books, {paragraphs:,} paragraphs kept",
        f"rule: {manifest['rule']['in_words']}",
        f"catalog rows: {sum(counts.values()):,}; dropped: {dropped or 'none'}",
        f"why each book was kept or dropped: {Path(out_dir) / MANIFEST}",
        f"next: vintage prepare --source {out_dir} --tokenizer bpe --out DATASET",
    ]
