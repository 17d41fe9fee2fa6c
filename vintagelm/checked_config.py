"""ConfigIO: what every model config dataclass shares (GPTConfig and the museum's).

A config goes to config.json and into each checkpoint's state as a dict, and comes back from
one written by hand or by an older run, so the way back is checked: an unknown field, a size
that is not a positive integer, a count that is negative, a scale that is not a positive
number, a flag that is not a bool or a dropout outside [0, 1) is a ValueError that names the
config and the field.
"""
import math
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

    def check(self, positive=(), booleans=(), non_negative=(), positive_numbers=()):
        """ValueError naming the field when a positive integer, a non-negative integer, a positive
        (finite) number or a bool is wrong, and when the config has a dropout field, when it is
        outside [0, 1)."""
        name = type(self).__name__
        for f in positive:
            value = getattr(self, f)
            if not _is_integer(value) or value <= 0:
                raise ValueError(f"{name}.{f} must be a positive integer, got {value!r}")
        for f in non_negative:
            value = getattr(self, f)
            if not _is_integer(value) or value < 0:
                raise ValueError(f"{name}.{f} must be a whole number >= 0, got {value!r}")
        for f in positive_numbers:
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise ValueError(f"{name}.{f} must be a positive finite number, got {value!r}")
        for f in booleans:
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"{name}.{f} must be true or false, got {getattr(self, f)!r}")
        p = getattr(self, "dropout", 0.0)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"{name}.dropout must be in [0, 1), got {p!r}")


def _is_integer(value):
    """An int (NumPy's too), and not a bool (which Python counts as one)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
