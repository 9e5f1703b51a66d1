"""The demo city as data: company → branch → substations → communities → buildings → units → households → rooms.

Everything is generated from ``(seed, households)`` with one ``random.Random``, so the same seed and
size always give the same city and the same CSV bytes (tests rely on it; so does `heatdesk up`,
which exports the CSV in one process and runs the simulators in another).

The city matches devices.yaml: company ``HD`` 滨海热力 (region ``tianjin``), branch ``B1``, substations
``S01``/``S02`` (Modbus TCP, older walk-ups, radiators 75/50 ℃, R45) and ``S03``/``S04`` (OPC UA, newer
towers; ``S04`` is floor heating 45/35 ℃, R45), weather station ``TJ`` 天津 with design outdoor
temperature −7.0 ℃ (R6).

Households carry what the analytics need: area, 报停 status (``stopped``), segment, R17
``placement_class`` (top_floor / ground_floor / gable_end / normal, in that precedence) and whether
the flat has its own valve (R36). Bedrooms and the living room count for compliance (R4); kitchens
do not. Most households have room thermometers (Weifang-style pilots cover fewer, R17 — the demo
covers most so that there is something to look at); each household's thermometers come from one
vendor, A/B/C as described by the MQTT profiles of devices.yaml.

Personal data (name, mobile, address) is fake but shaped like the real thing; it only ever leaves
this module through the CSV, and the importer stores it encrypted (core/pii.py, R57–R60).

Household CSV (``heatdesk import households FILE.csv``; UTF-8, header row, one row per room):

==================================  ============================================================
column                              meaning
==================================  ============================================================
company_code, company_name          供热企业, e.g. ``HD``, ``滨海热力``
region_code                         policy region (analytics resolves thresholds by it), ``tianjin``
branch_code, branch_name            分公司, ``B1``
substation_code, substation_name    换热站, ``S01`` … (must match devices.yaml ``substation:``)
heating_type                        ``radiator`` | ``floor``
design_supply_c, design_return_c    secondary design temperatures, ℃ (R45)
design_flow_m3h                     secondary design flow, m³/h (may be empty)
weather_station_code                weather station for R6 exemptions, ``TJ``
weather_station_name                station name, ``天津`` (used when the station is new)
design_outdoor_temp_c               供暖室外计算温度 of the station, ℃ (R6), −7.0 for Tianjin
community_code, community_name      小区, e.g. ``S01-C1``, ``海景花园``
building_code, building_name        楼, e.g. ``S01-C1-B03``, ``3号楼``
building_floors                     storeys of the building (6–18)
unit_code, unit_name                单元, e.g. ``S01-C1-B03-U2``, ``2单元``
household_code                      户号 (account number), 10 digits, unique; used in MQTT topics
floor                               storey of the flat (1 = ground)
area_m2                             billing area 建筑面积, m²
heating_status                      ``active`` | ``stopped`` (报停)
billing_method                      ``area`` | ``two_part_meter`` | ``allocation``
segment                             ``residential`` | ``non_residential`` | ``large``
placement_class                     R17: ``top_floor`` | ``ground_floor`` | ``gable_end`` | ``normal``
individually_valved                 ``true`` | ``false`` (R36 分户 control)
room_code                           ``living`` | ``bedroom1``… | ``kitchen`` (MQTT topic level)
room_type                           ``living_room`` | ``bedroom`` | ``kitchen`` | ``bathroom`` | ``study`` | ``other``
room_area_m2                        m²
counts_for_compliance               ``true`` | ``false`` (R4: bedroom and living room)
sensor_vendor                       ``A`` | ``B`` | ``C`` when the room has a thermometer, empty otherwise
contact_name, contact_phone,        personal data (PIPL): stored encrypted by the importer; the
contact_address                     household's values repeat on each of its rows
==================================  ============================================================

Weather CSV (``heatdesk import weather FILE.csv``): ``station_code, station_name,
design_outdoor_temp_c, day, mean_c`` — the official daily outdoor mean (℃) per local day.
"""
from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass, field
from pathlib import Path

HOUSEHOLD_COLUMNS: tuple[str, ...] = (
    "company_code", "company_name", "region_code", "branch_code", "branch_name",
    "substation_code", "substation_name", "heating_type", "design_supply_c", "design_return_c", "design_flow_m3h",
    "weather_station_code", "weather_station_name", "design_outdoor_temp_c",
    "community_code", "community_name", "building_code", "building_name", "building_floors",
    "unit_code", "unit_name", "household_code", "floor", "area_m2", "heating_status", "billing_method", "segment",
    "placement_class", "individually_valved", "room_code", "room_type", "room_area_m2", "counts_for_compliance",
    "sensor_vendor", "contact_name", "contact_phone", "contact_address",
)

VENDORS = ("A", "B", "C")
#: rooms that count for compliance (R4)
COMPLIANCE_ROOM_TYPES = frozenset({"bedroom", "living_room"})
DEFAULT_HOUSEHOLDS = 240

# --- name material (fake, realistic) -------------------------------------------------------------
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严武戴孔汤"
_GIVEN = ("伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀兰",
          "霞", "平", "刚", "桂英", "建华", "文", "玉兰", "志强", "海燕", "红梅", "国庆", "淑珍", "丹", "鹏", "辉", "颖",
          "建国", "秀英", "宇", "浩", "欣怡", "子涵", "梓轩", "雨桐", "思远", "博文", "建平", "立新", "凤英", "振华",
          "德明", "春燕", "晓东", "婷", "雪", "琳", "斌", "宏", "金凤", "永刚", "丽华", "海涛")
_MOBILE_PREFIXES = ("130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152", "155",
                    "156", "157", "158", "159", "176", "177", "180", "181", "182", "185", "186", "187", "188", "189",
                    "198", "199")
_COMMUNITY_NAMES = ("海景花园", "滨河家园", "泰达新城", "金港湾", "渤海明珠", "塘沽花园", "紫云小区", "福缘里", "新港家园",
                    "碧海蓝庭", "盛世华庭", "云山苑", "华苑里", "春晖园", "河畔人家", "港城名邸", "胡家园", "向阳里",
                    "杭州道小区", "远洋城", "万科东海岸", "贻成豪庭", "金泰丽湾", "中建文化城", "鑫海家园", "御景园",
                    "康城", "桃源里", "和平里", "友谊新村")
_STREETS = ("新港街道", "杭州道街道", "新河街道", "大沽街道", "新北街道", "北塘街道", "泰达街道", "胡家园街道")


@dataclass(frozen=True)
class SubstationSpec:
    """Substation design data (R45): secondary design temperatures and heating system."""
    code: str
    name: str
    protocol: str              # modbus | opcua (must match devices.yaml)
    heating_type: str          # radiator | floor
    design_supply_c: float
    design_return_c: float
    era: str                   # old (walk-ups, 6–7 floors) | new (towers, 11–18 floors)


#: The four substations of devices.yaml. Data, not behaviour: the generator reads these.
SUBSTATIONS: tuple[SubstationSpec, ...] = (
    SubstationSpec("S01", "海滨一号换热站", "modbus", "radiator", 75.0, 50.0, "old"),
    SubstationSpec("S02", "海滨二号换热站", "modbus", "radiator", 75.0, 50.0, "old"),
    SubstationSpec("S03", "泰达三号换热站", "opcua", "radiator", 75.0, 50.0, "new"),
    SubstationSpec("S04", "泰达四号换热站", "opcua", "floor", 45.0, 35.0, "new"),
)


@dataclass
class Room:
    code: str
    room_type: str
    area_m2: float
    counts_for_compliance: bool
    sensor_vendor: str | None          # A/B/C when this room has a thermometer


@dataclass
class Household:
    code: str
    unit_code: str
    building_code: str
    community_code: str
    substation_code: str
    floor: int
    door: int                          # door number on the landing (1-based)
    area_m2: float
    heating_status: str
    billing_method: str
    segment: str
    placement_class: str
    individually_valved: bool
    rooms: list[Room]
    contact_name: str
    contact_phone: str
    contact_address: str
    # geometry kept separately from placement_class (which is one label): the thermal model needs all three
    is_top: bool = False
    is_ground: bool = False
    is_gable: bool = False

    @property
    def vendor(self) -> str | None:
        vs = {r.sensor_vendor for r in self.rooms if r.sensor_vendor}
        return next(iter(vs)) if vs else None

    @property
    def sensor_rooms(self) -> list[Room]:
        return [r for r in self.rooms if r.sensor_vendor]


@dataclass
class Unit:
    code: str
    name: str
    number: int


@dataclass
class Building:
    code: str
    name: str
    number: int
    floors: int
    units: list[Unit]


@dataclass
class Community:
    code: str
    name: str
    street: str
    buildings: list[Building]


@dataclass
class Substation:
    spec: SubstationSpec
    communities: list[Community]
    design_flow_m3h: float = 0.0

    @property
    def code(self) -> str:
        return self.spec.code


@dataclass
class City:
    seed: int
    company_code: str
    company_name: str
    region_code: str
    branch_code: str
    branch_name: str
    station_code: str
    station_name: str
    design_outdoor_temp_c: float
    city_name: str
    district_name: str
    substations: list[Substation]
    households: list[Household] = field(default_factory=list)

    def substation(self, code: str) -> Substation:
        for s in self.substations:
            if s.code == code:
                return s
        raise KeyError(code)

    def sensors(self) -> list[tuple[Household, Room]]:
        """(household, room) for every room thermometer, in a stable order."""
        return [(h, r) for h in self.households for r in h.rooms if r.sensor_vendor]

    # -- CSV -------------------------------------------------------------------------------------
    def household_rows(self) -> list[dict[str, str]]:
        subs = {s.code: s for s in self.substations}
        comm = {c.code: c for s in self.substations for c in s.communities}
        bld = {b.code: b for c in comm.values() for b in c.buildings}
        unit = {u.code: u for b in bld.values() for u in b.units}
        rows = []
        for h in self.households:
            s, c, b, u = subs[h.substation_code], comm[h.community_code], bld[h.building_code], unit[h.unit_code]
            for r in h.rooms:
                rows.append({
                    "company_code": self.company_code, "company_name": self.company_name,
                    "region_code": self.region_code, "branch_code": self.branch_code, "branch_name": self.branch_name,
                    "substation_code": s.code, "substation_name": s.spec.name, "heating_type": s.spec.heating_type,
                    "design_supply_c": _num(s.spec.design_supply_c), "design_return_c": _num(s.spec.design_return_c),
                    "design_flow_m3h": _num(s.design_flow_m3h),
                    "weather_station_code": self.station_code, "weather_station_name": self.station_name,
                    "design_outdoor_temp_c": _num(self.design_outdoor_temp_c),
                    "community_code": c.code, "community_name": c.name,
                    "building_code": b.code, "building_name": b.name, "building_floors": str(b.floors),
                    "unit_code": u.code, "unit_name": u.name,
                    "household_code": h.code, "floor": str(h.floor), "area_m2": _num(h.area_m2),
                    "heating_status": h.heating_status, "billing_method": h.billing_method, "segment": h.segment,
                    "placement_class": h.placement_class, "individually_valved": _bool(h.individually_valved),
                    "room_code": r.code, "room_type": r.room_type, "room_area_m2": _num(r.area_m2),
                    "counts_for_compliance": _bool(r.counts_for_compliance), "sensor_vendor": r.sensor_vendor or "",
                    "contact_name": h.contact_name, "contact_phone": h.contact_phone,
                    "contact_address": h.contact_address,
                })
        return rows

    def households_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=HOUSEHOLD_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(self.household_rows())
        return buf.getvalue()

    def write_households_csv(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(self.households_csv().encode("utf-8"))
        return p


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def _bool(b: bool) -> str:
    return "true" if b else "false"


# --- generation -------------------------------------------------------------------------------------

def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _rooms(rng: random.Random, area: float) -> list[Room]:
    """Living room + 1–3 bedrooms + kitchen, areas summing to ~70 % of the billing area (the rest is
    walls, corridor, bathroom and the 公摊 share)."""
    bedrooms = 1 if area < 70 else 2 if area < 110 else 3
    usable = area * rng.uniform(0.66, 0.74)
    kitchen = round(min(12.0, max(5.0, usable * 0.09)), 1)
    living = round(usable * rng.uniform(0.34, 0.42), 1)
    rest = usable - kitchen - living
    weights = [rng.uniform(1.0, 1.4) if i == 0 else rng.uniform(0.7, 1.0) for i in range(bedrooms)]
    rooms = [Room("living", "living_room", living, True, None)]
    for i, w in enumerate(weights, 1):
        rooms.append(Room(f"bedroom{i}", "bedroom", round(rest * w / sum(weights), 1), True, None))
    rooms.append(Room("kitchen", "kitchen", kitchen, False, None))
    return rooms


def _place_thermometers(rng: random.Random, rooms: list[Room], vendor: str) -> None:
    """Living room always; master bedroom usually; other bedrooms sometimes; never the kitchen."""
    for r in rooms:
        if r.room_type == "living_room":
            r.sensor_vendor = vendor
        elif r.code == "bedroom1":
            r.sensor_vendor = vendor if rng.random() < 0.6 else None
        elif r.room_type == "bedroom":
            r.sensor_vendor = vendor if rng.random() < 0.25 else None


def _person(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(_SURNAMES) + rng.choice(_GIVEN)
    phone = rng.choice(_MOBILE_PREFIXES) + f"{rng.randrange(10 ** 8):08d}"
    return name, phone


def generate_city(seed: int = 7, households: int = DEFAULT_HOUSEHOLDS, *,
                  thermometer_share: float = 0.85, stopped_share: float = 0.04,
                  vendor_weights: tuple[float, float, float] = (0.5, 0.35, 0.15)) -> City:
    """Build the demo city. ``households`` is the total over the four substations (≥ 4).

    Buildings are filled floor by floor, unit by unit; the last building of a substation may be only
    partly enrolled (the rest of its flats are not yet connected), which keeps the total exact.
    """
    if households < len(SUBSTATIONS):
        raise ValueError(f"need at least {len(SUBSTATIONS)} households (one per substation), got {households}")
    rng = random.Random(seed)
    names = list(_COMMUNITY_NAMES)
    rng.shuffle(names)
    city = City(seed=seed, company_code="HD", company_name="滨海热力", region_code="tianjin",
                branch_code="B1", branch_name="滨海新区分公司", station_code="TJ", station_name="天津",
                design_outdoor_temp_c=-7.0, city_name="天津市", district_name="滨海新区", substations=[])
    name_i = 0
    for s_no, (spec, n_s) in enumerate(zip(SUBSTATIONS, _split(households, len(SUBSTATIONS))), 1):
        sub = Substation(spec=spec, communities=[])
        city.substations.append(sub)
        remaining = n_s
        c_no = 0
        while remaining > 0:
            c_no += 1
            base_name = names[name_i % len(names)]
            name = base_name if name_i < len(names) else f"{base_name}{name_i // len(names) + 1}期"
            name_i += 1
            comm = Community(code=f"{spec.code}-C{c_no}", name=name, street=rng.choice(_STREETS), buildings=[])
            sub.communities.append(comm)
            for b_no in range(1, rng.randint(2, 4) + 1):
                if remaining <= 0:
                    break
                if spec.era == "old":                       # walk-ups: several stairwells, 一梯两户
                    floors, n_units, doors = rng.choice((6, 6, 6, 7)), rng.randint(2, 3), 2
                else:                                       # towers: one or two cores, 一梯四户
                    floors, n_units, doors = rng.randint(11, 18), rng.randint(1, 2), 4
                bld = Building(code=f"{comm.code}-B{b_no:02d}", name=f"{b_no}号楼", number=b_no, floors=floors,
                               units=[])
                comm.buildings.append(bld)
                for u_no in range(1, n_units + 1):
                    if remaining <= 0:
                        break
                    unit = Unit(code=f"{bld.code}-U{u_no}", name=f"{u_no}单元", number=u_no)
                    bld.units.append(unit)
                    for floor in range(1, floors + 1):
                        for door in range(1, doors + 1):
                            if remaining <= 0:
                                break
                            remaining -= 1
                            city.households.append(_household(rng, city, spec, s_no, comm, c_no, bld, unit,
                                                              n_units, floor, door, doors, thermometer_share,
                                                              stopped_share, vendor_weights))
    # secondary design flow from the design load (R47: P ≈ 1.163 × V̇ × ΔT); loads as in simulators/thermal.py
    for sub in city.substations:
        area = sum(h.area_m2 for h in city.households if h.substation_code == sub.code)
        design_kw = area * DESIGN_LOAD_W_PER_M2 / 1000.0
        sub.design_flow_m3h = round(design_kw / (1.163 * (sub.spec.design_supply_c - sub.spec.design_return_c)), 2)
    return city


#: design heat load at the design outdoor temperature, W per m² of billing area (Tianjin, 2000s stock)
DESIGN_LOAD_W_PER_M2 = 45.0


def _household(rng: random.Random, city: City, spec: SubstationSpec, s_no: int, comm: Community, c_no: int,
               bld: Building, unit: Unit, n_units: int, floor: int, door: int, doors: int,
               thermometer_share: float, stopped_share: float, vendor_weights) -> Household:
    is_top, is_ground = floor == bld.floors, floor == 1
    is_gable = (unit.number == 1 and door == 1) or (unit.number == n_units and door == doors)
    placement = "top_floor" if is_top else "ground_floor" if is_ground else "gable_end" if is_gable else "normal"
    area = round(min(140.0, max(50.0, rng.triangular(50, 140, 88))), 2)
    rooms = _rooms(rng, area)
    has_thermometers = rng.random() < thermometer_share
    vendor = rng.choices(VENDORS, weights=vendor_weights)[0]
    if has_thermometers:
        _place_thermometers(rng, rooms, vendor)
    stopped = rng.random() < stopped_share
    segment = "non_residential" if is_ground and rng.random() < 0.05 else "residential"
    billing = "two_part_meter" if spec.era == "new" and rng.random() < 0.2 else "area"
    valved = True if spec.era == "new" else rng.random() < 0.7
    name, phone = _person(rng)
    # 户号: substation, community, building, unit, floor, door — digits only, safe as an MQTT topic level
    code = f"{s_no:02d}{c_no:02d}{bld.number:02d}{unit.number}{floor:02d}{door}"
    address = f"{city.city_name}{city.district_name}{comm.name}{bld.number}号楼{unit.number}单元{floor}{door:02d}"
    return Household(code=code, unit_code=unit.code, building_code=bld.code, community_code=comm.code,
                     substation_code=spec.code, floor=floor, door=door, area_m2=area,
                     heating_status="stopped" if stopped else "active", billing_method=billing, segment=segment,
                     placement_class=placement, individually_valved=valved, rooms=rooms, contact_name=name,
                     contact_phone=phone, contact_address=address, is_top=is_top, is_ground=is_ground,
                     is_gable=is_gable)
