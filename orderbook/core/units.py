"""Exact conversion between decimal values and integer units (ticks, lots).

Values come in as `str`, `Decimal` or `int` only: `float` is refused, because
`int(0.29 * 100) == 28`. Integers stay integers on every hot path; decimals
exist only at the edges.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal, InvalidOperation

from .errors import InexactValue

# Wide enough that no realistic price or size is rounded while scaling.
_CTX = Context(prec=80)

MAX_SCALE = 18

# Plain ASCII decimal notation only: Decimal() would also take "1_000",
# non-ASCII digits, "NaN" and "Infinity", none of which a price should be.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z", re.ASCII)


def to_units(value: str | Decimal | int, scale: int) -> int:
    """Return `value * 10**scale` as an int, or raise `InexactValue`.

    >>> to_units("123.45", 2)
    12345
    >>> to_units("0.00000500", 8)
    500
    """
    if type(value) is str and scale >= 0:
        # Fast path for what feeds send (plain "123.45": no sign, exponent or
        # space): the same integer Decimal gives, without building one.
        # Anything else, an error included, takes the general path below.
        whole, _, frac = value.partition(".")
        if len(frac) > scale and not frac[scale:].strip("0"):
            frac = frac[:scale]  # trailing zeros past the scale: still exact
        digits = whole + frac
        # (int() refuses over 4300 digits; Decimal does not)
        if len(frac) <= scale and digits.isdigit() and digits.isascii() and len(digits) < 4000:
            return int(digits + "0" * (scale - len(frac)))
    if isinstance(value, (float, bool)):
        raise TypeError(f"{type(value).__name__} is not accepted on the price path; pass a str or Decimal")
    if isinstance(value, int):
        # int ** int is typed Any (a negative power is a float); scales are 0..MAX_SCALE.
        factor: int = 10**scale
        return value * factor
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, str) and _DECIMAL.match(value.strip()):
        try:
            d = Decimal(value.strip())
        except InvalidOperation as exc:  # pragma: no cover - the pattern admits only valid input
            raise InexactValue(f"not a decimal number: {value!r}") from exc
    else:
        raise InexactValue(f"not a decimal number: {value!r}")
    if not d.is_finite():
        raise InexactValue(f"not a finite number: {value!r}")
    scaled = d.scaleb(scale, _CTX)
    integral = scaled.to_integral_value(context=_CTX)
    if scaled != integral:
        raise InexactValue(f"{value} has more than {scale} decimal places")
    return int(integral)


def from_units(units: int, scale: int) -> Decimal:
    """Return the exact decimal value of `units / 10**scale`.

    >>> from_units(12345, 2)
    Decimal('123.45')
    """
    return Decimal(units).scaleb(-scale, _CTX)


def format_units(units: int, scale: int) -> str:
    """Format with exactly `scale` decimals: `format_units(500, 8) == '0.00000500'`."""
    sign = "-" if units < 0 else ""
    digits = str(abs(units)).rjust(scale + 1, "0")
    if scale == 0:
        return sign + digits
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"
