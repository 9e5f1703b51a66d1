"""adapters/codec.py: register words ⇄ values. Tables with hand-computed words, then properties."""
from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.codec import decode, decode_raw, encode, resolution

# (value, dtype, byte_order, word_order, scale, offset, words) — words worked out by hand:
CASES = [
    # 21.4 ℃ as int16 ×0.1 (R49) = 214 = 0x00D6
    (21.4, "int16", "big", "big", 0.1, 0.0, [214]),
    # −5.3 ℃ → −53 → two's complement 0xFFCB = 65483
    (-5.3, "int16", "big", "big", 0.1, 0.0, [65483]),
    # 0.45 MPa as uint16 ÷100 → 45
    (0.45, "uint16", "big", "big", 0.01, 0.0, [45]),
    # byte-swapped register: 214 = 00 D6 sent as D6 00 = 0xD600 = 54784
    (21.4, "int16", "little", "big", 0.1, 0.0, [54784]),
    # raw 1234 with scale 0.1 and offset −50 → 73.4
    (73.4, "uint16", "big", "big", 0.1, -50.0, [1234]),
    # 65535 is the top of uint16
    (65535, "uint16", "big", "big", 1.0, 0.0, [65535]),
    # int32 100000 = 0x0001_86A0: high word 1, low word 0x86A0 = 34464
    (100000, "int32", "big", "big", 1.0, 0.0, [1, 34464]),
    (100000, "int32", "big", "little", 1.0, 0.0, [34464, 1]),          # low word first (R53)
    # int32 −2 = 0xFFFF_FFFE
    (-2, "int32", "big", "big", 1.0, 0.0, [65535, 65534]),
    (-2, "int32", "big", "little", 1.0, 0.0, [65534, 65535]),
    # uint32 4294967295 = 0xFFFF_FFFF; 123456.7 kWh ×0.1 → 1234567 = 0x0012_D687
    (4294967295, "uint32", "big", "big", 1.0, 0.0, [65535, 65535]),
    (123456.7, "uint32", "big", "big", 0.1, 0.0, [0x0012, 0xD687]),
    # float32 80.0 m³/h = 0x42A0_0000
    (80.0, "float32", "big", "big", 1.0, 0.0, [0x42A0, 0x0000]),
    (80.0, "float32", "big", "little", 1.0, 0.0, [0x0000, 0x42A0]),      # low word first, as in devices.yaml
    (80.0, "float32", "little", "big", 1.0, 0.0, [0xA042, 0x0000]),      # "BADC"
    (80.0, "float32", "little", "little", 1.0, 0.0, [0x0000, 0xA042]),   # "DCBA"
    # float32 930.5 kW: 930.5 = 1.8173828125·2⁹ → exponent 136 = 0x88, mantissa 0x68A000 → 0x4468_A000
    (930.5, "float32", "big", "little", 1.0, 0.0, [0xA000, 0x4468]),
    # float32 −1.5 = 0xBFC0_0000
    (-1.5, "float32", "big", "big", 1.0, 0.0, [0xBFC0, 0x0000]),
]


@pytest.mark.parametrize("value,dtype,bo,wo,scale,offset,words", CASES)
def test_encode_gives_the_hand_computed_words(value, dtype, bo, wo, scale, offset, words):
    assert encode(value, dtype, bo, wo, scale, offset) == words


@pytest.mark.parametrize("value,dtype,bo,wo,scale,offset,words", CASES)
def test_decode_gives_the_value_back(value, dtype, bo, wo, scale, offset, words):
    assert decode(words, dtype, bo, wo, scale, offset) == pytest.approx(value, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("value,dtype,scale,offset,needle", [
    (3276.8, "int16", 0.1, 0.0, "3276.8"),       # raw 32768 > 32767
    (-3276.9, "int16", 0.1, 0.0, "-3276.9"),
    (-1, "uint16", 1.0, 0.0, "-1"),
    (65536, "uint16", 1.0, 0.0, "65536"),
    (2 ** 31, "int32", 1.0, 0.0, str(2 ** 31)),
    (-1, "uint32", 1.0, 0.0, "-1"),
    (float("nan"), "int16", 1.0, 0.0, "nan"),
    (float("inf"), "uint32", 1.0, 0.0, "inf"),
    (1e39, "float32", 1.0, 0.0, "1e+39"),          # beyond float32
    (5.0, "int16", 0.0, 0.0, "5.0"),               # scale 0 cannot be inverted
])
def test_encode_refuses_values_that_do_not_fit_and_names_them(value, dtype, scale, offset, needle):
    with pytest.raises(ValueError, match=needle.replace("+", r"\+")):
        encode(value, dtype, scale=scale, offset=offset)


@pytest.mark.parametrize("words,dtype", [
    ([65536], "uint16"), ([-1], "int16"), ([1, 70000], "float32"), ([True], "uint16"), ([1.0], "int16"),
    ([1], "float32"), ([1, 2], "int16"), ([], "uint16"),
])
def test_decode_refuses_bad_words(words, dtype):
    with pytest.raises(ValueError):
        decode(words, dtype)


def test_unknown_type_and_order_are_errors():
    with pytest.raises(ValueError, match="int64"):
        encode(1, "int64")
    with pytest.raises(ValueError, match="middle"):
        decode([1], "int16", byte_order="middle")


def test_float32_nan_and_inf_decode_as_such():
    assert math.isnan(decode([0x7FC0, 0x0000], "float32"))
    assert decode([0x0000, 0x7F80], "float32", word_order="little") == math.inf
    assert encode(float("nan"), "float32")[0] & 0x7F80 == 0x7F80   # representable: a PLC's "no value"


def test_rounding_to_the_raw_step():
    assert encode(21.44, "int16", scale=0.1) == [214]
    assert encode(21.46, "int16", scale=0.1) == [215]
    assert resolution("int16", 0.1) == 0.1 and resolution("float32", 0.1) == 0.0


# -- properties ----------------------------------------------------------------------------------

ORDERS = st.sampled_from(["big", "little"])
INT_TYPES = {"int16": (-(2 ** 15), 2 ** 15 - 1), "uint16": (0, 2 ** 16 - 1),
             "int32": (-(2 ** 31), 2 ** 31 - 1), "uint32": (0, 2 ** 32 - 1)}
SCALES = st.sampled_from([1.0, 0.1, 0.01, 10.0, 0.001])
OFFSETS = st.sampled_from([0.0, -50.0, 273.15])


@st.composite
def int_case(draw):
    dtype = draw(st.sampled_from(sorted(INT_TYPES)))
    lo, hi = INT_TYPES[dtype]
    return dtype, draw(st.integers(lo, hi))


@given(int_case(), ORDERS, ORDERS, SCALES, OFFSETS)
def test_integer_values_round_trip_within_one_raw_step(case, bo, wo, scale, offset):
    dtype, raw = case
    value = raw * scale + offset
    words = encode(value, dtype, bo, wo, scale, offset)
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode(words, dtype, bo, wo, scale, offset) == pytest.approx(value, abs=resolution(dtype, scale) / 2 + 1e-9,
                                                                        rel=1e-12)
    assert decode_raw(words, dtype, bo, wo) == raw


@given(st.sampled_from(["int16", "uint16", "int32", "uint32", "float32"]), ORDERS, ORDERS, st.data())
def test_any_register_words_survive_decode_then_encode(dtype, bo, wo, data):
    n = 1 if dtype.endswith("16") else 2
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n))
    value = decode(words, dtype, bo, wo)
    if dtype == "float32" and math.isnan(value):
        return   # NaN payload bits are not preserved by any float round trip
    assert encode(value, dtype, bo, wo) == words


@given(st.floats(width=32, allow_nan=False, allow_infinity=False), ORDERS, ORDERS)
def test_float32_values_round_trip_exactly(value, bo, wo):
    assert decode(encode(value, "float32", bo, wo), "float32", bo, wo) == value


@given(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["int16", "uint16", "int32", "uint32", "float32"]),
       SCALES, OFFSETS)
def test_encode_either_fits_or_raises_value_error(value, dtype, scale, offset):
    try:
        words = encode(value, dtype, scale=scale, offset=offset)
    except ValueError as e:
        assert str(e)
        return
    assert all(0 <= w <= 0xFFFF for w in words)
    back = decode(words, dtype, scale=scale, offset=offset)
    if dtype == "float32":
        if math.isnan(value):
            assert math.isnan(back)
        else:
            raw32 = struct.unpack(">f", struct.pack(">f", (value - offset) / scale))[0]
            assert back == raw32 * scale + offset
    else:
        assert abs(back - value) <= resolution(dtype, scale) / 2 + 1e-9 * max(1.0, abs(value))
