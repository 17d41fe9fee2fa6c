"""Shared pytest plumbing: the `parity` fixture that compares arrays tensor by tensor.

A parity test calls `parity.check(name, ours, ref, rtol=..., atol=...)` for every tensor, then
`parity.assert_ok()` once, so a failure lists every tensor with its error, not just the first.
The errors are kept for the end of the run:
    pytest tests -v                    per test function and kind (loss, logits, other tensors):
                                       the largest error seen over all its cases
    pytest tests --parity-report       the same plus every tensor of every test
"""
import numpy as np
import pytest

from verse import verse

_RECORDS = []  # (test node id, [Row, ...]) for every test that used the fixture


def pytest_addoption(parser):
    parser.addoption(
        "--parity-report",
        action="store_true",
        help="print the max error of every tensor compared by the parity tests",
    )


class Row:
    """One comparison: err = max|ours - ref|, scale = max|ref|, allowed = atol + rtol * scale."""

    def __init__(self, name, err, scale, rtol, atol, note=""):
        self.name, self.err, self.scale, self.rtol, self.atol, self.note = name, err, scale, rtol, atol, note
        self.allowed = atol + rtol * scale
        self.ok = note == "" and err <= self.allowed

    @property
    def rel(self):
        """err / scale (inf when the reference is all zero and ours is not)."""
        return _ratio(self.err, self.scale)

    @property
    def budget(self):
        """err / allowed: the fraction of the tolerance used; above 1 fails."""
        return _ratio(self.err, self.allowed)

    def tolerance(self):
        parts = ([f"rtol {self.rtol:.0e}"] if self.rtol else []) + ([f"atol {self.atol:.0e}"] if self.atol else [])
        return ", ".join(parts) or "exact"

    def __str__(self):
        flag = "ok  " if self.ok else "FAIL"
        text = (f"{flag} {self.name:<34} max|diff| {self.err:.3e}  max|ref| {self.scale:.3e}  "
                f"rel {self.rel:.2e}  ({self.tolerance()})")
        return text + (f"  {self.note}" if self.note else "")


def _ratio(a, b):
    if b == 0:
        return 0.0 if a == 0 else float("inf")
    return a / b


class Parity:
    def __init__(self, nodeid):
        self.nodeid = nodeid
        self.rows = []
        _RECORDS.append((nodeid, self.rows))

    def check(self, name, ours, ref, rtol=0.0, atol=0.0):
        """Compare `ours` with the reference `ref` (arrays or scalars); record and return the Row.

        Passes when max|ours - ref| <= atol + rtol * max|ref|. Measuring against the largest
        reference magnitude of the tensor means near-zero entries of a gradient do not demand
        impossible relative accuracy; for a scalar it is plain relative error."""
        ours = np.asarray(ours, dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        scale = float(np.max(np.abs(ref), initial=0.0))
        if ours.shape != ref.shape:
            note = f"shape {ours.shape} != reference {ref.shape}"
            return self.record(name, float("inf"), scale, rtol, atol, note=note)
        if not np.all(np.isfinite(ours)):
            return self.record(name, float("inf"), scale, rtol, atol, note="non-finite values")
        return self.record(name, float(np.max(np.abs(ours - ref), initial=0.0)), scale, rtol, atol)

    def record(self, name, err, scale, rtol=0.0, atol=0.0, note=""):
        """Record an error measured elsewhere (e.g. the max over the steps of a trajectory)."""
        row = Row(name, err, scale, rtol, atol, note)
        self.rows.append(row)
        return row

    def assert_ok(self):
        assert self.rows, "nothing was compared"
        if not all(r.ok for r in self.rows):
            bad = [r.name for r in self.rows if not r.ok]
            table = "\n".join(str(r) for r in self.rows)
            pytest.fail(f"{len(bad)} tensor(s) out of tolerance: {', '.join(bad)}\n{table}", pytrace=False)


@pytest.fixture
def parity(request):
    return Parity(request.node.nodeid)


def _kind(row):
    """loss / logits / everything else (gradients, parameters), for the summary table."""
    first = row.name.split()[0]
    return first if first in ("loss", "logits") else "tensors"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    records = [(nodeid, rows) for nodeid, rows in _RECORDS if rows]
    full = config.getoption("--parity-report")
    if not records or not (full or config.getoption("verbose") > 0):
        return
    write = terminalreporter.write_line
    if full:
        terminalreporter.section("parity: every tensor of every test")
        for nodeid, rows in records:
            write(nodeid.split("::", 1)[-1])
            for row in rows:
                write(f"    {row}")
    # one line per test function (all its parametrized cases) and kind of tensor: the max seen
    worst = {}
    for nodeid, rows in records:
        func = nodeid.split("::", 1)[-1].split("[")[0]
        for row in rows:
            key = (nodeid.split("::")[0], func, _kind(row))
            if key not in worst or row.budget > worst[key][1].budget:
                worst[key] = (nodeid.split("::", 1)[-1], row)
    terminalreporter.section("parity: max error seen per test (abs = max|diff|, rel = abs / max|ref|)")
    for (_, func, kind), (case, row) in worst.items():
        write(f"{func:<46} {kind:<7} abs {row.err:.2e}  rel {row.rel:.2e}  ({row.tolerance()})"
              f"  worst: {case} {row.name}")


@pytest.fixture(params=["reference", "fast"])
def backend(request):
    """Run a test on both backends (vintagelm/backend.py): they must give the same results."""
    return request.param


@pytest.fixture
def workdir(tmp_path, monkeypatch, request):
    """A scratch folder holding verse.txt (the module's VERSE_LINES lines, default 300), made the
    working directory, with its own dataset cache: for tests that run `vintage` commands."""
    (tmp_path / "verse.txt").write_text(verse(getattr(request.module, "VERSE_LINES", 300)))
    monkeypatch.setenv("VINTAGELM_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path
