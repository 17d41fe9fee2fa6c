"""Project Gutenberg plain-text books: strip the header and licence, and download by id.

Editions from different decades mark their boilerplate differently, so `strip_boilerplate`
looks for any of these (case-insensitive, at the start of a line):
  start of the book: "*** START OF THE/THIS PROJECT GUTENBERG EBOOK ... ***" (the marker may wrap
      onto a second line), or the old "*END*THE SMALL PRINT! ... *END*" that closed the legal
      header of 1990s etexts;
  end of the book:   "*** END OF THE/THIS PROJECT GUTENBERG EBOOK ...", "End of the Project
      Gutenberg EBook of ...", "End of Project Gutenberg's ...", or "*** START: FULL LICENSE ***".
After the start marker (or from the top of the file when there is none) the leading paragraphs
that are Gutenberg front matter (mentioning Project Gutenberg, gutenberg.org or an "etext", or
holding "Title:", "Author:", "Release Date:", "Produced by" ... fields) are dropped too; with no
end marker the text runs to the end of the file.

Downloads use urllib only, try the URL forms Project Gutenberg has served over the years,
and are cached on disk; nothing here runs unless a `gutenberg:ID` source is asked for.
"""
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from vintagelm.common import UserError, atomic_file, cache_root

DEFAULT_BASE_URL = "https://www.gutenberg.org"
# tried in order; {id} is the book number
URL_FORMS = ("/cache/epub/{id}/pg{id}.txt", "/files/{id}/{id}-0.txt", "/files/{id}/{id}.txt")
TIMEOUT_S = 30.0

_START = re.compile(
    r"^[ \t]*\*+[ \t]*START OF (?:THE |THIS )?PROJECT GUTENBERG\b.*$"
    r"|^.*\*END\*[ \t]*THE SMALL PRINT.*$",
    re.IGNORECASE | re.MULTILINE,
)
_END = re.compile(
    r"^[ \t]*\**[ \t]*END OF (?:THE |THIS )?PROJECT GUTENBERG"
    r"|^[ \t]*\*+[ \t]*START:? FULL LICENSE",
    re.IGNORECASE | re.MULTILINE,
)
_FRONT_MATTER_FIELD = re.compile(
    r"^(?:(?:Title|Author|Editor|Translator|Illustrator|Release Date|Posting Date|Last Updated"
    r"|Language|Character set encoding|Credits|Most recently updated)\s*:"
    r"|(?:Produced|Transcribed|E-?text prepared) by\b)",
    re.IGNORECASE | re.MULTILINE,
)
_FRONT_MATTER_WORDS = re.compile(r"project gutenberg|gutenberg\.org|\betext\b", re.IGNORECASE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def strip_boilerplate(text):
    """The book between Project Gutenberg's header and licence (see the module docstring).

    Expects text with `\\n` line ends (run it after `normalize_text`).
    """
    start = _START.search(text)
    if start:
        begin = start.end()
        # a long title can push the closing *** of the START marker onto the next line
        if not start.group(0).rstrip().endswith("***") and "*END*" not in start.group(0):
            after = text.find("\n", begin + 1)
            if after != -1 and text[begin + 1 : after].rstrip().endswith("***"):
                begin = after
        text = text[begin:]
    text = _drop_front_matter(text)
    end = _END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip("\n")


def _drop_front_matter(text):
    """Drop leading paragraphs that are Gutenberg's header or credits rather than the book."""
    paragraphs = _PARAGRAPH_BREAK.split(text.strip("\n"))
    skip = 0
    while skip < len(paragraphs) and (
        _FRONT_MATTER_WORDS.search(paragraphs[skip]) or _FRONT_MATTER_FIELD.search(paragraphs[skip])
    ):
        skip += 1
    return "\n\n".join(paragraphs[skip:])


def cache_dir(path=None):
    """Where downloaded books live: `path`, else $VINTAGELM_CACHE/gutenberg, else
    ~/.cache/vintagelm/gutenberg."""
    return Path(path) if path is not None else cache_root() / "gutenberg"


def mirror_url(base_url=None):
    """The site books come from: `base_url`, else $VINTAGELM_GUTENBERG_URL, else
    https://www.gutenberg.org (no trailing slash)."""
    return (base_url or os.environ.get("VINTAGELM_GUTENBERG_URL") or DEFAULT_BASE_URL).rstrip("/")


def download(book_id, *, cache=None, base_url=None, timeout=TIMEOUT_S, before_request=None):
    """Path of the raw text of Project Gutenberg book `book_id`, downloading it on first use.

    `mirror_url(base_url)` is tried with each of URL_FORMS in turn; the first answer that is
    plain text is written atomically to `cache_dir(cache)/pg{id}.txt`, and later calls read that
    file without touching the network. `before_request`, if given, is called before each request
    (the catalog downloader paces its requests with it).
    """
    book_id = int(book_id)
    target = cache_dir(cache) / f"pg{book_id}.txt"
    if target.is_file():
        return target
    base = mirror_url(base_url)
    tried = []
    for form in URL_FORMS:
        url = base + form.format(id=book_id)
        if before_request is not None:
            before_request()
        data = fetch(url, timeout)
        if data is None:
            tried.append(url)
            continue
        with atomic_file(target) as tmp:
            tmp.write_bytes(data)
        return target
    raise UserError(
        f"Project Gutenberg book {book_id} not found (tried {', '.join(tried)}); check the id "
        f"at https://www.gutenberg.org/ebooks/{book_id}"
    )


def fetch(url, timeout=TIMEOUT_S):
    """Body of `url`, or None when the server has no such file (404/410, or an HTML page in
    place of the text). Network failures are the user's to fix, so they raise UserError."""
    request = urllib.request.Request(url, headers={"User-Agent": "vintagelm"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read()
    except urllib.error.HTTPError as e:
        if e.code in (404, 410):
            return None
        raise UserError(f"downloading {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(
            f"cannot download {url} ({reason}); check your connection, or download the book "
            "yourself and pass it as gutenberg:FILE"
        ) from None
    if data.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        return None
    return data
