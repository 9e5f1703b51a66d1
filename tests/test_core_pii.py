import psycopg
import pytest

from core.pii import FieldCipher, backfill_name_index, mask_phone, new_key_hex, normalise_phone, store_contact


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


def test_name_index_is_normalised_and_separate_from_the_phone_index():
    c = FieldCipher(new_key_hex())
    assert c.name_index("王 伟") == c.name_index("王伟") == c.name_index("王伟\u3000")
    assert c.name_index("王伟") != c.name_index("王伟伟")
    assert c.name_index("13812345678") != c.phone_index("13812345678")     # domain-separated
    assert FieldCipher(new_key_hex()).name_index("王伟") != c.name_index("王伟")


def test_store_contact_indexes_the_name_and_backfill_fills_older_rows(fresh_db_url):
    c = FieldCipher(new_key_hex())
    with psycopg.connect(fresh_db_url) as conn:
        conn.execute("INSERT INTO weather_station VALUES ('W', 'w', -7)")
        conn.execute("INSERT INTO company (code, name) VALUES ('C', 'c')")
        conn.execute("INSERT INTO branch (company_id, code, name) VALUES (1, 'B', 'b')")
        conn.execute("INSERT INTO substation (branch_id, code, name) VALUES (1, 'S', 's')")
        conn.execute("INSERT INTO community (substation_id, code, name) VALUES (1, 'C1', 'c')")
        conn.execute("INSERT INTO building (community_id, code, name) VALUES (1, 'B1', 'b')")
        conn.execute("INSERT INTO unit (building_id, code, name) VALUES (1, 'U1', 'u')")
        h1, h2 = (conn.execute("INSERT INTO household (unit_id, code, area_m2) VALUES (1, %s, 80) RETURNING id",
                               (code,)).fetchone()[0] for code in ("H1", "H2"))
        store_contact(conn, c, h1, "王伟", "13812345678", "地址")
        store_contact(conn, c, h2, "李娜", "13812345679", "地址")
        conn.execute("UPDATE pii.household_contact SET name_index = NULL WHERE household_id = %s", (h2,))
        conn.commit()
        idx = dict(conn.execute("SELECT household_id, name_index FROM pii.household_contact").fetchall())
        assert bytes(idx[h1]) == c.name_index("王伟") and idx[h2] is None
        assert backfill_name_index(conn, c) == 1 and backfill_name_index(conn, c) == 0
        row = conn.execute("SELECT name_index FROM pii.household_contact WHERE household_id = %s", (h2,)).fetchone()
        assert bytes(row[0]) == c.name_index("李娜")
