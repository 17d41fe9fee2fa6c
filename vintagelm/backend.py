"""Which implementation runs a model's ops: the readable reference, or the fast one.

    "reference"  vintagelm/nn/ only: NumPy, no compiled code, no ctypes, no thread tricks,
                 no change to malloc. What a learner reads; every gradient test runs on it.
    "fast"       vintagelm/fast/: numba kernels for the elementwise ops, attention and
                 elementwise work split over the BLAS threads, freed memory kept for the next
                 step. The same mathematics, tested equal to the reference.
    "auto"       "fast" when its dependency (numba, `pip install 'vintagelm[fast]'`) is
                 installed, else "reference".

This module only names and checks the choice; it imports neither backend.
"""
import importlib.util

BACKENDS = ("reference", "fast")


def fast_available():
    """Whether the fast backend can be used here (numba is installed)."""
    return importlib.util.find_spec("numba") is not None


def default_backend():
    return "fast" if fast_available() else "reference"


def resolve_backend(name="auto"):
    """"auto" / "reference" / "fast" -> "reference" or "fast"; ValueError for anything else,
    or for "fast" without numba."""
    if name in (None, "auto"):
        return default_backend()
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of auto, {', '.join(BACKENDS)}; got {name!r}")
    if name == "fast" and not fast_available():
        raise ValueError("backend 'fast' needs numba: pip install 'vintagelm[fast]' (or use backend='reference')")
    return name


def load_ops(name, dtype):
    """The op table a model of `dtype` calls for backend `name`, "reference" or "fast" as
    resolve_backend made it (see nn/ops.py)."""
    if name == "fast":
        from vintagelm.fast.ops import FastOps

        return FastOps(dtype)
    from vintagelm.nn.ops import ReferenceOps

    return ReferenceOps()
