"""Numbers for people: short units that never truncate in a narrow metric, exact values beside them."""

from __future__ import annotations

_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def short_number(n: float) -> str:
    """``231_660_000 -> '231.7 M'``, ``48_000 -> '48.0 k'``; below 10,000 the exact number (``'9,216'``)."""
    if abs(n) < 10_000:
        return f"{n:,}" if isinstance(n, int) else f"{n:,.4g}"
    for scale, prefix in _PREFIXES:
        if abs(n) >= scale:
            return f"{n / scale:.1f} {prefix}"
    raise AssertionError("unreachable: |n| >= 10,000 has a prefix")
