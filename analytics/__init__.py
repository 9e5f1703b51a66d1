"""analytics: indoor-temperature compliance (GB/T 33833-2017 §5.1; domain.md R1–R25, R41, R45–R48).

Pure numpy core (no I/O) with query modules beside it and a scheduled job:

- ``policy``      regional rules as data (policies.yaml): ``resolve_policy(region_code, day) -> Policy``
- ``compliance``  the pure core: ``room_day_stats``, ``classify``, ``evaluate``, ``exemption_codes``,
                  ``household_rollup`` (vectorised over many rooms; units and gap rules in its docstring)
- ``store``       SQL for compliance: sample loading (binary COPY), ``upsert_days``, the dirty queue,
                  ``household_days`` / ``room_days`` readers, ``mark_dirty``, ``mirror_policies``
- ``job``         ``run_compliance``, ``process_dirty``, ``compute_households``, ``schedule_compliance``
- ``cli``         ``heatdesk compliance run --from D --to D [--household CODE]`` and ``compliance dirty``
- ``evidence``    ``household_curve``, ``render_curve``, ``build_pack``, ``verify_pack_hash``
- ``diagnosis``   ``diagnose`` (pure) and ``diagnose_household``: substation / building / household
- ``substation``  ``heat_power_kw``, ``heating_curve``, ``evaluate_heuristics`` (R48), ``substation_kpis``,
                  ``compliance_rate`` (R20)
- ``refund``      ``refund_statement`` (pure, R22–R25) and ``refund_for_household``
- ``queries``     read-only SQL for evidence, diagnosis, KPIs and refunds

Tables written: compliance_day (per room and local day; read by ticketing and dunning, columns are a
contract), compliance_run, region_policy; compliance_dirty is consumed here (ingest's rollup
fills it from readings_dirty; ``store.mark_dirty`` lets other modules add days).
"""
