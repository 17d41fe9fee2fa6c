"""vintagelm: a GPT written from scratch in NumPy, with hand-written backward passes.

Public API (imported lazily so that `import vintagelm` and `vintage --help` stay fast):
    GPT, GPTConfig            the model (vintagelm.model)
    CharTokenizer, BPETokenizer  hand-made tokenizers (vintagelm.tokenizers)
    UserError                 the one exception type for user mistakes
"""
__version__ = "0.1.0"

_LAZY = {
    "GPT": "vintagelm.model",
    "GPTConfig": "vintagelm.model",
    "CharTokenizer": "vintagelm.tokenizers",
    "BPETokenizer": "vintagelm.tokenizers",
    "UserError": "vintagelm.common",
}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vintagelm' has no attribute {name!r}")
