"""The static definition of a symbol: its scales and increments."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from .errors import InstrumentConflict, InvalidInstrument
from .units import MAX_SCALE, format_units, from_units, to_units

MAX_SYMBOL_LEN = 64


@dataclass(frozen=True, slots=True)
class Instrument:
    """price = ticks / 10**price_scale, size = lots / 10**size_scale."""

    symbol: str
    price_scale: int
    size_scale: int
    price_increment: int = 1  # in ticks
    size_increment: int = 1  # in lots
    base: str = ""
    quote: str = ""
    venue: str = ""

    def validate(self) -> None:
        s = self.symbol
        if not s or len(s) > MAX_SYMBOL_LEN or not s.isprintable() or s.strip() != s:
            raise InvalidInstrument(f"invalid symbol name {s!r}")
        for name in ("price_scale", "size_scale"):
            v = getattr(self, name)
            if not 0 <= v <= MAX_SCALE:
                raise InvalidInstrument(f"{s}: {name} {v} outside 0..{MAX_SCALE}")
        for name in ("price_increment", "size_increment"):
            if getattr(self, name) < 1:
                raise InvalidInstrument(f"{s}: {name} must be >= 1")

    def same_terms(self, other: Instrument) -> bool:
        """True if both define the same arithmetic (descriptive fields aside)."""
        return (
            self.symbol == other.symbol
            and self.price_scale == other.price_scale
            and self.size_scale == other.size_scale
            and self.price_increment == other.price_increment
            and self.size_increment == other.size_increment
        )

    def check_redefinition(self, other: Instrument) -> None:
        if not self.same_terms(other):
            raise InstrumentConflict(
                f"{self.symbol}: already defined with price_scale={self.price_scale} "
                f"size_scale={self.size_scale} price_increment={self.price_increment} "
                f"size_increment={self.size_increment}"
            )

    # Conversions at the edges -------------------------------------------------
    def price_ticks(self, value: str | Decimal | int) -> int:
        return to_units(value, self.price_scale)

    def size_lots(self, value: str | Decimal | int) -> int:
        return to_units(value, self.size_scale)

    def price_decimal(self, ticks: int) -> Decimal:
        return from_units(ticks, self.price_scale)

    def size_decimal(self, lots: int) -> Decimal:
        return from_units(lots, self.size_scale)

    def format_price(self, ticks: int) -> str:
        return format_units(ticks, self.price_scale)

    def format_size(self, lots: int) -> str:
        return format_units(lots, self.size_scale)
