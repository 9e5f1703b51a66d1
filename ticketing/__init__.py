"""Work orders (工单) from every channel, tied to telemetry evidence.

- ``model``      types, channels, statuses, errors (InvalidTransition → 409)
- ``workflow``   the state machine as a table of allowed transitions
- ``store``      create (催单重单 duplicate linking), transitions, history, attachments, dunning questions
- ``sla``        SLA clocks (R26), refund trigger clock (R27), the idempotent SLA checker
- ``dispatch``   explainable scoring, manual dispatch, 改派, 抢单, crews and shifts
- ``temptest``   测温 records (R11–R13, R18) and ``confirmed_noncompliant_day``
- ``auto``       tickets from telemetry (incidents, 测温, maintenance) + scheduler wiring
- ``screenpop``  来电弹屏 by phone blind index
- ``reports``    办结率, 及时率, 返工率, 满意度, 投诉率 (R20), CSV/XLSX
- ``policy``     ``policy.yaml`` (per region/company data) overlaid with the analytics policy
"""
