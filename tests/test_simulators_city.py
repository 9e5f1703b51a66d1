"""The demo city: reproducible from a seed (byte-identical CSV, across processes) and internally consistent."""
from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from adapters.config import load_devices
from simulators import city as city_mod
from simulators.city import HOUSEHOLD_COLUMNS, SUBSTATIONS, generate_city


@pytest.fixture(scope="module")
def city():
    return generate_city(7, 240)


def test_same_seed_same_csv_bytes_and_other_seed_differs():
    a = generate_city(7, 240).households_csv().encode()
    b = generate_city(7, 240).households_csv().encode()
    c = generate_city(8, 240).households_csv().encode()
    assert a == b
    assert a != c


def test_csv_is_identical_from_another_process_with_other_hash_seed(tmp_path, project_root, city):
    # `heatdesk up` exports in one process and simulates in another: they must agree on every code
    out = tmp_path / "hh.csv"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    r = subprocess.run([sys.executable, "-m", "simulators", "--seed", "7", "--households", "240",
                        "--export-csv", str(out), "--export-only"], cwd=project_root, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == city.households_csv().encode("utf-8")


@pytest.mark.parametrize("n", [4, 41, 240, 1003])
def test_size_is_exact_and_split_over_the_four_substations(n):
    c = generate_city(3, n)
    assert len(c.households) == n
    per_sub = Counter(h.substation_code for h in c.households)
    assert set(per_sub) == {"S01", "S02", "S03", "S04"}
    assert max(per_sub.values()) - min(per_sub.values()) <= 1


def test_too_small_is_refused():
    with pytest.raises(ValueError, match="at least 4"):
        generate_city(7, 3)


def test_substations_match_devices_yaml(project_root):
    devices = load_devices(project_root / "devices.yaml")
    by_sub = {d.substation: d.protocol for d in devices.devices if getattr(d, "substation", None)}
    assert {s.code: s.protocol for s in SUBSTATIONS} == by_sub
    floor = [s for s in SUBSTATIONS if s.heating_type == "floor"]
    assert len(floor) == 1 and (floor[0].design_supply_c, floor[0].design_return_c) == (45.0, 35.0)   # R45
    assert all((s.design_supply_c, s.design_return_c) == (75.0, 50.0) for s in SUBSTATIONS if s.heating_type == "radiator")


def test_hierarchy_is_consistent(city):
    units = {u.code: (b, c, s) for s in city.substations for c in s.communities for b in c.buildings for u in b.units}
    codes = [h.code for h in city.households]
    assert len(codes) == len(set(codes))
    assert all(re.fullmatch(r"\d{10}", code) for code in codes)          # safe as an MQTT topic level
    for h in city.households:
        b, c, s = units[h.unit_code]
        assert (h.building_code, h.community_code, h.substation_code) == (b.code, c.code, s.code)
        assert h.unit_code.startswith(b.code) and b.code.startswith(c.code) and c.code.startswith(s.code)
        assert 1 <= h.floor <= b.floors and 6 <= b.floors <= 18
        assert 50 <= h.area_m2 <= 140
        # R17 placement: one label, precedence top > ground > gable end
        expect = ("top_floor" if h.floor == b.floors else "ground_floor" if h.floor == 1 else
                  "gable_end" if h.is_gable else "normal")
        assert h.placement_class == expect
        assert f"{b.number}号楼{h.unit_code[-1]}单元{h.floor}{h.door:02d}" in h.contact_address
        assert h.contact_address.startswith("天津市滨海新区" + c.name)
        assert re.fullmatch(r"1[3-9]\d{9}", h.contact_phone)
        assert 2 <= len(h.contact_name) <= 4


def test_rooms_sensors_and_statuses(city):
    for h in city.households:
        types = Counter(r.room_type for r in h.rooms)
        assert types["living_room"] == 1 and types["kitchen"] == 1 and 1 <= types["bedroom"] <= 3
        assert len({r.code for r in h.rooms}) == len(h.rooms)
        for r in h.rooms:
            assert r.counts_for_compliance == (r.room_type in ("bedroom", "living_room"))    # R4
            assert r.area_m2 > 0
        assert len({r.sensor_vendor for r in h.sensor_rooms}) <= 1          # one vendor per household
        assert all(r.room_type != "kitchen" for r in h.sensor_rooms)
    with_sensors = sum(1 for h in city.households if h.sensor_rooms)
    assert 0.7 * len(city.households) < with_sensors < len(city.households)      # most, not all
    vendors = Counter(h.vendor for h in city.households if h.vendor)
    assert set(vendors) == {"A", "B", "C"}
    status = Counter(h.heating_status for h in city.households)
    assert 0 < status["stopped"] < 0.1 * len(city.households)                 # a few 报停
    placements = Counter(h.placement_class for h in city.households)
    assert set(placements) == {"top_floor", "ground_floor", "gable_end", "normal"}


def test_csv_columns_rows_and_documentation(city):
    text = city.households_csv()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0].keys()) == HOUSEHOLD_COLUMNS
    assert len(rows) == sum(len(h.rooms) for h in city.households)
    for col in HOUSEHOLD_COLUMNS:                                    # every column is documented
        assert col in city_mod.__doc__, col
    first = rows[0]
    assert (first["company_code"], first["company_name"], first["region_code"], first["branch_code"]) == \
        ("HD", "滨海热力", "tianjin", "B1")
    assert (first["weather_station_code"], float(first["design_outdoor_temp_c"])) == ("TJ", -7.0)    # R6
    sensors = [r for r in rows if r["sensor_vendor"]]
    assert len(sensors) == len(city.sensors())
    assert {r["sensor_vendor"] for r in rows} == {"", "A", "B", "C"}
