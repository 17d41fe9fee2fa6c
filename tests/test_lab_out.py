"""`vintage lab NAME --out DIR` writes only into a folder that is new, empty or its own earlier
page, checks that before the experiment runs, and replaces an earlier page only whole
(fuzz round 2: D1, C3, C9), through the rule every command can use: common.check_output_folder.

Where a refusal must come before any work, the experiment's run is replaced by one that fails
the test if it is called; where a page must be written, a small stand-in experiment draws one
figure, except for the real kv-cache --quick that makes the earlier page (a few seconds)."""
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from vintagelm import cli
from vintagelm.common import UserError, check_output_folder, temporary_prefix
from vintagelm.lab import gradients, kv_cache_savings


def hashes(folder):
    """name -> sha256 of every file under `folder` (hidden ones included)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def lab(argv, capsys):
    """vintage lab ARGV -> (exit code, stdout, stderr)."""
    code = cli.main(["lab", *argv, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def one_line_error(code, err):
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VINTAGELM_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def no_experiment(monkeypatch):
    """kv-cache and gradients fail the test if they start: a refusal must come first."""
    def ran(args, page):
        raise AssertionError("the experiment ran before --out was checked")

    monkeypatch.setattr(kv_cache_savings, "run", ran)
    monkeypatch.setattr(gradients, "run", ran)


@pytest.fixture
def small_experiment(monkeypatch):
    """kv-cache replaced by a small stand-in that saves a run folder (as gradients, lr-batch and
    data-quality do), draws one figure and records one number."""
    def run(args, page):
        (page.out_dir / "runs" / "a").mkdir(parents=True)
        (page.out_dir / "runs" / "a" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n', encoding="utf-8")
        _, ax = page.figure("line", "a line")
        ax.plot([0, 1], [1, 2])
        page.results["value"] = 1.5
        page.say("The line rose.")

    monkeypatch.setattr(kv_cache_savings, "run", run)


@pytest.fixture(scope="module")
def kv_page(tmp_path_factory):
    """A real `vintage lab kv-cache --quick` page, made once; tests work on copies of it."""
    out = tmp_path_factory.mktemp("kv") / "page"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VINTAGELM_CACHE", str(out.parent / "cache"))
        assert cli.main(["--threads", "1", "lab", "kv-cache", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture
def page_copy(kv_page, tmp_path):
    return Path(shutil.copytree(kv_page, tmp_path / "page"))


# ------------------------------------------------------------------------------- D1: the user's files
def test_a_folder_of_the_users_is_refused_and_kept(tmp_path, no_experiment, capsys):
    """D1: a homepage's index.html and results.json in --out are never replaced: one line that
    names the files, exit 2, and the folder exactly as it was, with no figure added."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my homepage</h1>\n", encoding="utf-8")
    (site / "results.json").write_text('{"mine": 1}\n', encoding="utf-8")
    (site / "notes.txt").write_text("keep\n", encoding="utf-8")
    before = hashes(site)
    err = one_line_error(*lab(["kv-cache", "--quick", "--out", str(site)], capsys)[::2])
    assert "index.html, notes.txt, results.json" in err and "did not write" in err
    assert hashes(site) == before


def test_a_file_added_to_a_page_folder_makes_it_the_users(page_copy, no_experiment, capsys):
    """D1: a lab page's folder with one more file in it is no longer the lab's to replace."""
    (page_copy / "my notes.txt").write_text("mine\n", encoding="utf-8")
    before = hashes(page_copy)
    err = one_line_error(*lab(["kv-cache", "--quick", "--out", str(page_copy)], capsys)[::2])
    assert "(my notes.txt)" in err
    assert hashes(page_copy) == before


def test_a_page_of_another_experiment_is_refused(page_copy, no_experiment, capsys):
    """D1: `vintage lab gradients` into kv-cache's folder would replace a page it did not write."""
    before = hashes(page_copy)
    err = one_line_error(*lab(["gradients", "--quick", "--out", str(page_copy)], capsys)[::2])
    assert "vintage lab kv-cache" in err
    assert hashes(page_copy) == before


def test_a_lab_reruns_into_its_own_earlier_folder(page_copy, capsys):
    """Re-running an experiment into its own page replaces the whole page: a file that the old
    page listed and the new one does not write is gone, and the new mark lists the folder."""
    results = json.loads((page_copy / "results.json").read_text(encoding="utf-8"))
    results["vintagelm_lab"]["files"].append("old_figure.png")
    (page_copy / "results.json").write_text(json.dumps(results), encoding="utf-8")
    (page_copy / "old_figure.png").write_bytes(b"an old figure")
    code, out, err = lab(["kv-cache", "--quick", "--out", str(page_copy)], capsys)
    assert code == 0, err
    assert out.splitlines()[-1].startswith(f"wrote {page_copy / 'index.html'}")
    mark = json.loads((page_copy / "results.json").read_text(encoding="utf-8"))["vintagelm_lab"]
    assert mark["experiment"] == "kv-cache"
    assert mark["files"] == sorted(os.listdir(page_copy)) == ["cache_bytes.png", "index.html", "results.json",
                                                             "time_per_token.png"]
    assert os.listdir(page_copy.parent) == ["page"]  # no staging folder left beside it


def test_a_page_with_run_folders_is_written_whole_and_rerun(tmp_path, small_experiment, capsys):
    """The run folders an experiment saves are part of its page: listed in the mark, and a
    rerun into the same folder is accepted."""
    out = tmp_path / "out"
    for _ in range(2):
        code, _, err = lab(["kv-cache", "--quick", "--out", str(out)], capsys)
        assert code == 0, err
    mark = json.loads((out / "results.json").read_text(encoding="utf-8"))["vintagelm_lab"]
    assert mark["files"] == sorted(os.listdir(out)) == ["index.html", "line.png", "results.json", "runs"]
    assert (out / "runs" / "a" / "metrics.jsonl").is_file()


# -------------------------------------------------------------------- C3: --out checked before any work
@pytest.mark.parametrize("where, expected", [("afile.txt", "is a file"), ("afile.txt/sub", "which is a file"),
                                             ("/proc/vintagelm-lab", "cannot create")])
def test_an_unusable_out_is_one_line_before_the_experiment(where, expected, tmp_path, no_experiment, capsys):
    """C3: a file, a folder under a file, a folder that cannot be made: one line, and the
    experiment never starts (it used to run to the end and then fail with a traceback)."""
    if where.startswith("/proc") and not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    (tmp_path / "afile.txt").write_text("a file of the user's\n", encoding="utf-8")
    out = where if where.startswith("/") else str(tmp_path / where)
    err = one_line_error(*lab(["kv-cache", "--quick", "--out", out], capsys)[::2])
    assert expected in err
    assert (tmp_path / "afile.txt").read_text(encoding="utf-8") == "a file of the user's\n"


def test_a_full_disk_fails_before_the_experiment(tmp_path, no_experiment, monkeypatch, capsys):
    """C3: the probe write in --out meets the full disk, so the experiment never starts."""
    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    err = one_line_error(*lab(["kv-cache", "--quick", "--out", str(tmp_path / "out")], capsys)[::2])
    assert "No space left on device" in err


@pytest.mark.parametrize("fails", ["index.html", "line.png", "experiment"])
def test_a_disk_filling_up_during_the_page_keeps_the_old_page(fails, page_copy, small_experiment, monkeypatch, capsys):
    """C3: the disk fills up while the experiment writes, or while the page is written (its
    figure, or index.html, the last file): one line "cannot write ...: No space left on device",
    and the earlier page is whole and unchanged, with nothing half-written beside it."""
    no_space = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    replace = os.replace

    def replace_on_a_full_disk(src, dst):
        if Path(dst).name == fails:
            raise no_space
        replace(src, dst)

    def experiment_on_a_full_disk(args, page):
        raise no_space

    monkeypatch.setattr(os, "replace", replace_on_a_full_disk)
    if fails == "experiment":
        monkeypatch.setattr(kv_cache_savings, "run", experiment_on_a_full_disk)
    before = hashes(page_copy)
    err = one_line_error(*lab(["kv-cache", "--quick", "--out", str(page_copy)], capsys)[::2])
    assert err.endswith(f"cannot write {page_copy}: No space left on device")
    assert hashes(page_copy) == before
    assert os.listdir(page_copy.parent) == ["page"]


def test_a_failed_experiment_leaves_no_folder(tmp_path, monkeypatch, capsys):
    """An experiment that stops with a UserError leaves neither --out nor a staging folder."""
    def fails(args, page):
        (page.out_dir / "runs").mkdir()
        raise UserError("every learning rate diverged")

    monkeypatch.setattr(kv_cache_savings, "run", fails)
    err = one_line_error(*lab(["kv-cache", "--quick", "--out", str(tmp_path / "lab" / "out")], capsys)[::2])
    assert err.endswith("every learning rate diverged")
    assert os.listdir(tmp_path / "lab") == []


# ---------------------------------------------------------------------------------------- C9: --seed
def test_a_negative_seed_is_an_argument_error(tmp_path, no_experiment, capsys):
    """C9: --seed -1 is refused by argparse, as in the other commands, not by a NumPy traceback."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["lab", "kv-cache", "--quick", "--seed", "-1", "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "argument --seed: must be an integer >= 0" in capsys.readouterr().err


# ---------------------------------------------------------------------- the rule: check_output_folder
def test_check_output_folder_names_three_of_the_users_files(tmp_path):
    for name in ("a", "b", "c", "d", "e"):
        (tmp_path / name).write_text(name, encoding="utf-8")
    with pytest.raises(UserError, match=r"\(a, b, c and 1 more\)"):
        check_output_folder(tmp_path, lambda folder: ("e",))


def test_check_output_folder_accepts_our_files_and_their_temporaries_and_never_a_link(tmp_path):
    """A killed atomic write leaves .NAME.PID.XXXX.tmp: ours when NAME is. A link, even named
    like one of our files, is never ours (we make none; writing through it would reach a
    file of the user's)."""
    (tmp_path / "ours.json").write_text("{}", encoding="utf-8")
    (tmp_path / f"{temporary_prefix(tmp_path / 'ours.json')}abcd1234.tmp").write_text("", encoding="utf-8")
    assert check_output_folder(tmp_path, lambda folder: ("ours.json",)) == tmp_path.resolve()
    (tmp_path / "theirs.txt").write_text("mine\n", encoding="utf-8")
    (tmp_path / "also.json").symlink_to(tmp_path / "theirs.txt")
    with pytest.raises(UserError, match=r"\(also.json, theirs.txt\)"):
        check_output_folder(tmp_path, lambda folder: ("ours.json", "also.json"))


def test_check_output_folder_creates_a_new_folder_and_follows_a_link_to_one(tmp_path):
    new = tmp_path / "a" / "b"
    assert check_output_folder(new, lambda folder: ()) == new.resolve() and new.is_dir()
    (tmp_path / "link").symlink_to(new)
    assert check_output_folder(tmp_path / "link", lambda folder: ()) == new.resolve()
    assert os.listdir(new) == []  # the probe file is gone


def test_check_output_folder_puts_back_a_folder_whose_replacement_was_killed(tmp_path):
    """A kill between atomic_dir's two renames leaves the old folder in the hidden nest: it is
    put back before the check, not shadowed by a new empty folder."""
    nest = tmp_path / f"{temporary_prefix(tmp_path / 'page')}abcd1234.tmp"
    (nest / ".old").mkdir(parents=True)
    (nest / ".old" / "ours.txt").write_text("old page\n", encoding="utf-8")
    folder = check_output_folder(tmp_path / "page", lambda folder: ("ours.txt",))
    assert (folder / "ours.txt").read_text(encoding="utf-8") == "old page\n" and not nest.exists()
