"""docs/tour.md must stay true: its code runs, its printed output is what it shows, its links point
at code that exists.

test_tour_runs        every ```python block, in order, in ONE namespace (as a reader pasting them
                      into one interpreter would), in a temporary working directory, with the
                      network shut and one BLAS thread; a ```text block right after a python block is that block's
                      expected output, compared line by line. Tracebacks name docs/tour.md and
                      its line numbers.
test_tour_links       every relative link resolves to a file or folder of the checkout, and every
                      `name` or `Class.name` in a link's backticks is a def or class of the
                      linked file (found with ast, so a comment or a string does not count).
"""
import ast
import contextlib
import io
import re
import socket
from pathlib import Path

import pytest
import threadpoolctl

ROOT = Path(__file__).resolve().parent.parent
TOUR = ROOT / "docs" / "tour.md"

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
NAME = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?:\(\))?`")


def fenced_blocks(text):
    """[(language, code, first line of the code (1-based), start and end offsets of the block)]."""
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start(2)) + 1, m.start(), m.end())
            for m in FENCE.finditer(text)]


def python_blocks(text):
    """[(code, first line, expected output or None)] for every ```python block, in order."""
    blocks = fenced_blocks(text)
    out = []
    for i, (lang, code, line, _, end) in enumerate(blocks):
        if lang != "python":
            continue
        expected = None
        if i + 1 < len(blocks):
            next_lang, next_code, _, next_start, _ = blocks[i + 1]
            if next_lang == "text" and text[end:next_start].strip() == "":
                expected = next_code
        out.append((code, line, expected))
    return out


def _lines(s):
    return [line.rstrip() for line in s.rstrip().splitlines()]


def test_tour_runs(tmp_path, monkeypatch):
    text = TOUR.read_text(encoding="utf-8")
    # a block fenced ```py or ```Python would silently never run
    odd = sorted({lang for lang, *_ in fenced_blocks(text) if lang.lower().startswith("py") and lang != "python"})
    assert not odd, f"docs/tour.md has code fenced as {odd}; fence runnable code as ```python"
    blocks = python_blocks(text)
    assert len(blocks) >= 10, "the tour lost its code blocks"

    def no_network(*args, **kwargs):
        raise AssertionError("the tour must not use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.chdir(tmp_path)
    # One BLAS thread: the tour's matrices are tiny, and on a busy machine BLAS threads waiting
    # for each other made section 11's training loop 15 times slower (20 s instead of 1.3 s).
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        run_blocks(blocks)


def run_blocks(blocks):
    """exec the tour's python blocks in order in one namespace, comparing printed output."""
    namespace = {"__name__": "__tour__"}
    for code, line, expected in blocks:
        # leading newlines make the line numbers of a traceback those of docs/tour.md
        compiled = compile("\n" * (line - 1) + code, str(TOUR), "exec")
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            exec(compiled, namespace)
        if expected is not None:
            assert _lines(captured.getvalue()) == _lines(expected), (
                f"the block at docs/tour.md line {line} printed\n{captured.getvalue()}\n"
                f"but the tour shows\n{expected}"
            )


def _defined(tree, dotted):
    """Whether `a` (any def or class) or `A.b` (def or class b in the body of class A) is in tree."""
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    first, *rest = dotted.split(".")
    for node in ast.walk(tree):
        if isinstance(node, defs) and node.name == first:
            scope = node
            for part in rest:
                scope = next((n for n in getattr(scope, "body", []) if isinstance(n, defs) and n.name == part), None)
                if scope is None:
                    break
            else:
                return True
    return False


def test_tour_links():
    text = TOUR.read_text(encoding="utf-8")
    links = [(label, target) for label, target in LINK.findall(text)
             if not re.match(r"[a-z]+:", target) and not target.startswith("#")]
    assert len(links) >= 20, "the tour lost its links into the code"
    problems, names_checked = [], 0
    for label, target in links:
        path = (TOUR.parent / target.split("#")[0]).resolve()
        if not path.exists():
            problems.append(f"[{label}]({target}): {path} does not exist")
            continue
        names = [n for n in NAME.findall(label) if not n.endswith((".py", ".md"))]
        if not names:
            continue
        if path.suffix != ".py":
            problems.append(f"[{label}]({target}): names {names} but links to {path.name}, not a Python file")
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name in names:
            names_checked += 1
            if not _defined(tree, name):
                problems.append(f"[{label}]({target}): no def or class {name} in {path.relative_to(ROOT)}")
    assert not problems, "\n".join(problems)
    assert names_checked >= 20


@pytest.mark.parametrize("source, name, ok", [
    ("def f(): pass", "f", True),
    ("class A:\n    def f(self): pass", "A.f", True),
    ("class A: pass\ndef f(): pass", "A.f", False),  # f exists, but not in A
    ("x = 1  # def f", "f", False),
    ("s = 'def f(): pass'", "f", False),
])
def test_defined_finds_only_real_definitions(source, name, ok):
    assert _defined(ast.parse(source), name) is ok
