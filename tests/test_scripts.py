"""scripts/test, the README's test command, run for real on stand-ins: a copy of the script in
an empty folder, with fakes of dpkg-query, id, apt-get and python3 (which makes a .venv whose
pip and python only write down how they were called) first and only on PATH. Nothing is
installed and no virtual environment is made; what the script asked for is compared with
what a fresh Debian machine needs.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("bash", "dirname", "mkdir", "chmod")  # the real programs the script and the fakes use

FAKES = {  # (BASH: the path of bash)
    # installed unless named in FAKE_MISSING; prints what `dpkg-query -W -f='${Status}' PKG` does
    "dpkg-query": 'for a; do package=$a; done\n'
                  'case " $FAKE_MISSING " in *" $package "*) exit 1;; esac\n'
                  'printf "install ok installed"\n',
    "id": 'echo "$FAKE_UID"\n',
    "apt-get": 'echo "DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-} apt-get $*" >> "$FAKE_LOG"\nexit "${FAKE_APT_STATUS:-0}"\n',
    "python3": 'echo "python3 $*" >> "$FAKE_LOG"\n'
               'mkdir -p .venv/bin\n'
               'printf \'#!BASH\\necho "pip $*" >> "$FAKE_LOG"\\n\' > .venv/bin/pip\n'
               'printf \'#!BASH\\necho "python $*" >> "$FAKE_LOG"\\nexit "$FAKE_PYTEST_STATUS"\\n\' > .venv/bin/python\n'
               'chmod +x .venv/bin/pip .venv/bin/python\n',
}


@pytest.fixture
def machine(tmp_path):
    """-> run(*args, missing="", uid=1000, pytest_status=0, apt_status=0, dpkg=True) -> (status,
    stderr, log lines): scripts/test, copied into an empty folder, on the fakes."""
    bash = shutil.which("bash")
    (tmp_path / "repo" / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "test", tmp_path / "repo" / "scripts" / "test")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f"#!{bash}\n" + body.replace("BASH", bash))
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "log"

    def run(*args, missing="", uid=1000, pytest_status=0, apt_status=0, dpkg=True):
        if not dpkg:
            (bin_dir / "dpkg-query").unlink(missing_ok=True)
        env = {"PATH": str(bin_dir), "FAKE_MISSING": missing, "FAKE_UID": str(uid), "FAKE_LOG": str(log),
               "FAKE_PYTEST_STATUS": str(pytest_status), "FAKE_APT_STATUS": str(apt_status)}
        done = subprocess.run([tmp_path / "repo" / "scripts" / "test", *args], env=env, capture_output=True,
                              text=True, timeout=60)
        return done.returncode, done.stderr, log.read_text().splitlines() if log.exists() else []

    run.repo = tmp_path / "repo"
    return run


def test_a_missing_package_stops_a_user_who_is_not_root_with_the_command_to_run(machine):
    status, err, log = machine(missing="chromium")  # what tests/test_browser.py drives
    assert status == 1 and log == [] and not (machine.repo / ".venv").exists()
    assert err.count("\n") == 1 and err.rstrip().endswith(": sudo apt-get install -y chromium"), err


def test_as_root_the_missing_packages_are_installed_then_the_tests_run(machine):
    status, err, log = machine("-x", "-k", "two words", missing="chromium openmpi-bin", uid=0)
    assert status == 0, err
    assert log == ["DEBIAN_FRONTEND= apt-get update -qq",
                   "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium openmpi-bin",
                   "python3 -m venv .venv",
                   "pip install -q -e .[test]",
                   "python -m pytest -q -x -k two words"]


def test_a_failed_apt_get_stops_the_script(machine):
    status, _, log = machine(missing="chromium", uid=0, apt_status=100)
    assert status == 100 and not any(line.startswith("python") for line in log)


@pytest.mark.parametrize("pytest_status, status", [(0, 0), (1, 1), (2, 2), (5, 1)])
def test_the_status_is_pytests_and_no_tests_collected_is_a_failure(machine, pytest_status, status):
    got, err, log = machine(pytest_status=pytest_status)
    assert got == status and not any("apt-get" in line for line in log)
    assert ("collected no tests" in err) == (pytest_status == 5), err


def test_a_venv_already_there_is_reused_and_brought_up_to_date(machine):
    machine()
    _, _, log = machine()
    assert log.count("python3 -m venv .venv") == 1 and log.count("pip install -q -e .[test]") == 2


def test_without_dpkg_query_it_names_the_packages_and_goes_on(machine):
    status, err, log = machine(dpkg=False)
    assert status == 0 and log[-1] == "python -m pytest -q"
    assert err.count("\n") == 1 and "chromium" in err and "openmpi-bin" in err, err


def test_ci_runs_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The two commands"):]
    command = re.search(r"Run the tests.*?```bash\n(.*?)\n```", section, re.S).group(1)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci
