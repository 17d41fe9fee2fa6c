"""Which implementation of the elementwise ops a model uses: the readable NumPy ones, or the
compiled numba ones of fused.py (float32 only, optional dependency `pip install 'vintagelm[fast]'`).

    "numpy"  always the NumPy ops (the reference)
    "numba"  the fused kernels; an error when numba is missing or the dtype is not float32
    "auto"   numba when it is installed and the dtype is float32, else NumPy
"""
import importlib.util
from types import SimpleNamespace

import numpy as np

from vintagelm.nn import activation, attention, norm

KERNEL_CHOICES = ("auto", "numpy", "numba")

NUMPY = SimpleNamespace(
    name="numpy",
    layernorm_forward=norm.layernorm_forward,
    layernorm_backward=norm.layernorm_backward,
    activations=dict(activation.ACTIVATIONS),
    causal_softmax=attention.causal_softmax,
    softmax_backward=attention.softmax_backward,
)


def numba_available():
    return importlib.util.find_spec("numba") is not None


def get_kernels(choice, dtype):
    """The kernel namespace for `choice` (see the module docstring) and a model `dtype`."""
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}; got {choice!r}")
    float32 = np.dtype(dtype) == np.float32
    if choice == "numpy" or (choice == "auto" and not (float32 and numba_available())):
        return NUMPY
    if not numba_available():
        raise ValueError("kernels='numba' needs numba: pip install 'vintagelm[fast]'")
    if not float32:
        raise ValueError("kernels='numba' is float32 only; use kernels='numpy' for float64")
    from vintagelm.nn import fused

    return SimpleNamespace(
        name="numba",
        layernorm_forward=fused.layernorm_forward,
        layernorm_backward=fused.layernorm_backward,
        activations={**activation.ACTIVATIONS, "gelu": (fused.gelu_forward, fused.gelu_backward)},
        causal_softmax=fused.causal_softmax,
        softmax_backward=fused.softmax_backward,
    )
