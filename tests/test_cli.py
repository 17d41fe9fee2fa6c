"""`vintage --help` lists every command without importing the model, NumPy or the training
loop: each command module imports what it needs inside its `run`, so asking for help (or a
typo in a flag) answers at once.

    pytest tests/test_cli.py -q
"""
import json
import subprocess
import sys

from vintagelm.cli import COMMANDS

# runs in a fresh interpreter: this test process has long imported everything
HELP_THEN_MODULES = """
import contextlib, io, json, sys
from vintagelm.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(["--help"])
    except SystemExit as e:
        code = e.code
print(json.dumps({"code": code, "help": out.getvalue(), "modules": sorted(sys.modules)}))
"""
HEAVY = ("numpy", "vintagelm.model", "vintagelm.train", "vintagelm.nn", "vintagelm.fast")


def test_help_lists_every_command_and_imports_nothing_heavy():
    done = subprocess.run([sys.executable, "-c", HELP_THEN_MODULES], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    assert result["code"] == 0
    assert all(name in result["help"] for name in COMMANDS)
    heavy = [h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in result["modules"])]
    assert heavy == [], f"vintage --help imported {heavy}"


def test_python_m_vintagelm_is_the_vintage_program():
    done = subprocess.run([sys.executable, "-m", "vintagelm", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("usage: vintage")
