"""A coupled substation ↔ household thermal model (numpy, vectorised, deterministic for a seed).

Substation (one per ``SubstationSpec``; secondary loop):
- Supply setpoint from the outdoor-compensation heating curve (R48 item 2), the classic quality-
  regulation curve for a design point Ts_d/Tr_d at the station's design outdoor temperature (R6)::

      φ  = (Ti − To) / (Ti − To_d)                       relative load
      Ts = Ti + ½(Ts_d + Tr_d − 2Ti)·φ^(1/(1+b)) + ½(Ts_d − Tr_d)·φ

  with radiator exponent b = 0.3 (floor heating 0.1), capped at 85 ℃ for radiators and 55 ℃ for floor
  heating (R45). The measured supply follows the setpoint with a 15-minute lag.
- Constant flow (design flow × pump speed). A pump failure leaves a 2 % residual flow; the primary valve
  closes and the supply water cools toward the plant-room temperature (τ ≈ 1.5 h).
- Return, flow and power are consistent by construction: Tr = Ts − Q/(1.163·V̇), P = 1.163·V̇·(Ts − Tr)
  (R47; kW, m³/h, K).

Household (one air node per flat, first-order RC)::

      C dT/dt = Q_rad + UA_nb·(T_building − T) − UA·(T − To) + G

- Q_rad: radiator output K·(T_m − T)^(1+b), T_m the mean water temperature, limited by the flat's share of
  the flow (solved per step by vectorised bisection). Stopped (报停) flats have their radiators shut (K = 0).
- UA: envelope loss from the design load (45 W/m² at −7 ℃), ×1.35 top floor, ×1.15 ground floor, ×1.2 gable
  end (roof, ground slab, extra external wall). Radiators were sized for only 70 % of that extra loss, which is
  why R17's unfavourable flats run cooler.
- UA_nb: heat exchange with the other flats of the building; it is what keeps a 报停 flat at ~10–14 ℃.
- G: internal gains (people, appliances), W/m² of area; vacant/stopped flats get little.
- A per-flat radiator-size factor (lognormal) spreads normal operation over ~19–23 ℃.
- C = τ·UA with τ ≈ 20 h (radiators) or 30 h (floor heating: the screed stores heat), so a pump failure
  cools the affected flats below 18 ℃ in a few hours and they recover a few hours after the pump restarts.

Time is simulated (epoch seconds); ``advance_to(t)`` integrates with explicit steps of ``dt_s``
(default 300 s, far below the smallest time constant). Nothing here reads the clock.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from simulators.city import DESIGN_LOAD_W_PER_M2, City
from simulators.weather import OutdoorModel

C_W = 1163.0            # W per (m³/h · K): ρ·c_p/3600 near 1000 kg/m³ (R47: 1.163 kW)


@dataclass(frozen=True)
class ThermalParams:
    indoor_design_c: float = 20.0          # Ti of the heating curve, ℃
    tau_radiator_h: float = 20.0           # C/UA of a flat heated by radiators, h
    tau_floor_h: float = 30.0              # C/UA with floor heating (screed), h
    gain_w_m2: float = 3.0                 # internal gains of an occupied flat, W/m²
    gain_stopped_w_m2: float = 0.5         # a 报停 flat is usually empty
    neighbour_ratio: float = 2.0           # UA_nb / UA of a normal flat
    loss_top: float = 1.30
    loss_ground: float = 1.15
    loss_gable: float = 1.20
    radiator_compensation: float = 0.7     # share of the extra placement loss the radiators were sized for
    radiator_size_sd: float = 0.06         # lognormal spread of radiator size (the per-flat offset)
    radiator_size_mean: float = 0.12       # ln-mean: radiators are typically a little oversized
    supply_max_radiator_c: float = 85.0    # R45
    supply_max_floor_c: float = 55.0       # R45 (≤ 60 ℃)
    curve_shift_sd_k: float = 0.5          # operators' parallel shift of each substation's curve, K
    supply_lag_s: float = 900.0
    supply_cool_s: float = 5400.0          # pump off: supply water cools toward the plant room
    plant_room_c: float = 15.0
    residual_flow: float = 0.02            # share of design flow with the pump stopped (thermosiphon)
    pump_freq_hz: float = 42.0
    dt_s: float = 300.0
    spinup_s: float = 3 * 86400.0


#: pump_on(substation_code, t_epoch_s) -> bool
PumpSchedule = Callable[[str, float], bool]


def _always_on(code: str, t: float) -> bool:   # noqa: ARG001
    return True


class ThermalModel:
    """The city's heat: substations and flats stepped together in simulated time. Thread-safe."""

    def __init__(self, city: City, outdoor: OutdoorModel, *, seed: int | None = None,
                 params: ThermalParams | None = None, pump_on: PumpSchedule | None = None):
        self.city, self.outdoor = city, outdoor
        self.p = p = params or ThermalParams()
        self.pump_on = pump_on or _always_on
        self.lock = threading.RLock()
        rng = np.random.default_rng([city.seed if seed is None else seed, 0x7E4])
        hh = city.households
        self.sub_codes = [s.code for s in city.substations]
        sub_index = {c: i for i, c in enumerate(self.sub_codes)}
        self.h_sub = np.array([sub_index[h.substation_code] for h in hh], dtype=int)
        b_codes = sorted({h.building_code for h in hh})
        b_index = {c: i for i, c in enumerate(b_codes)}
        self.h_bld = np.array([b_index[h.building_code] for h in hh], dtype=int)
        self.n_bld = len(b_codes)
        self.bld_count = np.bincount(self.h_bld, minlength=self.n_bld).astype(float)

        specs = [s.spec for s in city.substations]
        self.s_ts_d = np.array([s.design_supply_c for s in specs])
        self.s_tr_d = np.array([s.design_return_c for s in specs])
        self.s_floor = np.array([s.heating_type == "floor" for s in specs])
        self.s_b = np.where(self.s_floor, 0.1, 0.3)
        self.s_max = np.where(self.s_floor, p.supply_max_floor_c, p.supply_max_radiator_c)
        self.s_shift = rng.normal(0.0, p.curve_shift_sd_k, len(specs))
        self.to_design = city.design_outdoor_temp_c

        area = np.array([h.area_m2 for h in hh])
        self.area = area
        top = np.array([h.is_top for h in hh])
        ground = np.array([h.is_ground for h in hh])
        gable = np.array([h.is_gable for h in hh])
        place = np.where(top, p.loss_top, 1.0) * np.where(ground, p.loss_ground, 1.0) * np.where(gable, p.loss_gable, 1.0)
        self.active = np.array([h.heating_status == "active" for h in hh])
        ua_base = area * DESIGN_LOAD_W_PER_M2 / (p.indoor_design_c - self.to_design)      # W/K
        self.ua = ua_base * place
        self.ua_nb = ua_base * p.neighbour_ratio
        sized = ua_base * (1 + p.radiator_compensation * (place - 1))                      # W/K the radiators cover
        q_design = sized * (p.indoor_design_c - self.to_design)                             # W at design
        b = self.s_b[self.h_sub]
        dtm = (self.s_ts_d + self.s_tr_d)[self.h_sub] / 2 - p.indoor_design_c
        size = np.exp(rng.normal(p.radiator_size_mean, p.radiator_size_sd, len(hh)))
        self.k_rad = np.where(self.active, size * q_design / dtm ** (1 + b), 0.0)
        self.h_b1 = 1 + b                      # radiator exponent 1 + b (EN 442: ≈1.3)
        floor_h = self.s_floor[self.h_sub]
        self.cap = self.ua * np.where(floor_h, p.tau_floor_h, p.tau_radiator_h) * 3600.0    # J/K
        self.gain = area * np.where(self.active, p.gain_w_m2, p.gain_stopped_w_m2)
        # design flow per substation (m³/h) and each active flat's share of it (balanced network)
        # (the network is sized for every flat; 报停 flats' valves are shut, so the active ones share the flow)
        self.s_q_design = np.bincount(self.h_sub, weights=q_design, minlength=len(specs))  # W
        self.s_flow_design = self.s_q_design / (C_W * (self.s_ts_d - self.s_tr_d))
        q_act = np.where(self.active, q_design, 0.0)
        s_q_act = np.bincount(self.h_sub, weights=q_act, minlength=len(specs))
        self.h_share = q_act / np.maximum(s_q_act, 1e-9)[self.h_sub]

        # state
        self.t: float | None = None
        self.T = np.full(len(hh), p.indoor_design_c)
        self.s_supply = self.s_ts_d.copy()
        self.s_pump = np.ones(len(specs), dtype=bool)
        self.s_return = self.s_tr_d.copy()
        self.s_flow = self.s_flow_design.copy()
        self.s_power = np.zeros(len(specs))
        self.to = 0.0

        # static per-room offsets (living 0; bedrooms a little cooler/warmer; kitchen cooler) for readings
        self.sensors = city.sensors()
        h_index = {h.code: i for i, h in enumerate(hh)}
        self.sensor_h = np.array([h_index[h.code] for h, _ in self.sensors], dtype=int)
        self.sensor_offset = np.array([0.0 if r.room_type == "living_room" else
                                       rng.normal(-0.2, 0.3) if r.room_type == "bedroom" else -1.5
                                       for _, r in self.sensors])
        self.sensor_keys = [f"room:{h.code}:{r.code}:room_temp" for h, r in self.sensors]

    # -- control ---------------------------------------------------------------------------------
    def curve(self, to: float) -> np.ndarray:
        """Supply setpoint per substation, ℃, for outdoor temperature ``to`` (R48 heating curve)."""
        ti = self.p.indoor_design_c
        phi = max((ti - to) / (ti - self.to_design), 0.1)
        ts = (ti + 0.5 * (self.s_ts_d + self.s_tr_d - 2 * ti) * phi ** (1 / (1 + self.s_b))
              + 0.5 * (self.s_ts_d - self.s_tr_d) * phi + self.s_shift)
        return np.minimum(ts, self.s_max)

    # -- integration -----------------------------------------------------------------------------
    def reset(self, t0: float) -> None:
        """Start at ``t0`` (epoch s) from a spun-up state: integrate the preceding days from 20 ℃."""
        with self.lock:
            self.t = t0 - self.p.spinup_s
            self.T[:] = self.p.indoor_design_c
            self.s_supply = self.curve(float(self.outdoor.temperature(self.t)))
            self.advance_to(t0)

    def advance_to(self, t: float) -> None:
        with self.lock:
            if self.t is None:
                self.reset(t)
                return
            while self.t < t - 1e-6:
                self._step(min(self.p.dt_s, t - self.t))

    def _step(self, dt: float) -> None:
        p = self.p
        t_mid = self.t + dt / 2
        to = float(self.outdoor.temperature(t_mid))
        pump = np.array([bool(self.pump_on(c, t_mid)) for c in self.sub_codes])
        target = np.where(pump, self.curve(to), p.plant_room_c)
        tau = np.where(pump, p.supply_lag_s, p.supply_cool_s)
        self.s_supply = target + (self.s_supply - target) * np.exp(-dt / tau)
        flow = self.s_flow_design * np.where(pump, 1.0, p.residual_flow)

        # radiator output per flat: solve Q = K·(Ts − Q/(2·c·f) − T)^(1+b), 0 ≤ Q ≤ c·f·(Ts − T)
        ts = self.s_supply[self.h_sub]
        f = flow[self.h_sub] * self.h_share
        cf = C_W * f
        qmax = np.maximum(cf * (ts - self.T), 0.0)
        lo, hi = np.zeros_like(qmax), qmax.copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            for _ in range(24):       # Qmax/2^24: far below a watt
                mid = (lo + hi) / 2
                excess = np.maximum(ts - np.where(cf > 0, mid / (2 * cf), 0.0) - self.T, 0.0)
                g = self.k_rad * excess ** self.h_b1 - mid
                lo = np.where(g > 0, mid, lo)
                hi = np.where(g > 0, hi, mid)
        q = (lo + hi) / 2

        # neighbours: mean of the other flats in the same building
        s = np.bincount(self.h_bld, weights=self.T, minlength=self.n_bld)
        n = self.bld_count[self.h_bld]
        others = np.where(n > 1, (s[self.h_bld] - self.T) / np.maximum(n - 1, 1), self.T)
        dT = (q + self.ua_nb * (others - self.T) - self.ua * (self.T - to) + self.gain) / self.cap
        self.T = self.T + dT * dt

        qs = np.bincount(self.h_sub, weights=q, minlength=len(self.sub_codes))           # W
        self.s_return = self.s_supply - qs / (C_W * flow)
        self.s_flow, self.s_power, self.s_pump, self.to = flow, qs / 1000.0, pump, to
        self.t += dt

    # -- outputs -----------------------------------------------------------------------------------
    def household_temperatures(self) -> dict[str, float]:
        with self.lock:
            return {h.code: float(x) for h, x in zip(self.city.households, self.T)}

    def room_readings(self, t: float) -> np.ndarray:
        """Thermometer readings (℃, unrounded) for ``self.sensor_keys`` at the current state; sensor noise
        is seeded by the sample time, so the same state and time give the same values."""
        with self.lock:
            noise = np.random.default_rng([self.city.seed, int(t)]).normal(0.0, 0.05, len(self.sensor_h))
            return self.T[self.sensor_h] + self.sensor_offset + noise

    def substation_values(self, code: str) -> dict[str, float]:
        """Current point values of one substation, named as in devices.yaml (R49 point list)."""
        with self.lock:
            i = self.sub_codes.index(code)
            ts, tr, flow, pump = float(self.s_supply[i]), float(self.s_return[i]), float(self.s_flow[i]), bool(self.s_pump[i])
            ti = self.p.indoor_design_c
            phi = max((ti - self.to) / (ti - self.to_design), 0.1)
            load = float(self.s_power[i] * 1000.0 / self.s_q_design[i]) if self.s_q_design[i] else 0.0
            valve = min(100.0, 100.0 * load * 1.1) if pump else 0.0
            supply1 = min(125.0, 60.0 + 65.0 * phi) if pump else max(tr, 60.0)
            return {
                "supply_temp_1": round(supply1, 2),
                "return_temp_1": round(tr + (4.0 + 8.0 * phi if pump else 2.0), 2),
                "supply_temp_2": round(ts, 2),
                "return_temp_2": round(tr, 2),
                "supply_pressure_2": 0.45 if pump else 0.30,
                "return_pressure_2": 0.25 if pump else 0.30,
                "outdoor_temp": round(self.to, 2),
                "pump_status": 1.0 if pump else 0.0,
                "pump_freq": round(self.p.pump_freq_hz + 3.0 * min(phi, 1.5), 1) if pump else 0.0,
                "valve_pos": round(valve, 1),
                "flow_2": round(flow, 3),
                # R47: P = 1.163 × V̇ × ΔT (kW), consistent with the reported flow and temperatures
                "heat_power": round(1.163 * flow * (ts - tr), 2),
            }
