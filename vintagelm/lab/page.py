"""One lab page: the folder an experiment writes, with its figures, its numbers and its reading.

    page = LabPage(out_dir, "attention-cost", "Why attention is expensive")
    fig, ax = page.figure("memory", "Peak memory vs context length")   # -> memory.png
    ...draw on ax...
    page.results["naive"] = {...}                                          # -> results.json
    page.table(["T", "naive MiB"], rows)                                   # shown in index.html
    page.say(f"Naive attention's memory grows as T^{a:.2f} ...")            # a sentence of the reading
    page.write()

`vintage lab` checks its --out before the experiment starts (check_out) and runs the experiment
inside page.staged(folder): everything (figures, results.json, index.html, runs/) is written into a
private folder beside --out, which replaces --out in one swap when the page is complete. A failed
experiment, a kill or a full disk leaves an earlier page whole. results.json carries a mark (MARK:
the experiment and every file the page wrote), by which a later run knows the folder is its own to
replace; a folder holding anything else is the user's and is refused.

index.html is self-contained: the PNGs are inlined as data: URLs and nothing is fetched, so it
opens from disk, in any browser, with no server and no network. Every number in results.json
must be finite (a NaN is a failed measurement, never a result), except where the experiment
records a divergence explicitly as null.
"""
import base64
import html
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

from vintagelm.common import (UserError, atomic_dir, atomic_file, check_output_folder, foreign_files,
                              probe_writable, write_json_atomic)
from vintagelm.plots import pyplot

MARK = "vintagelm_lab"  # results.json key: {"version", "experiment", "files"}: a lab page wrote this folder
VERSION = 1


class LabPage:
    def __init__(self, out_dir, name, title):
        self.out_dir, self.name, self.title = Path(out_dir), name, title
        self.results = {"experiment": name, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.figures = []  # (file name, caption)
        self.tables = []  # (caption, header, rows)
        self.sentences = []
        self._figs = {}

    def figure(self, name, caption, ncols=1, size=(6.4, 4.0)):
        """A new matplotlib figure saved as NAME.png by write() -> (fig, axes)."""
        plt = pyplot()
        fig, axes = plt.subplots(1, ncols, figsize=(size[0] * ncols, size[1]), squeeze=True)
        self._figs[name] = fig
        self.figures.append((f"{name}.png", caption))
        return fig, axes

    def table(self, caption, header, rows):
        self.tables.append((caption, list(header), [list(r) for r in rows]))

    def say(self, sentence):
        self.sentences.append(sentence)

    @contextmanager
    def staged(self, folder):
        """Run the body (the experiment, then write()) with this page writing into a private
        folder beside `folder`, which replaces `folder` when the body succeeds (common.atomic_dir).
        `folder` must have passed check_out."""
        with atomic_dir(folder, is_ours=lambda f: not foreign_files(f, own_files(self.name, folder))) as tmp:
            tmp.mkdir()
            self.out_dir = tmp
            yield
        self.out_dir = Path(folder)

    def write(self):
        """Save every figure, results.json (with the MARK) and index.html -> the index.html path."""
        plt = pyplot()
        check_finite(self.results)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, fig in self._figs.items():
            fig.tight_layout()
            with atomic_file(self.out_dir / f"{name}.png") as tmp:
                fig.savefig(tmp, dpi=100, format="png")
            plt.close(fig)
        self._figs.clear()
        self.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        # every file in the folder is this page's: staged() gives the experiment a private one
        files = {p.name for p in self.out_dir.iterdir()} | {"results.json", "index.html"}
        self.results[MARK] = {"version": VERSION, "experiment": self.name, "files": sorted(files)}
        write_json_atomic(self.out_dir / "results.json", self.results)
        index = self.out_dir / "index.html"
        with atomic_file(index) as tmp:
            tmp.write_text(self.html(), encoding="utf-8")
        return index

    def html(self):
        parts = [f"<h1>{esc(self.title)}</h1>", f'<p class="meta">vintage lab {esc(self.name)} · '
                 f'{esc(self.results.get("machine", ""))} · {esc(self.results["started"])}</p>']
        if self.sentences:
            parts.append("<h2>What the numbers say</h2>")
            parts += [f"<p>{esc(s)}</p>" for s in self.sentences]
        for caption, header, rows in self.tables:
            parts.append(table_html(caption, header, rows))
        for file, caption in self.figures:
            parts.append(figure_tag((self.out_dir / file).read_bytes(), caption))
        parts.append('<p class="meta">Every number on this page is in results.json beside it.</p>')
        return page_html(self.title, "\n".join(parts))


STYLE = """body{font-family:Georgia,'Times New Roman',serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
background:#f7f2e7;color:#2b2418;line-height:1.5}h1{font-weight:normal;margin-bottom:0}
.meta{color:#7a6a50;font-size:.9rem}table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
th,td{border-bottom:1px solid #d8ccb4;padding:.25rem .6rem;text-align:right}th{background:#ede3cf}
td:first-child,th:first-child{text-align:left}caption{text-align:left;font-style:italic;padding:.3rem 0}
figure{margin:1.5rem 0}img{max-width:100%;border:1px solid #d8ccb4;background:white}
figcaption{font-style:italic;color:#5a4c36}pre{white-space:pre-wrap;background:#fffaf0;padding:.5rem;
border:1px solid #e3d8c2}"""


def page_html(title, body):
    """A whole self-contained HTML document (no scripts, no external resources)."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def figure_tag(png, caption):
    """A PNG's bytes as an inlined <figure>: the page needs no file beside it and no network."""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def table_html(caption, header, rows):
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(cell_text(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><caption>{esc(caption)}</caption><tr>{head}</tr>{body}</table>"


def cell_text(value):
    if isinstance(value, float):
        return "—" if not math.isfinite(value) else f"{value:.4g}"
    return "—" if value is None else str(value)


def esc(text):
    return html.escape(str(text), quote=True)


def check_finite(value, where="results"):
    """Every float in a JSON-able structure is finite (None stands for 'did not happen')."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}: a measurement failed")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, f"{where}[{i}]")


def check_out(out, name):
    """`vintage lab NAME --out OUT`, checked before the experiment runs -> the folder to stage.

    OUT may be new, empty, or a page of the same experiment (its results.json's MARK lists every
    file in it); anything else is refused in one line. The staged folder is made beside OUT and
    swapped in by renames, so the folder above OUT must be writable and OUT not a mount point."""
    missing = not os.path.lexists(out)
    folder = check_output_folder(out, own_files(name, out))
    if folder.is_mount():
        raise UserError(f"--out {out} is a mount point; give a folder inside it (the lab swaps in a new folder)")
    probe_writable(folder.parent, f"the folder above --out {out} (the page is made there, then moved in)")
    if missing:
        folder.rmdir()  # the staged page becomes it: a failed experiment leaves no empty folder behind
    return folder


def own_files(name, out):
    """ours() for check_output_folder: the names a page of experiment `name` wrote in a folder,
    as its MARK lists them (none for a folder no page marked); a page of another experiment is
    refused rather than replaced."""
    def ours(folder):
        mark = page_mark(folder)
        if mark is None:
            return ()
        if mark["experiment"] != name:
            raise UserError(f"--out {out} holds the page of `vintage lab {mark['experiment']}`; choose another folder")
        return mark["files"]

    return ours


def page_mark(folder):
    """The MARK of folder/results.json when a lab page wrote it, else None (no such file, a link,
    not JSON, no mark, another version)."""
    file = Path(folder) / "results.json"
    if file.is_symlink() or not file.is_file():
        return None
    try:
        mark = json.loads(file.read_text(encoding="utf-8")).get(MARK)
    except (OSError, ValueError, RecursionError, AttributeError):  # AttributeError: not a JSON object
        return None
    valid = (isinstance(mark, dict) and mark.get("version") == VERSION and isinstance(mark.get("experiment"), str)
             and isinstance(mark.get("files"), list) and all(isinstance(f, str) for f in mark["files"]))
    return mark if valid else None


def load_results(out_dir):
    file = Path(out_dir) / "results.json"
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {file}: {e}") from None
