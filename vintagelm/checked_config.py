"""ConfigIO: what every model config dataclass shares (GPTConfig and the museum's).

A config goes to config.json and into each checkpoint's state as a dict, and comes back from
one written by hand or by an older run, so the way back is checked: an unknown field, a size
that is not a positive integer, a flag that is not a bool or a dropout outside [0, 1) is a
ValueError that names the config and the field.
"""
from dataclasses import asdict, fields

import numpy as np


class ConfigIO:
    """Mixin for a config dataclass: JSON-able dict out, checked dict in, field validation."""

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    def check(self, positive=(), booleans=()):
        """ValueError naming the field when a positive integer or a bool is wrong, and when the
        config has a dropout field, when it is outside [0, 1)."""
        name = type(self).__name__
        for f in positive:
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name}.{f} must be a positive integer, got {value!r}")
        for f in booleans:
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"{name}.{f} must be true or false, got {getattr(self, f)!r}")
        p = getattr(self, "dropout", 0.0)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"{name}.dropout must be in [0, 1), got {p!r}")
