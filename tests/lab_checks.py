"""What the lab tests share: every number of a results.json, with where it sits."""


def numbers(value, where="results"):
    """Every (place, number) in a JSON structure, None included."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from numbers(v, f"{where}[{i}]")
    elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        yield where, value


def run_page(name, tmp_path_factory, *flags):
    """`vintage lab NAME --quick FLAGS` into a fresh folder, with a cache of its own ->
    (folder, results, the sentences it printed)."""
    import contextlib
    import io
    import json

    import pytest

    from vintagelm import cli

    out = tmp_path_factory.mktemp(name) / "out"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("VINTAGELM_CACHE", str(tmp_path_factory.mktemp("cache")))
        # one BLAS thread: the models are small, and on a busy 2-core machine more threads wait on each other
        assert cli.main(["--threads", "1", "lab", name, "--quick", *flags, "--out", str(out), "--no-progress"]) == 0
    sentences = [line for line in printed.getvalue().splitlines() if line and not line.startswith("wrote ")]
    return out, json.loads((out / "results.json").read_text(encoding="utf-8")), sentences
