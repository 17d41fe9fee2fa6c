"""Training speed, peak memory and MFU of vintagelm against the torch reference: `vintage bench`
run as a script, optionally in both OpenBLAS environments.

    python benchmarks/bench_training.py                    # the environment as set
    python benchmarks/bench_training.py --both-envs        # then again with OPENBLAS_CORETYPE
                                                           # and OPENBLAS_L2_SIZE unset
    python benchmarks/bench_training.py --config baby --rounds 5 --json

Every other option is `vintage bench`'s (see `vintage bench --help`). OpenBLAS reads its
variables when it loads, so the second environment runs in a child process; each table says
which BLAS kernel it ran with. On a CPU without AVX-512 both runs use the same kernel.
"""
import os
import subprocess
import sys

from vintagelm.cli import main

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def describe_env(env):
    return ", ".join(f"{k}={env[k]}" if k in env else f"{k} unset" for k in OPENBLAS_VARS)


if __name__ == "__main__":
    argv = sys.argv[1:]
    both = "--both-envs" in argv
    argv = [a for a in argv if a != "--both-envs"]
    print(f"# environment: {describe_env(os.environ)}", flush=True)
    status = main(["bench", *argv])
    if both and status == 0:
        env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_VARS}
        print(f"\n# environment: {describe_env(env)}", flush=True)
        status = subprocess.run([sys.executable, "-m", "vintagelm", "bench", *argv], env=env).returncode
    sys.exit(status)
