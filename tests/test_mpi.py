"""Data-parallel training over MPI (dist.py), run for real with `mpirun -n 2`: 2 ranks train the
same model as 1 process, with ZeRO-1 on and off; resume moves between 1 and 2 ranks; a rank
killed mid-run ends the job with the last checkpoint intact.

Needs Open MPI's mpirun and mpi4py (`.ci/run` installs Debian's openmpi-bin and the [test]
extra's mpi4py). Without them these tests fail and say what to install: they are never skipped.

    pytest tests/test_mpi.py -q
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vintagelm.checkpoint import find_latest, load_checkpoint
from vintagelm.dist import parameter_owners

MODEL = ["--set", "n_layer=2", "--set", "n_embd=32", "--set", "n_head=2", "--set", "block_size=32",
         "--set", "dropout=0.1", "--set", "sample_tokens=0", "--set", "eval_interval=5", "--set", "eval_iters=2",
         "--set", "checkpoint_interval=10", "--set", "lr_decay_iters=20", "--set", "warmup_iters=3",
         "--batch-size", "8", "--no-progress"]


def mpirun(n):
    launcher = shutil.which("mpirun")
    if launcher is None:
        pytest.fail("mpirun not found: install Open MPI (Debian: apt-get install openmpi-bin libopenmpi-dev)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.fail("mpi4py is not installed: pip install -e '.[test]' (or '.[mpi]')")
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []  # containers and CI run as root
    return [launcher, *root, "--oversubscribe", "-n", str(n)]


VERSE_LINES = 400  # verse.txt for the shared workdir fixture (conftest.py)


def train(ranks, out, *extra, timeout=120):
    """`vintage train` on 1 process (ranks=0: no mpirun at all) or under mpirun -n ranks."""
    command = [sys.executable, "-m", "vintagelm", "--threads", "1", "train", "--data", "verse.txt", "--out", out,
               *MODEL, *extra]
    done = subprocess.run((mpirun(ranks) if ranks else []) + command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows]), [r.get("val_loss") for r in rows]


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-9), ("float32", 1e-5)])
@pytest.mark.parametrize("zero", [0, 1])
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_ranks_train_the_model_one_process_trains(workdir, dtype, rtol, zero, optimizer):
    train(0, "one", "--max-iters", "20", "--dtype", dtype, "--set", f"optimizer={optimizer}")
    done = train(2, "two", "--max-iters", "20", "--dtype", dtype, "--set", f"zero={zero}", "--set",
                 f"optimizer={optimizer}")
    assert done.stdout.count("done: step 20") == 1  # rank 0 alone speaks
    one, two = losses(workdir / "one"), losses(workdir / "two")
    assert len(one[0]) == len(two[0]) == 20
    np.testing.assert_allclose(two[0], one[0], rtol=rtol)
    np.testing.assert_allclose([v for v in two[1] if v], [v for v in one[1] if v], rtol=rtol)
    a = load_checkpoint(workdir / "one", dtype=dtype)
    b = load_checkpoint(workdir / "two", dtype=dtype)
    np.testing.assert_allclose(b.model.flat_params, a.model.flat_params, rtol=0, atol=100 * rtol)
    assert set(b.optimizer_state) == set(a.optimizer_state)
    for k, v in a.optimizer_state.items():  # the gathered ZeRO state is the one-process optimizer's
        np.testing.assert_allclose(b.optimizer_state[k], v, rtol=0, atol=100 * rtol * max(1.0, np.abs(v).max()))


@pytest.mark.parametrize("first,second", [(2, 0), (0, 2)])
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_moves_between_one_and_two_ranks(workdir, first, second, optimizer):
    train(0, "straight", "--max-iters", "20", "--dtype", "float64", "--set", f"optimizer={optimizer}")
    train(first, "moved", "--max-iters", "10", "--dtype", "float64", "--set", "zero=1", "--set",
          f"optimizer={optimizer}")
    train(second, "moved", "--resume", "--max-iters", "20", *(["--set", "zero=1"] if second else []))
    straight, moved = losses(workdir / "straight"), losses(workdir / "moved")
    np.testing.assert_allclose(moved[0], straight[0], rtol=1e-9)


def test_zero_muon_splits_the_optimizer_state_about_evenly_by_whole_parameters():
    """Each parameter has one owner, and no rank holds more than its fair share plus one parameter."""
    shapes = {"wte.weight": (65, 128), "h.0.attn.c_attn.weight": (128, 256), "h.0.mlp.c_fc.weight": (128, 344),
              "h.0.mlp.c_proj.weight": (344, 128), "h.0.ln_1.weight": (128,), "ln_f.weight": (128,),
              "h.1.attn.c_attn.weight": (128, 256), "h.1.mlp.c_fc.weight": (128, 344)}
    sizes = {k: int(np.prod(v)) for k, v in shapes.items()}
    for n in (1, 2, 3, 5):
        owners = parameter_owners(shapes, n)
        assert set(owners) == set(shapes) and set(owners.values()) <= set(range(n))
        load = [sum(sizes[k] for k in shapes if owners[k] == r) for r in range(n)]
        assert max(load) <= sum(sizes.values()) / n + max(sizes.values())
        assert owners == parameter_owners(dict(reversed(shapes.items())), n)  # the same on every rank


def test_a_killed_rank_ends_the_job_with_the_last_checkpoint_intact(workdir):
    command = mpirun(2) + [sys.executable, "-m", "vintagelm", "--threads", "1", "train", "--data", "verse.txt",
                           "--out", "long", *MODEL, "--max-iters", "100000", "--set", "checkpoint_interval=20"]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while find_latest(workdir / "long") is None:  # wait for a first checkpoint
            assert time.monotonic() < deadline and job.poll() is None, "no checkpoint appeared"
            time.sleep(0.2)
        ranks = subprocess.run(["pgrep", "-f", "-s", str(os.getpgid(job.pid)), "vintagelm --threads 1 train"],
                               capture_output=True, text=True).stdout.split()
        victim = max(int(p) for p in ranks)  # one rank (the later-started), not mpirun
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        code = job.wait(timeout=60)
        assert time.monotonic() - killed_at < 60
        assert code != 0, "mpirun exited 0 after a rank was killed"
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    ckpt = load_checkpoint(workdir / "long")  # the last one complete and loadable
    assert ckpt.step > 0 and np.isfinite(ckpt.model.flat_params).all()


def test_a_batch_that_does_not_divide_over_the_ranks_is_a_clear_error(workdir):
    done = subprocess.run(mpirun(2) + [sys.executable, "-m", "vintagelm", "--threads", "1", "train", "--data",
                                       "verse.txt", "--out", "odd", "--batch-size", "7", "--max-iters", "2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "batch_size 7 does not divide into 2 ranks" in done.stderr and "Traceback" not in done.stderr
    assert not (workdir / "odd").exists()
