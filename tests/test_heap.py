"""fast/heap.py: once a fast-backend model exists, freeing and reallocating an activation-sized
array reuses the freed pages instead of faulting in new ones; a reference-backend model leaves
malloc as it is. Counted in a fresh process each time, since the setting is process-wide and
cannot be undone."""
import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# what a training step does with its activations, 20 times over: ten arrays of 3 MiB (a
# `baby` activation is 1-13 MiB) made and written in full (the forward pass), then all freed
# (the backward pass); page faults (ru_minflt) counted across the rounds after a first one
COUNT_FAULTS = """
import json, resource, sys
import numpy as np
from vintagelm import GPT, GPTConfig
GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8), backend=sys.argv[1])

def churn():
    arrays = [np.empty(3 << 18, dtype=np.float32) for _ in range(10)]
    for a in arrays:
        a.fill(1.0)
    del a, arrays

churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
heap = sys.modules.get("vintagelm.fast.heap")
print(json.dumps({"set": heap is not None and heap.reuse_freed_memory(), "faults": faults}))
"""
PAGES_PER_ARRAY = (3 << 20) // 4096


def count_faults(reuse, backend="fast"):
    env = {**os.environ, "VINTAGELM_REUSE_MEMORY": "1" if reuse else "0"}
    done = subprocess.run([sys.executable, "-c", COUNT_FAULTS, backend], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_model_makes_freed_arrays_reusable_without_page_faults():
    result = count_faults(reuse=True)
    assert result["set"] is True
    assert result["faults"] < PAGES_PER_ARRAY  # 20 rounds fault in fewer than one array's pages


def test_without_it_every_round_faults_its_pages_in_again():
    # the control: what the setting saves (glibc hands the 30 MiB freed at the top of its
    # heap back to the OS, then faults it in again)
    result = count_faults(reuse=False)
    assert result["set"] is False
    assert result["faults"] >= 20 * 10 * PAGES_PER_ARRAY // 2


def test_the_reference_backend_leaves_malloc_as_it_is():
    result = count_faults(reuse=True, backend="reference")
    assert result["set"] is False  # fast/heap.py was never imported
    assert result["faults"] >= 20 * 10 * PAGES_PER_ARRAY // 2
