from core.pii import FieldCipher, mask_phone, new_key_hex, normalise_phone
import pytest


def test_sm4_roundtrip_and_blind_index():
    c = FieldCipher(new_key_hex())
    blob = c.encrypt("13812345678")
    assert b"13812345678" not in blob
    assert c.decrypt(blob) == "13812345678"
    assert c.phone_index("+86 138-1234-5678") == c.phone_index("13812345678")
    assert c.phone_index("13812345679") != c.phone_index("13812345678")


def test_wrong_key_fails():
    a, b = FieldCipher(new_key_hex()), FieldCipher(new_key_hex())
    with pytest.raises(Exception):
        b.decrypt(a.encrypt("张三"))


@pytest.mark.parametrize("raw,masked", [("13812345678", "138****5678"), ("+8613812345678", "138****5678"),
                                        ("", "")])
def test_mask_phone(raw, masked):
    assert mask_phone(raw) == masked


def test_normalise_phone():
    assert normalise_phone("86-138 1234 5678") == "13812345678"
