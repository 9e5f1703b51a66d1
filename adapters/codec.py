"""Modbus register words ⇄ engineering values. Pure: no I/O, no pymodbus.

A value occupies one or two 16-bit registers. ``byte_order`` is the order of the two bytes inside
each register ("big" is the Modbus standard), ``word_order`` the order of the registers of a 32-bit
value ("little" = low word first, common in Chinese PLC tables and gateway docs, domain.md R53).

Scaling follows the point tables (R49): ``value = raw * scale + offset``; e.g. 21.4 ℃ is served as
the int16 214 with scale 0.1. ``encode`` is the inverse (the simulator serves values with it):
integer types round to the nearest raw step, and a value that does not fit the type raises
``ValueError`` naming the value, the type and the scale.
"""
from __future__ import annotations

import math
import struct
from typing import Sequence

from adapters.config import REGISTER_COUNT

#: struct format of the raw value in big-endian byte order, and the integer range it holds
_FORMAT: dict[str, str] = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}
_INT_RANGE: dict[str, tuple[int, int]] = {
    "int16": (-(1 << 15), (1 << 15) - 1), "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, (1 << 32) - 1),
}
_BYTE_ORDERS = ("big", "little")


def _check_orders(byte_order: str, word_order: str) -> None:
    if byte_order not in _BYTE_ORDERS or word_order not in _BYTE_ORDERS:
        raise ValueError(f"byte_order/word_order must be 'big' or 'little', got {byte_order!r}/{word_order!r}")


def _size(dtype: str) -> int:
    try:
        return REGISTER_COUNT[dtype]
    except KeyError:
        raise ValueError(f"unknown Modbus type {dtype!r} (known: {sorted(REGISTER_COUNT)})") from None


def words_to_bytes(words: Sequence[int], byte_order: str = "big", word_order: str = "big") -> bytes:
    """Registers as received → the value's bytes, most significant first."""
    _check_orders(byte_order, word_order)
    for i, w in enumerate(words):
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 0xFFFF:
            raise ValueError(f"register word #{i} = {w!r} is not an integer in 0..65535")
    ordered = list(words) if word_order == "big" else list(reversed(words))
    return b"".join(w.to_bytes(2, byte_order) for w in ordered)  # type: ignore[arg-type]


def bytes_to_words(raw: bytes, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """Inverse of :func:`words_to_bytes`."""
    _check_orders(byte_order, word_order)
    if len(raw) % 2:
        raise ValueError(f"need an even number of bytes, got {len(raw)}")
    words = [int.from_bytes(raw[i:i + 2], byte_order) for i in range(0, len(raw), 2)]  # type: ignore[arg-type]
    return words if word_order == "big" else words[::-1]


def decode_raw(words: Sequence[int], dtype: str, byte_order: str = "big", word_order: str = "big") -> float:
    """The raw (unscaled) number held by ``words``: an int, or a float for float32 (may be NaN/inf)."""
    need = _size(dtype)
    if len(words) != need:
        raise ValueError(f"{dtype} needs {need} registers, got {len(words)}")
    return struct.unpack(_FORMAT[dtype], words_to_bytes(words, byte_order, word_order))[0]


def decode(words: Sequence[int], dtype: str, byte_order: str = "big", word_order: str = "big",
           scale: float = 1.0, offset: float = 0.0) -> float:
    """Engineering value ``raw * scale + offset`` of a point's registers.

    float32 registers can hold NaN or ±inf (a PLC's "no value"); they come back as such and the
    caller decides (the Modbus adapter turns them into a rejection). Raises ``ValueError`` for a
    wrong register count or a word outside 0..65535.
    """
    return apply_scale(decode_raw(words, dtype, byte_order, word_order), scale, offset)


def apply_scale(raw: float, scale: float = 1.0, offset: float = 0.0) -> float:
    """Raw register number → engineering value (R49: e.g. temperatures ÷10 → scale 0.1)."""
    return raw * scale + offset


def encode(value: float, dtype: str, byte_order: str = "big", word_order: str = "big",
           scale: float = 1.0, offset: float = 0.0) -> list[int]:
    """Register words that decode to ``value`` (within one raw step for integer types).

    Raises ``ValueError`` naming the value when it cannot be represented: outside the type's range
    after scaling, not finite for an integer type, beyond float32's range, or scale 0.
    """
    need = _size(dtype)
    if scale == 0 or not math.isfinite(scale) or not math.isfinite(offset):
        raise ValueError(f"cannot encode {value!r} as {dtype}: scale {scale!r} / offset {offset!r} must be finite, "
                         f"scale non-zero")
    raw = (value - offset) / scale
    if dtype == "float32":
        try:
            packed = struct.pack(">f", raw)
        except (OverflowError, struct.error) as e:
            raise ValueError(f"cannot encode {value!r} as float32 (scale {scale}, offset {offset}): "
                             f"raw {raw!r} is beyond float32 range") from e
    else:
        if not math.isfinite(raw):
            raise ValueError(f"cannot encode {value!r} as {dtype}: not a finite number")
        lo, hi = _INT_RANGE[dtype]
        n = round(raw)
        if not lo <= n <= hi:
            raise ValueError(f"cannot encode {value!r} as {dtype} (scale {scale}, offset {offset}): raw {n} "
                             f"is outside {lo}..{hi}")
        packed = struct.pack(_FORMAT[dtype], n)
    words = bytes_to_words(packed, byte_order, word_order)
    assert len(words) == need
    return words


def resolution(dtype: str, scale: float) -> float:
    """Smallest step between two encodable values of an integer type (0.0 for float32)."""
    _size(dtype)
    return 0.0 if dtype == "float32" else abs(scale)
