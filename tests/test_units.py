"""Exact decimal <-> integer unit conversion, and instrument definitions."""

from __future__ import annotations

from decimal import Context, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.core.errors import InexactValue, InstrumentConflict, InvalidInstrument
from orderbook.core.instrument import MAX_SYMBOL_LEN, Instrument
from orderbook.core.units import MAX_SCALE, format_units, from_units, to_units

pytestmark = pytest.mark.timeout(60)

SETTINGS = settings(max_examples=300, deadline=None, report_multiple_bugs=False)
# The default decimal context rounds at 28 digits; the test checks with a wide one.
WIDE = Context(prec=100)

scales = st.integers(min_value=0, max_value=MAX_SCALE)
units = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.integers(min_value=-(10**40), max_value=10**40),
)


# ----------------------------------------------------------------------------- examples


@pytest.mark.parametrize(
    "value, scale, expected",
    [
        ("123.45", 2, 12345),
        ("0.00000500", 8, 500),
        ("0.000022900", 9, 22900),
        ("13355.87450757", 8, 1335587450757),
        ("1.2300", 2, 123),  # trailing zeros beyond the scale are exact
        ("-1.5", 2, -150),
        ("0", 8, 0),
        ("-0", 3, 0),
        ("1e-2", 2, 1),
        ("1E+3", 0, 1000),
        (".5", 1, 5),
        (" 1.5 ", 1, 15),  # surrounding whitespace is stripped
        ("\t42\n", 0, 42),
        (Decimal("2.50"), 1, 25),
        (7, 3, 7000),
        (-7, 0, -7),
        # Wider than a float's 17 significant digits: must stay exact.
        ("123456789012345678901234567890.123456789012345678", 18, 123456789012345678901234567890123456789012345678),
    ],
)
def test_to_units_examples(value, scale, expected):
    got = to_units(value, scale)
    assert got == expected
    assert type(got) is int


def test_from_and_format_examples():
    assert from_units(12345, 2) == Decimal("123.45")
    assert format_units(500, 8) == "0.00000500"
    assert format_units(-5, 2) == "-0.05"
    assert format_units(0, 2) == "0.00"
    assert format_units(0, 0) == "0"
    assert format_units(-12, 0) == "-12"
    assert format_units(12345, 2) == "123.45"


@pytest.mark.parametrize("value", [0.29, 1.0, float("nan"), float("inf"), -0.0])
def test_float_refused(value):
    # int(0.29 * 100) == 28: floats must never reach the price path.
    with pytest.raises(TypeError):
        to_units(value, 2)


@pytest.mark.parametrize(
    "value, scale",
    [
        ("0.001", 2),
        ("1.5", 0),
        ("0.000000001", 8),
        ("-0.125", 2),
        (Decimal("0.1234"), 3),
        ("1e-3", 2),
    ],
)
def test_too_many_decimals(value, scale):
    with pytest.raises(InexactValue):
        to_units(value, scale)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "abc",
        "1.2.3",
        "1 .5",
        "1,5",
        "--1",
        "0x10",
        "1e",
        "NaN",
        "nan",
        "sNaN",
        "Infinity",
        "-inf",
        Decimal("NaN"),
        Decimal("Infinity"),
        None,
    ],
)
def test_garbage_refused(value):
    with pytest.raises(InexactValue):
        to_units(value, 2)


# ----------------------------------------------------------------------------- properties


@SETTINGS
@given(units, scales)
def test_units_round_trip(u, scale):
    d = from_units(u, scale)
    assert to_units(d, scale) == u
    text = format_units(u, scale)
    assert to_units(text, scale) == u
    assert Decimal(text) == d
    # Exactly `scale` decimals, and no exponent notation.
    if scale:
        assert len(text.split(".")[1]) == scale
    else:
        assert "." not in text
    assert "e" not in text.lower()


@SETTINGS
@given(st.data(), st.integers(min_value=0, max_value=12))
def test_decimal_with_fewer_places_is_exact(data, places):
    d = data.draw(
        st.decimals(allow_nan=False, allow_infinity=False, places=places, min_value=-(10**15), max_value=10**15)
    )
    scale = data.draw(st.integers(min_value=places, max_value=MAX_SCALE))
    u = to_units(d, scale)
    assert Decimal(u) == d.scaleb(scale, WIDE)
    assert to_units(str(d), scale) == u
    assert from_units(u, scale) == d


@SETTINGS
@given(units.filter(lambda u: u % 10 != 0), st.integers(min_value=0, max_value=MAX_SCALE - 1))
def test_one_decimal_too_many_is_refused(u, scale):
    with pytest.raises(InexactValue):
        to_units(from_units(u, scale + 1), scale)
    with pytest.raises(InexactValue):
        to_units(format_units(u, scale + 1), scale)


@SETTINGS
@given(units, scales, st.sampled_from([" ", "\t", "\n", "  \r\n"]))
def test_whitespace_is_stripped(u, scale, ws):
    assert to_units(ws + format_units(u, scale) + ws, scale) == u


@SETTINGS
@given(units, scales)
def test_from_units_sign_and_magnitude(u, scale):
    d = from_units(u, scale)
    assert (d < 0) == (u < 0)
    assert d.scaleb(scale, WIDE) == u


# ----------------------------------------------------------------------------- instrument


def test_instrument_conversions():
    inst = Instrument("ADA/XBT", price_scale=9, size_scale=8)
    inst.validate()
    assert inst.price_ticks("0.000022900") == 22900
    assert inst.size_lots("13355.87450757") == 1335587450757
    assert inst.format_price(22900) == "0.000022900"
    assert inst.format_size(500) == "0.00000500"
    assert inst.price_decimal(22900) == Decimal("0.0000229")
    assert inst.size_decimal(1) == Decimal("1E-8")
    with pytest.raises(InexactValue):
        inst.price_ticks("0.0000229001")
    with pytest.raises(TypeError):
        inst.size_lots(1.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"symbol": ""},
        {"symbol": " BTC"},
        {"symbol": "BTC "},
        {"symbol": "BT\nC"},
        {"symbol": "X" * (MAX_SYMBOL_LEN + 1)},
        {"price_scale": -1},
        {"price_scale": MAX_SCALE + 1},
        {"size_scale": MAX_SCALE + 1},
        {"price_increment": 0},
        {"size_increment": -5},
    ],
)
def test_invalid_instrument(kwargs):
    base = {"symbol": "BTC-USD", "price_scale": 2, "size_scale": 8}
    base.update(kwargs)
    with pytest.raises(InvalidInstrument):
        Instrument(**base).validate()


def test_instrument_limits_accepted():
    Instrument("X" * MAX_SYMBOL_LEN, 0, MAX_SCALE).validate()
    Instrument("A B", MAX_SCALE, 0, price_increment=5, size_increment=100).validate()


def test_instrument_redefinition():
    a = Instrument("BTC-USD", 2, 8, 1, 1, base="BTC", quote="USD", venue="x")
    same_terms = Instrument("BTC-USD", 2, 8, 1, 1, base="XBT", venue="y")
    a.check_redefinition(same_terms)  # descriptive fields may differ
    assert a.same_terms(same_terms)
    for other in (
        Instrument("BTC-USD", 3, 8),
        Instrument("BTC-USD", 2, 7),
        Instrument("BTC-USD", 2, 8, price_increment=5),
        Instrument("BTC-USD", 2, 8, size_increment=10),
        Instrument("ETH-USD", 2, 8),
    ):
        assert not a.same_terms(other)
        with pytest.raises(InstrumentConflict):
            a.check_redefinition(other)
