"""Step parameters as checked values (pure): each parser names the bad parameter and the fix.

Every family's parameters arrive as strings from its MLproject; they are checked before any work,
so a step fails fast with a WindpipeError that names the value and how to pass a good one.
"""

from __future__ import annotations

import numpy as np

from windpipe.errors import WindpipeError

# The upper bounds keep a typo (1e9 trees) from running until a timeout kills it: far above anything
# useful on this data.
MAX_TREES = 5_000
MAX_EPOCHS = 10_000


def as_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as an int in [`minimum`, `maximum`], else a WindpipeError naming parameter `name`."""
    try:
        number = float(str(value).strip())
        if not number.is_integer():
            raise ValueError
        out = int(number)
    except (TypeError, ValueError, OverflowError):
        raise WindpipeError(f"Parameter {name} must be a whole number, got {value!r}.",
                            f"pass e.g. -P {name}=10") from None
    if minimum is not None and out < minimum:
        raise WindpipeError(f"Parameter {name} must be at least {minimum}, got {out}.",
                            f"pass -P {name}=<a number >= {minimum}>")
    if maximum is not None and out > maximum:
        raise WindpipeError(f"Parameter {name} must be at most {maximum}, got {out}: that would run for hours "
                            "or exhaust memory.", f"pass -P {name}=<a number <= {maximum}>")
    return out


def as_float(name: str, value: object, low: float | None = None, high: float | None = None) -> float:
    """`value` as a float in the open interval (low, high), else a WindpipeError."""
    try:
        out = float(str(value).strip())
    except (TypeError, ValueError):
        raise WindpipeError(f"Parameter {name} must be a number, got {value!r}.",
                            f"pass e.g. -P {name}=0.001") from None
    if not np.isfinite(out) or (low is not None and out <= low) or (high is not None and out >= high):
        bounds = f"between {low} and {high}" if high is not None else f"greater than {low}"
        raise WindpipeError(f"Parameter {name} must be {bounds}, got {value!r}.", f"pass a valid {name}")
    return out


def as_int_list(name: str, value: object, minimum: int = 1) -> list[int]:
    """A comma list like `64,32` as ints >= `minimum` (a list or tuple passes through the same checks)."""
    items = value if isinstance(value, list | tuple) else [v for v in str(value).split(",") if v.strip()]
    if not items:
        raise WindpipeError(f"Parameter {name} is empty.", f"pass a comma list, e.g. -P {name}=64,32")
    return [as_int(name, v, minimum) for v in items]


def as_depth(name: str, value: object) -> int | None:
    """A tree depth: a whole number >= 1, or `none` / 0 for unlimited."""
    if value is None or str(value).strip().lower() in ("none", "0", ""):
        return None
    return as_int(name, value, 1)


def as_depth_list(name: str, value: object) -> list[int | None]:
    items = value if isinstance(value, list | tuple) else [v for v in str(value).split(",") if v.strip()]
    if not items:
        raise WindpipeError(f"Parameter {name} is empty.", f"pass a comma list, e.g. -P {name}=6,10,14")
    return [as_depth(name, v) for v in items]
