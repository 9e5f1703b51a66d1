-- heatdesk schema: one file, applied idempotently by `heatdesk db init` (core/db.py apply_schema).
--
-- Runs on plain PostgreSQL >= 14 and, when the timescaledb extension is *available* on the server,
-- turns `readings` into a hypertable with compression and an hourly continuous aggregate.
-- The query surface is the same on both paths: `readings` and the view `readings_hourly`.
--
-- Sections are owned by modules (see docs/ARCHITECTURE.md); each section only adds objects with
-- IF NOT EXISTS / CREATE OR REPLACE so that re-applying is harmless. Column additions to existing
-- tables use ALTER TABLE ... ADD COLUMN IF NOT EXISTS.

CREATE TABLE IF NOT EXISTS schema_version (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    timescaledb boolean NOT NULL DEFAULT false
);

-- ============================================================================================
-- == sites (core) =============================================================================
-- company → branch (分公司) → substation (换热站) → community (小区) → building → unit → household → room

CREATE TABLE IF NOT EXISTS company (
    id          serial PRIMARY KEY,
    code        text NOT NULL UNIQUE,
    name        text NOT NULL,
    region_code text NOT NULL DEFAULT 'national'   -- resolves region policy (analytics), tariffs, SLA
);

CREATE TABLE IF NOT EXISTS branch (
    id          serial PRIMARY KEY,
    company_id  integer NOT NULL REFERENCES company(id),
    code        text NOT NULL UNIQUE,
    name        text NOT NULL
);

CREATE TABLE IF NOT EXISTS weather_station (
    code                  text PRIMARY KEY,
    name                  text NOT NULL,
    -- 供暖室外计算温度, GB 50736-2012 Annex A (domain.md R6): below this daily mean a day is exempt.
    design_outdoor_temp_c double precision NOT NULL
);

CREATE TABLE IF NOT EXISTS substation (
    id                   serial PRIMARY KEY,
    branch_id            integer NOT NULL REFERENCES branch(id),
    code                 text NOT NULL UNIQUE,
    name                 text NOT NULL,
    heating_type         text NOT NULL DEFAULT 'radiator' CHECK (heating_type IN ('radiator', 'floor')),
    design_supply_c      double precision NOT NULL DEFAULT 75,   -- R45: radiator 75/50
    design_return_c      double precision NOT NULL DEFAULT 50,
    design_flow_m3h      double precision,
    weather_station_code text REFERENCES weather_station(code)
);

CREATE TABLE IF NOT EXISTS community (
    id            serial PRIMARY KEY,
    substation_id integer NOT NULL REFERENCES substation(id),
    code          text NOT NULL UNIQUE,
    name          text NOT NULL
);

CREATE TABLE IF NOT EXISTS building (
    id           serial PRIMARY KEY,
    community_id integer NOT NULL REFERENCES community(id),
    code         text NOT NULL UNIQUE,
    name         text NOT NULL,
    floors       integer
);

CREATE TABLE IF NOT EXISTS unit (
    id          serial PRIMARY KEY,
    building_id integer NOT NULL REFERENCES building(id),
    code        text NOT NULL UNIQUE,
    name        text NOT NULL
);

-- Household: no personal data here (R60). Names, phones, addresses live in pii.household_contact.
CREATE TABLE IF NOT EXISTS household (
    id                  serial PRIMARY KEY,
    unit_id             integer NOT NULL REFERENCES unit(id),
    code                text NOT NULL UNIQUE,              -- account number (户号)
    floor               integer,
    area_m2             double precision NOT NULL,         -- billing area (建筑面积)
    heating_status      text NOT NULL DEFAULT 'active' CHECK (heating_status IN ('active', 'stopped')),  -- stopped = 报停
    billing_method      text NOT NULL DEFAULT 'area' CHECK (billing_method IN ('area', 'two_part_meter', 'allocation')),
    segment             text NOT NULL DEFAULT 'residential' CHECK (segment IN ('residential', 'non_residential', 'large')),
    placement_class     text NOT NULL DEFAULT 'normal',    -- R17: top_floor, ground_floor, gable_end, complaint, normal
    individually_valved boolean NOT NULL DEFAULT true,     -- R36: 分户 control, needed for any cut-off candidate
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS household_unit_idx ON household (unit_id);

CREATE TABLE IF NOT EXISTS room (
    id                    serial PRIMARY KEY,
    household_id          integer NOT NULL REFERENCES household(id),
    code                  text NOT NULL,                   -- e.g. 'living', 'bedroom1'
    room_type             text NOT NULL CHECK (room_type IN ('bedroom', 'living_room', 'kitchen', 'bathroom', 'study', 'other')),
    area_m2               double precision,
    counts_for_compliance boolean NOT NULL,                -- R4: bedroom and living room
    UNIQUE (household_id, code)
);

CREATE SCHEMA IF NOT EXISTS pii;
-- Personal data (PIPL, R55–R60): encrypted fields (SM4-GCM, core/pii.py) and a keyed SM3-HMAC
-- blind index for equality search by phone. Never joined into telemetry tables.
CREATE TABLE IF NOT EXISTS pii.household_contact (
    household_id  integer PRIMARY KEY REFERENCES household(id),
    name_enc      bytea,
    phone_enc     bytea,
    phone_index   bytea,                                   -- SM3-HMAC(key, normalised phone)
    address_enc   bytea,
    key_version   integer NOT NULL DEFAULT 1,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS household_contact_phone_idx ON pii.household_contact (phone_index);
-- SM3-HMAC(key, 'name' ‖ NFKC full name): exact-name search by index at any scale (partial names still
-- decrypt a bounded scan, api/queries.py). Filled by core.pii.store_contact; older rows by backfill_name_index.
ALTER TABLE pii.household_contact ADD COLUMN IF NOT EXISTS name_index bytea;
CREATE INDEX IF NOT EXISTS household_contact_name_idx ON pii.household_contact (name_index);

-- ============================================================================================
-- == telemetry (core / ingest) ================================================================

-- One row per measured point. `key` is the stable id the adapters produce (devices.yaml).
CREATE TABLE IF NOT EXISTS sensor (
    id                   serial PRIMARY KEY,
    key                  text NOT NULL UNIQUE,
    metric               text NOT NULL,          -- room_temp, outdoor_temp, supply_temp_2, return_temp_2, flow_2, ...
    unit                 text NOT NULL DEFAULT '',
    protocol             text NOT NULL,
    device_id            text NOT NULL,
    point                text NOT NULL DEFAULT '',
    household_code       text,                   -- as captured (topic/devices.yaml); linked below when known
    room_code            text,
    substation_code      text,
    weather_station_code text,
    household_id         integer REFERENCES household(id),
    room_id              integer REFERENCES room(id),
    substation_id        integer REFERENCES substation(id),
    calibration_offset   double precision NOT NULL DEFAULT 0,   -- R18, added to raw values by analytics
    calibration_valid_from timestamptz,
    calibration_valid_to   timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sensor_household_idx ON sensor (household_id);
CREATE INDEX IF NOT EXISTS sensor_substation_idx ON sensor (substation_id);
CREATE INDEX IF NOT EXISTS sensor_device_idx ON sensor (device_id);
-- Outdoor thermometers are found by metric (at the substation OR the weather station): without this a
-- curve scanned all 200 k sensors of a 100 k-household city for them (bench api, issue 6).
CREATE INDEX IF NOT EXISTS sensor_metric_idx ON sensor (metric);
-- Rooms → their thermometers (every curve, verdict and diagnosis): without it each curve scanned all sensors.
CREATE INDEX IF NOT EXISTS sensor_room_idx ON sensor (room_id);

-- Narrow readings table. Unique key includes time (TimescaleDB requirement, field-lessons.md).
CREATE TABLE IF NOT EXISTS readings (
    time      timestamptz      NOT NULL,
    sensor_id integer          NOT NULL,
    value     double precision NOT NULL,
    quality   smallint         NOT NULL DEFAULT 0,   -- core/quality.py
    CONSTRAINT readings_sensor_time_key UNIQUE (sensor_id, time)
);

-- Hours touched by each write (late data included): drives rollup refresh and compliance recompute.
CREATE TABLE IF NOT EXISTS readings_dirty (
    sensor_id integer     NOT NULL,
    hour      timestamptz NOT NULL,
    PRIMARY KEY (sensor_id, hour)
);

-- Plain-PostgreSQL hourly rollup, kept current by our scheduler (ingest/rollup.py).
CREATE TABLE IF NOT EXISTS readings_hourly_rollup (
    sensor_id  integer          NOT NULL,
    bucket     timestamptz      NOT NULL,
    mean       double precision,
    min        double precision,
    max        double precision,
    count      integer          NOT NULL,
    good_count integer          NOT NULL,
    PRIMARY KEY (sensor_id, bucket)
);

-- Everything we could not store as a reading, with why (never silently dropped).
CREATE TABLE IF NOT EXISTS rejects (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    source      text NOT NULL,          -- mqtt | modbus | opcua | import
    device_id   text,
    address     text,                   -- topic, host:port/unit/register, endpoint/node id
    payload     bytea,
    reason      text NOT NULL,          -- short machine code: malformed_json, unit_unknown, out_of_range...
    detail      text
);
CREATE INDEX IF NOT EXISTS rejects_received_idx ON rejects (received_at);

-- Per device, per minute counters written in the same transaction as the readings (heatdesk status).
CREATE TABLE IF NOT EXISTS ingest_counter (
    device_id text        NOT NULL,
    protocol  text        NOT NULL,
    minute    timestamptz NOT NULL,
    readings  integer     NOT NULL DEFAULT 0,
    rejects   integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, minute)
);

CREATE TABLE IF NOT EXISTS device_status (
    device_id   text PRIMARY KEY,
    protocol    text NOT NULL,
    last_seen   timestamptz,
    connected   boolean NOT NULL DEFAULT false,
    last_error  text,
    error_count bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Known gaps (OPC UA reconnect, Modbus outage): evidence shows them as gaps, never interpolated.
CREATE TABLE IF NOT EXISTS device_gap (
    id         bigserial PRIMARY KEY,
    device_id  text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz,
    reason     text NOT NULL,
    UNIQUE (device_id, started_at)
);

-- Official daily means per weather station (R6 exemption uses the meteorological bureau's value).
CREATE TABLE IF NOT EXISTS weather_daily (
    station_code text NOT NULL REFERENCES weather_station(code),
    day          date NOT NULL,
    mean_c       double precision NOT NULL,
    source       text NOT NULL DEFAULT 'official' CHECK (source IN ('official', 'sensor')),
    PRIMARY KEY (station_code, day)
);

-- Path selection: TimescaleDB when the extension is installable, plain PostgreSQL otherwise.
DO $$
DECLARE
    has_ts boolean := EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb');
BEGIN
    IF has_ts THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('readings', 'time', chunk_time_interval => interval '7 days',
                                  if_not_exists => true, migrate_data => true);
        -- Compression settings can only be set before chunks are compressed: set them once.
        IF NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                       WHERE hypertable_name = 'readings' AND compression_enabled) THEN
            EXECUTE 'ALTER TABLE readings SET (timescaledb.compress, timescaledb.compress_segmentby = ''sensor_id'', timescaledb.compress_orderby = ''time'')';
        END IF;
        PERFORM add_compression_policy('readings', interval '14 days', if_not_exists => true);
        -- Retention is the operator's decision (R60): no retention policy is added here.
        IF NOT EXISTS (SELECT 1 FROM pg_class WHERE relname = 'readings_hourly_cagg') THEN
            EXECUTE $v$
                CREATE MATERIALIZED VIEW readings_hourly_cagg WITH (timescaledb.continuous) AS
                SELECT sensor_id, time_bucket(interval '1 hour', time) AS bucket,
                       avg(value) AS mean, min(value) AS min, max(value) AS max,
                       count(*)::integer AS count,
                       (count(*) FILTER (WHERE quality = 0))::integer AS good_count
                FROM readings GROUP BY sensor_id, time_bucket(interval '1 hour', time)
                WITH NO DATA $v$;
        END IF;
        EXECUTE 'CREATE OR REPLACE VIEW readings_hourly AS
                 SELECT sensor_id, bucket, mean, min, max, count, good_count FROM readings_hourly_cagg';
    ELSE
        CREATE INDEX IF NOT EXISTS readings_time_brin ON readings USING brin (time) WITH (pages_per_range = 32);
        -- Plain PostgreSQL keeps rows in arrival order (time-major), so one sensor's week lies on ~500 heap
        -- pages; with value and quality in the unique key's leaf entries a curve or verdict reads it from a
        -- handful of index pages (index-only scan). Measured at 100 M readings: ~1 000 → ~22 buffers per
        -- household curve (bench api, issue 6). TimescaleDB gets the same locality from per-sensor
        -- compression instead. Rebuilding the key of a filled table locks it, so that is done only while the
        -- table is empty (a new install); README 'Plain PostgreSQL or TimescaleDB' gives the online steps.
        IF NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                        WHERE c.relname = 'readings_sensor_time_key' AND i.indnatts > i.indnkeyatts) THEN
            IF NOT EXISTS (SELECT 1 FROM readings LIMIT 1) THEN
                ALTER TABLE readings DROP CONSTRAINT readings_sensor_time_key,
                    ADD CONSTRAINT readings_sensor_time_key UNIQUE (sensor_id, time) INCLUDE (value, quality);
            ELSE
                RAISE NOTICE 'readings_sensor_time_key is not covering (value, quality): curves read more pages; see README ''Plain PostgreSQL or TimescaleDB''';
            END IF;
        END IF;
        EXECUTE 'CREATE OR REPLACE VIEW readings_hourly AS
                 SELECT sensor_id, bucket, mean, min, max, count, good_count FROM readings_hourly_rollup';
    END IF;
END $$;

-- ============================================================================================
-- == analytics (owned by analytics/) ==========================================================
-- Per room and day verdicts (R19). Read by ticketing and dunning; written only by analytics.
CREATE TABLE IF NOT EXISTS compliance_day (
    household_id     integer NOT NULL REFERENCES household(id),
    room_id          integer NOT NULL REFERENCES room(id),
    day              date    NOT NULL,                 -- local day (settings.timezone)
    mean_c           double precision,                 -- time-weighted mean of valid samples
    min_c            double precision,
    max_c            double precision,
    stat_c           double precision,                 -- the statistic compared with the threshold
    threshold_c      double precision NOT NULL,
    minutes_below    double precision,
    degree_hours_below double precision,
    coverage         double precision NOT NULL,        -- 0..1 share of the day covered by valid samples
    status           text NOT NULL CHECK (status IN ('compliant', 'non_compliant', 'unknown', 'exempt')),
    reason           text,                             -- exemption or unknown reason code
    refund_ratio     double precision NOT NULL DEFAULT 0,   -- tier ratio (R22) when non-compliant
    policy_code      text NOT NULL,
    policy_version   integer NOT NULL,
    code_version     text NOT NULL,
    computed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (household_id, room_id, day)
);
CREATE INDEX IF NOT EXISTS compliance_day_day_idx ON compliance_day (day);

-- Household/day view: non-compliant if any counted room is (R19).
CREATE OR REPLACE VIEW compliance_household_day AS
SELECT household_id, day,
       CASE WHEN bool_or(status = 'non_compliant') THEN 'non_compliant'
            WHEN bool_and(status = 'exempt') THEN 'exempt'
            WHEN bool_or(status = 'unknown') THEN 'unknown'
            ELSE 'compliant' END AS status,
       min(stat_c) AS worst_stat_c,
       max(refund_ratio) AS refund_ratio,
       min(coverage) AS min_coverage
FROM compliance_day GROUP BY household_id, day;

-- Days whose inputs changed after they were computed (late readings, new exemptions).
CREATE TABLE IF NOT EXISTS compliance_dirty (
    household_id integer NOT NULL,
    day          date    NOT NULL,
    marked_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (household_id, day)
);

ALTER TABLE compliance_day ADD COLUMN IF NOT EXISTS n_samples integer;           -- valid samples that day
ALTER TABLE compliance_day ADD COLUMN IF NOT EXISTS statistic text;              -- mean | min_hourly_mean | percentile
ALTER TABLE compliance_day ADD COLUMN IF NOT EXISTS placement_class text;        -- R17, copied for KPIs by class

-- Mirror of analytics/policies.yaml (C1) for SQL readers; rewritten by analytics/store.mirror_policies.
CREATE TABLE IF NOT EXISTS region_policy (
    code           text    NOT NULL,
    version        integer NOT NULL,
    name           text    NOT NULL,
    effective_from date    NOT NULL,
    effective_to   date,
    threshold_c    double precision NOT NULL,
    body           jsonb   NOT NULL,          -- the full policy (tiers, season, statistic …)
    digest         text    NOT NULL,          -- sha256 prefix of the policy file it came from
    loaded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (code, version)
);

-- One row per compliance job run (what was computed, with which code and policy file).
CREATE TABLE IF NOT EXISTS compliance_run (
    id            bigserial PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    kind          text NOT NULL,              -- range | dirty | nightly
    day_from      date,
    day_to        date,
    households    integer NOT NULL DEFAULT 0,
    room_days     integer NOT NULL DEFAULT 0,
    counts        jsonb NOT NULL DEFAULT '{}',
    code_version  text NOT NULL,
    policy_digest text NOT NULL
);

-- ============================================================================================
-- == ticketing (owned by ticketing/) ==========================================================
CREATE TABLE IF NOT EXISTS ticket (
    id            bigserial PRIMARY KEY,
    no            text NOT NULL UNIQUE,                -- human number, e.g. GD20261123-000123
    type          text NOT NULL CHECK (type IN ('repair', 'complaint', 'inquiry', 'temp_test', 'stop_heat',
                                                'resume_heat', 'valve', 'inspection', 'incident', 'maintenance')),
    channel       text NOT NULL CHECK (channel IN ('phone', 'wechat', 'hotline_12345', 'walk_in', 'app', 'auto')),
    status        text NOT NULL DEFAULT 'new',
    priority      smallint NOT NULL DEFAULT 3,         -- 1 urgent .. 4 low
    household_id  integer REFERENCES household(id),
    unit_id       integer REFERENCES unit(id),
    building_id   integer REFERENCES building(id),
    substation_id integer REFERENCES substation(id),
    description   text NOT NULL DEFAULT '',
    low_temperature boolean NOT NULL DEFAULT false,    -- complaint about room temperature (R27 refund clock)
    reported_at   timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    closed_at     timestamptz,
    parent_id     bigint REFERENCES ticket(id),        -- incident link / merged duplicate
    user_caused   text,                                -- R10 finding code, if the visit found one
    external_ref  text                                 -- 12345 etc. (R28)
);
CREATE INDEX IF NOT EXISTS ticket_household_idx ON ticket (household_id, status);

CREATE TABLE IF NOT EXISTS ticket_event (
    id          bigserial PRIMARY KEY,
    ticket_id   bigint NOT NULL REFERENCES ticket(id),
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    from_status text,
    to_status   text,
    data        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS ticket_event_ticket_idx ON ticket_event (ticket_id);

-- Ticketing additions (ticketing/store.py is the only writer of these tables).
CREATE SEQUENCE IF NOT EXISTS ticket_no_seq;
ALTER TABLE ticket ADD COLUMN IF NOT EXISTS category        text;      -- leak, no_heat, outage, low_temp ... (SLA key)
ALTER TABLE ticket ADD COLUMN IF NOT EXISTS community_id    integer REFERENCES community(id);
ALTER TABLE ticket ADD COLUMN IF NOT EXISTS company_id      integer REFERENCES company(id);
ALTER TABLE ticket ADD COLUMN IF NOT EXISTS sensor_id       integer REFERENCES sensor(id);   -- maintenance tickets
ALTER TABLE ticket ADD COLUMN IF NOT EXISTS link_kind       text;      -- why parent_id is set: duplicate | incident
ALTER TABLE ticket ADD COLUMN IF NOT EXISTS assignee_id     integer;   -- technician.id
ALTER TABLE ticket ADD COLUMN IF NOT EXISTS station_id      integer;   -- repair_station.id
ALTER TABLE ticket ADD COLUMN IF NOT EXISTS dispatch_round  integer NOT NULL DEFAULT 0;   -- 2 = 二次派单
ALTER TABLE ticket ADD COLUMN IF NOT EXISTS urge_count      integer NOT NULL DEFAULT 0;   -- 催办
ALTER TABLE ticket ADD COLUMN IF NOT EXISTS satisfaction    smallint CHECK (satisfaction BETWEEN 1 AND 5);
ALTER TABLE ticket ADD COLUMN IF NOT EXISTS resolved_at     timestamptz;
ALTER TABLE ticket ADD COLUMN IF NOT EXISTS cancel_reason   text;
ALTER TABLE ticket ADD COLUMN IF NOT EXISTS auto_key        text;      -- what an auto ticket watches (R48 rule code)
ALTER TABLE ticket ADD COLUMN IF NOT EXISTS updated_at      timestamptz NOT NULL DEFAULT now();
CREATE INDEX IF NOT EXISTS ticket_unit_type_idx ON ticket (unit_id, type, reported_at);
CREATE INDEX IF NOT EXISTS ticket_building_type_idx ON ticket (building_id, type, reported_at);
CREATE INDEX IF NOT EXISTS ticket_status_idx ON ticket (status, type);
CREATE INDEX IF NOT EXISTS ticket_reported_idx ON ticket (reported_at);
CREATE INDEX IF NOT EXISTS ticket_parent_idx ON ticket (parent_id);
-- Incidents (outages) are few among a million tickets; refunds (R25 stoppage days), the dunning gate and
-- the screen pop look them up by type on every batch/call.
CREATE INDEX IF NOT EXISTS ticket_incident_idx ON ticket (reported_at) WHERE type = 'incident';
-- Auto tickets open ONCE per episode (field-lessons.md "Stale data": one incident, not a storm):
-- the database refuses a second open auto ticket for the same household / substation / sensor.
CREATE UNIQUE INDEX IF NOT EXISTS ticket_auto_household_once ON ticket (household_id, type)
    WHERE channel = 'auto' AND household_id IS NOT NULL AND type <> 'maintenance'
      AND status NOT IN ('closed', 'cancelled', 'merged');
CREATE UNIQUE INDEX IF NOT EXISTS ticket_auto_incident_once ON ticket (substation_id)
    WHERE channel = 'auto' AND type = 'incident' AND status NOT IN ('closed', 'cancelled', 'merged');
CREATE UNIQUE INDEX IF NOT EXISTS ticket_auto_sensor_once ON ticket (sensor_id)
    WHERE channel = 'auto' AND type = 'maintenance' AND status NOT IN ('closed', 'cancelled', 'merged');
CREATE INDEX IF NOT EXISTS ticket_event_action_idx ON ticket_event (action, at);
-- The status vocabulary of ticketing/model.py (the workflow table guards the moves).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'ticket_status_check') THEN
        ALTER TABLE ticket ADD CONSTRAINT ticket_status_check CHECK (status IN ('new', 'dispatched', 'accepted',
            'on_site', 'resolved', 'revisited', 'reopened', 'closed', 'cancelled', 'escalated_external', 'merged'));
    END IF;
END $$;
-- ticket_event is the audit trail: append-only, enforced by the database.
CREATE OR REPLACE FUNCTION ticket_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ticket_event is append-only (% refused)', TG_OP;
END $$;
CREATE OR REPLACE TRIGGER ticket_event_no_update BEFORE UPDATE OR DELETE ON ticket_event
    FOR EACH ROW EXECUTE FUNCTION ticket_event_append_only();

-- Households an incident affects (network topology, R25): suppresses per-household auto tickets.
CREATE TABLE IF NOT EXISTS ticket_household (
    ticket_id    bigint  NOT NULL REFERENCES ticket(id),
    household_id integer NOT NULL REFERENCES household(id),
    PRIMARY KEY (ticket_id, household_id)
);
CREATE INDEX IF NOT EXISTS ticket_household_household_idx ON ticket_household (household_id);

-- Photos, audio, signature images. Bytes in the database so that evidence travels with backups.
CREATE TABLE IF NOT EXISTS ticket_attachment (
    id           bigserial PRIMARY KEY,
    ticket_id    bigint NOT NULL REFERENCES ticket(id),
    kind         text NOT NULL CHECK (kind IN ('photo', 'audio', 'signature', 'document')),
    filename     text NOT NULL DEFAULT '',
    content_type text NOT NULL,
    size_bytes   integer NOT NULL,
    sha256       text NOT NULL,
    data         bytea NOT NULL,
    uploaded_by  text NOT NULL,
    uploaded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ticket_attachment_ticket_idx ON ticket_attachment (ticket_id);

-- Repair stations (维修站) own areas; technicians belong to a station.
CREATE TABLE IF NOT EXISTS repair_station (
    id         serial PRIMARY KEY,
    company_id integer REFERENCES company(id),
    code       text NOT NULL UNIQUE,
    name       text NOT NULL,
    lat        double precision,
    lon        double precision
);
CREATE TABLE IF NOT EXISTS station_area (
    station_id   integer NOT NULL REFERENCES repair_station(id),
    community_id integer REFERENCES community(id),
    building_id  integer REFERENCES building(id),
    CHECK (community_id IS NOT NULL OR building_id IS NOT NULL)
);
CREATE UNIQUE INDEX IF NOT EXISTS station_area_uniq ON station_area (station_id, coalesce(community_id, 0), coalesce(building_id, 0));
CREATE TABLE IF NOT EXISTS technician (
    id          serial PRIMARY KEY,
    station_id  integer NOT NULL REFERENCES repair_station(id),
    code        text NOT NULL UNIQUE,
    name        text NOT NULL,
    skills      text[] NOT NULL DEFAULT '{}',       -- repair, leak, temp_test, valve, electrical, ...
    role        text NOT NULL DEFAULT 'technician' CHECK (role IN ('technician', 'team_lead', 'station_head')),
    max_load    integer NOT NULL DEFAULT 6,
    active      boolean NOT NULL DEFAULT true,
    lat         double precision,
    lon         double precision,
    location_at timestamptz
);
CREATE TABLE IF NOT EXISTS technician_shift (
    technician_id integer NOT NULL REFERENCES technician(id),
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz NOT NULL,
    PRIMARY KEY (technician_id, starts_at),
    CHECK (ends_at > starts_at)
);
ALTER TABLE building ADD COLUMN IF NOT EXISTS lat double precision;
ALTER TABLE building ADD COLUMN IF NOT EXISTS lon double precision;

-- SLA clock notices already raised (warning/breach/escalation), so the checker is idempotent.
CREATE TABLE IF NOT EXISTS ticket_sla_notice (
    ticket_id bigint NOT NULL REFERENCES ticket(id),
    clock     text   NOT NULL,            -- ack | arrive | resolve | reply
    level     text   NOT NULL,            -- warning | breach | team_lead | station_head | service_center
    at        timestamptz NOT NULL,
    PRIMARY KEY (ticket_id, clock, level)
);

-- Manual temperature tests 测温 (R11–R13, R18): the protocol is stored with every test.
CREATE TABLE IF NOT EXISTS temp_test (
    id                  bigserial PRIMARY KEY,
    ticket_id           bigint NOT NULL REFERENCES ticket(id),
    household_id        integer NOT NULL REFERENCES household(id),
    room_id             integer REFERENCES room(id),
    outcome             text NOT NULL CHECK (outcome IN ('measured', 'user_refused', 'company_late')),
    measured_at         timestamptz NOT NULL,
    protocol_id         text,
    height_m            double precision,
    points              integer,
    stability_ok        boolean,
    readings            jsonb NOT NULL DEFAULT '[]',     -- [℃, ...] as read
    result_c            double precision,                -- mean of readings (+ instrument correction)
    threshold_c         double precision NOT NULL,
    below_standard      boolean,                         -- NULL for deemed outcomes without a value
    deemed              text,                            -- R12: compliant | below_14
    instrument_id       text,
    instrument_correction_c double precision NOT NULL DEFAULT 0,
    calibration_cert    text,
    calibration_expiry  date,
    staff_signature_id  bigint REFERENCES ticket_attachment(id),
    user_signature_id   bigint REFERENCES ticket_attachment(id),
    iot_sensor_id       integer,
    iot_value_c         double precision,
    drift_c             double precision,                -- manual − IoT
    drift_flag          boolean,
    recorded_by         text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS temp_test_household_idx ON temp_test (household_id, measured_at);

-- Household days confirmed non-compliant by a 测温 (R13). Read by dunning refunds. measured_c is NULL
-- when the result is deemed (R12: company late or no record → deemed < 14 ℃, basis 'deemed_below_14').
CREATE TABLE IF NOT EXISTS confirmed_noncompliant_day (
    household_id integer NOT NULL REFERENCES household(id),
    day          date    NOT NULL,
    ticket_id    bigint  NOT NULL REFERENCES ticket(id),
    measured_c   double precision,
    basis        text NOT NULL DEFAULT 'measured' CHECK (basis IN ('measured', 'deemed_below_14')),
    temp_test_id bigint REFERENCES temp_test(id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (household_id, day)
);

-- ============================================================================================
-- == notify (owned by notify/: outbox shared by ticketing and dunning) =========================
-- One row per message to one household on one channel. The idempotency key makes every producer
-- safe to run twice (dunning: account/step/period). `body` is the evidence copy (R39): rendered
-- with personal fields masked; the real name/phone/e-mail are decrypted only when sending (R57–R60).
CREATE TABLE IF NOT EXISTS notify_outbox (
    id               bigserial PRIMARY KEY,
    idempotency_key  text NOT NULL UNIQUE,
    household_id     integer REFERENCES household(id),
    channel          text NOT NULL CHECK (channel IN ('sms', 'wechat', 'email', 'letter', 'console')),
    template_id      text NOT NULL,
    template_version integer NOT NULL,
    context          jsonb NOT NULL DEFAULT '{}',      -- non-personal variables only (amounts, dates)
    subject          text,
    body             text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sending', 'sent', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 5,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    provider         text,                              -- sender name: sms_http, wechat, smtp, file, console
    provider_id      text,                              -- the gateway's message id (callbacks match on it)
    delivery_status  text,                              -- as reported by the provider (DELIVRD, UNDELIV, ...)
    delivery_proof   text,                              -- letters: registered-mail no. / signed receipt ref
    source           text NOT NULL CHECK (source IN ('dunning', 'ticketing')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    delivered_at     timestamptz,
    failed_at        timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS notify_outbox_due_idx ON notify_outbox (next_attempt_at)
    WHERE status IN ('pending', 'sending');
CREATE INDEX IF NOT EXISTS notify_outbox_household_idx ON notify_outbox (household_id, created_at);
CREATE INDEX IF NOT EXISTS notify_outbox_provider_idx ON notify_outbox (provider, provider_id);

-- Every attempt, result and provider callback (the delivery evidence trail).
CREATE TABLE IF NOT EXISTS notify_event (
    id        bigserial PRIMARY KEY,
    outbox_id bigint NOT NULL REFERENCES notify_outbox(id),
    at        timestamptz NOT NULL DEFAULT now(),
    kind      text NOT NULL,                            -- attempt, sent, retry, failed, callback, proof
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS notify_event_outbox_idx ON notify_event (outbox_id);

-- E-mail addresses and WeChat openids: personal data, encrypted like pii.household_contact.
CREATE TABLE IF NOT EXISTS pii.notify_address (
    household_id integer NOT NULL REFERENCES household(id),
    channel      text NOT NULL CHECK (channel IN ('email', 'wechat')),
    address_enc  bytea NOT NULL,
    key_version  integer NOT NULL DEFAULT 1,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (household_id, channel)
);

-- ============================================================================================
-- == dunning (owned by dunning/) ==============================================================
-- One heat-fee ledger per household (R37: never bundled with property/water/power, never per
-- building). Money is numeric(12,2) 元. Policy numbers live in dunning/policy.yaml, not here.

-- Season bill (应缴采暖费) per household and season; `basis` records tariff and inputs (R42–R43, R29).
CREATE TABLE IF NOT EXISTS dunning_bill (
    id            bigserial PRIMARY KEY,
    household_id  integer NOT NULL REFERENCES household(id),
    season        text NOT NULL,                        -- '2026-2027' (season start year-end year)
    period_start  date NOT NULL,                        -- statutory season (R41)
    period_end    date NOT NULL,
    due_date      date NOT NULL,                        -- R31, per region
    amount        numeric(12,2) NOT NULL CHECK (amount >= 0),
    base_amount   numeric(12,2) NOT NULL DEFAULT 0,     -- 基本热费 share (two-part, 报停)
    tariff_code   text NOT NULL,
    basis         jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (household_id, season)
);
CREATE INDEX IF NOT EXISTS dunning_bill_season_idx ON dunning_bill (season, household_id);

-- Payment events from any channel, idempotent on (channel, external_id). Acceptance never depends
-- on other debts (R37). government_subsidy = 低保/特困 subsidies paid by government channels (R38).
CREATE TABLE IF NOT EXISTS dunning_payment (
    id            bigserial PRIMARY KEY,
    household_id  integer NOT NULL REFERENCES household(id),
    season        text NOT NULL,
    amount        numeric(12,2) NOT NULL CHECK (amount <> 0),   -- negative = reversal / refund paid out
    channel       text NOT NULL CHECK (channel IN ('counter', 'bank', 'wechat', 'alipay', 'government_subsidy',
                                                   'refund_offset', 'adjustment')),
    external_id   text NOT NULL,
    paid_at       timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    note          text,
    UNIQUE (channel, external_id)
);
CREATE INDEX IF NOT EXISTS dunning_payment_household_idx ON dunning_payment (household_id, season);

-- Refund per household and season so far (R22, analytics.refund): `amount` counts (confirmed days,
-- or IoT days where the region allows, R13) and reduces the amount asked; `provisional_*` is what
-- the suspected (IoT-only) days would add if a 测温 confirms them.
CREATE TABLE IF NOT EXISTS dunning_refund_line (
    household_id       integer NOT NULL REFERENCES household(id),
    season             text NOT NULL,
    days               integer NOT NULL,
    amount             numeric(12,2) NOT NULL,
    provisional_days   integer NOT NULL DEFAULT 0,
    provisional_amount numeric(12,2) NOT NULL DEFAULT 0,
    basis              jsonb NOT NULL DEFAULT '{}',     -- policy, daily fee, lines (day, ratio, area factor)
    computed_at        timestamptz NOT NULL,
    PRIMARY KEY (household_id, season)
);

-- Disputes about money that dunning must respect (R35 pause, R36 guard) besides ticketing's.
CREATE TABLE IF NOT EXISTS dunning_dispute (
    id            bigserial PRIMARY KEY,
    household_id  integer NOT NULL REFERENCES household(id),
    season        text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('refund', 'bill')),
    opened_on     date NOT NULL,
    resolved_on   date,
    note          text
);
CREATE INDEX IF NOT EXISTS dunning_dispute_household_idx ON dunning_dispute (household_id);

-- 分期 (R32): plan + parts; a missed part breaks the plan and the ladder resumes.
CREATE TABLE IF NOT EXISTS dunning_instalment_plan (
    id            bigserial PRIMARY KEY,
    household_id  integer NOT NULL REFERENCES household(id),
    season        text NOT NULL,
    total         numeric(12,2) NOT NULL,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'completed', 'broken', 'cancelled')),
    created_on    date NOT NULL,
    created_by    text NOT NULL,
    broken_on     date
);
CREATE UNIQUE INDEX IF NOT EXISTS dunning_instalment_plan_active_idx ON dunning_instalment_plan (household_id, season)
    WHERE status = 'active';
CREATE TABLE IF NOT EXISTS dunning_instalment (
    plan_id       bigint NOT NULL REFERENCES dunning_instalment_plan(id),
    seq           integer NOT NULL,
    due_date      date NOT NULL,
    amount        numeric(12,2) NOT NULL CHECK (amount > 0),
    PRIMARY KEY (plan_id, seq)
);

-- 缓缴 until a date, with reason (R38).
CREATE TABLE IF NOT EXISTS dunning_deferral (
    id            bigserial PRIMARY KEY,
    household_id  integer NOT NULL REFERENCES household(id),
    season        text NOT NULL,
    granted_on    date NOT NULL,
    until_date    date NOT NULL,
    reason        text NOT NULL,
    granted_by    text NOT NULL,
    CHECK (until_date >= granted_on)
);
CREATE INDEX IF NOT EXISTS dunning_deferral_household_idx ON dunning_deferral (household_id);

-- Hardship status (低保/特困/other) is sensitive personal information (R38, R57): in the pii schema,
-- category and verification document encrypted (SM4-GCM, core/pii.py). Only validity is in clear,
-- so the gate can read "in force" without decrypting.
CREATE TABLE IF NOT EXISTS pii.dunning_hardship (
    household_id  integer PRIMARY KEY REFERENCES household(id),
    category_enc  bytea NOT NULL,
    doc_ref_enc   bytea,
    valid_from    date NOT NULL,
    expires_on    date NOT NULL,
    verified_by   text NOT NULL,
    key_version   integer NOT NULL DEFAULT 1,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Periods in which the gate held dunning (compliance, complaint, dispute, cold): 违约金 pauses (R35).
CREATE TABLE IF NOT EXISTS dunning_hold (
    id            bigserial PRIMARY KEY,
    household_id  integer NOT NULL REFERENCES household(id),
    season        text NOT NULL,
    reasons       text[] NOT NULL,
    started_on    date NOT NULL,
    ended_on      date                                    -- NULL while the hold lasts
);
CREATE UNIQUE INDEX IF NOT EXISTS dunning_hold_open_idx ON dunning_hold (household_id, season) WHERE ended_on IS NULL;

-- Resumable runs: one per (company, as_of, dry_run); the cursor lets a stopped run continue (job.py).
CREATE TABLE IF NOT EXISTS dunning_run (
    id             bigserial PRIMARY KEY,
    company_id     integer NOT NULL REFERENCES company(id),
    as_of          date NOT NULL,
    dry_run        boolean NOT NULL,
    status         text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed')),
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    last_household integer NOT NULL DEFAULT 0,
    counts         jsonb NOT NULL DEFAULT '{}',
    error          text
);
CREATE UNIQUE INDEX IF NOT EXISTS dunning_run_open_idx ON dunning_run (company_id, as_of, dry_run) WHERE status = 'running';

-- Every gate decision with reason codes and the evidence looked at (compliance days, ticket ids).
CREATE TABLE IF NOT EXISTS dunning_decision (
    id            bigserial PRIMARY KEY,
    run_id        bigint REFERENCES dunning_run(id),
    household_id  integer NOT NULL REFERENCES household(id),
    season        text NOT NULL,
    as_of         date NOT NULL,
    step          text,                                  -- ladder step considered (friendly, notice, ...)
    action        text NOT NULL CHECK (action IN ('send', 'soften', 'hold', 'skip')),
    reasons       text[] NOT NULL,
    template      text,
    channel       text,
    amount_asked  numeric(12,2),
    refund_adjust numeric(12,2) NOT NULL DEFAULT 0,
    late_fee      numeric(12,2) NOT NULL DEFAULT 0,
    evidence      jsonb NOT NULL DEFAULT '{}',
    outbox_id     bigint REFERENCES notify_outbox(id),
    ticket_id     bigint REFERENCES ticket(id),
    dry_run       boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS dunning_decision_household_idx ON dunning_decision (household_id, season, as_of);
CREATE INDEX IF NOT EXISTS dunning_decision_run_idx ON dunning_decision (run_id, household_id);

-- Instalment reminders sent (R32; instalments.reminder_lead_days in dunning/policy.yaml): 'due' before a
-- part falls due, 'missed' in its grace days before the plan breaks. One row per part, kind and channel:
-- a rerun inserts nothing, a failed delivery (outbox status) lets the next channel be tried. The
-- outbox row is the evidence copy (template version, delivery status, R39).
CREATE TABLE IF NOT EXISTS dunning_instalment_notice (
    id            bigserial PRIMARY KEY,
    plan_id       bigint NOT NULL,
    seq           integer NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('due', 'missed')),
    household_id  integer NOT NULL REFERENCES household(id),
    run_id        bigint REFERENCES dunning_run(id),
    as_of         date NOT NULL,
    channel       text NOT NULL,
    template      text NOT NULL,
    unpaid        numeric(12,2) NOT NULL,                 -- 元 of the part still open when the notice went
    pay_by        date NOT NULL,
    outbox_id     bigint NOT NULL REFERENCES notify_outbox(id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (plan_id, seq) REFERENCES dunning_instalment (plan_id, seq),
    UNIQUE (plan_id, seq, kind, channel)
);
CREATE INDEX IF NOT EXISTS dunning_instalment_notice_household_idx ON dunning_instalment_notice (household_id);

-- Cut-off (限热/停热) PROPOSALS for human approval only (R36): never executed by code.
CREATE TABLE IF NOT EXISTS dunning_cutoff_proposal (
    id            bigserial PRIMARY KEY,
    household_id  integer NOT NULL REFERENCES household(id),
    season        text NOT NULL,
    proposed_on   date NOT NULL,
    status        text NOT NULL DEFAULT 'proposed' CHECK (status IN ('proposed', 'approved', 'rejected', 'withdrawn',
                                                                      'executed', 'restored')),
    evidence      jsonb NOT NULL,                         -- formal-notice outbox id, proof, checks passed
    decided_by    text,
    decided_at    timestamptz,
    executed_on   date,                                   -- recorded by staff; pauses 违约金 (R35)
    restored_on   date
);
CREATE UNIQUE INDEX IF NOT EXISTS dunning_cutoff_open_idx ON dunning_cutoff_proposal (household_id, season)
    WHERE status IN ('proposed', 'approved', 'executed');

-- Consent to offset a refund against arrears (R40), per household and season.
CREATE TABLE IF NOT EXISTS dunning_offset_consent (
    household_id  integer NOT NULL REFERENCES household(id),
    season        text NOT NULL,
    given_on      date NOT NULL,
    channel       text NOT NULL,
    PRIMARY KEY (household_id, season)
);

-- Season-end refund statements (R23, R40).
CREATE TABLE IF NOT EXISTS dunning_refund_statement (
    household_id   integer NOT NULL REFERENCES household(id),
    season         text NOT NULL,
    refund_days    integer NOT NULL,
    refund_amount  numeric(12,2) NOT NULL,
    arrears_before numeric(12,2) NOT NULL,
    offset_amount  numeric(12,2) NOT NULL,
    payout_amount  numeric(12,2) NOT NULL,
    offset_basis   text NOT NULL CHECK (offset_basis IN ('consent', 'contract', 'none')),
    payout_deadline date,
    outbox_id      bigint REFERENCES notify_outbox(id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (household_id, season)
);

-- ============================================================================================
-- == api (owned by api/: users, roles, tokens, access log) ====================================
-- Users of the service (staff, service accounts, self-service customers). Passwords: argon2id.
CREATE TABLE IF NOT EXISTS app_user (
    id            serial PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    display_name  text NOT NULL DEFAULT '',
    password_hash text,                                   -- argon2id; NULL for service accounts (API key only)
    role          text NOT NULL CHECK (role IN ('agent', 'supervisor', 'engineer', 'dispatcher', 'technician',
                                                'finance', 'auditor', 'admin', 'customer')),
    company_id    integer NOT NULL REFERENCES company(id),
    household_id  integer REFERENCES household(id),       -- role customer: the one household it may see
    is_service    boolean NOT NULL DEFAULT false,
    active        boolean NOT NULL DEFAULT true,
    token_version integer NOT NULL DEFAULT 1,             -- bumped on logout/password change: revokes tokens
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz
);
-- A technician's login ↔ ticketing's technician row ("my orders" on the technician page). No FK:
-- ticketing owns technician and may load it after the users exist.
ALTER TABLE app_user ADD COLUMN IF NOT EXISTS technician_id integer;

-- Data scope: a row with branch_id NULL means every branch of the company (object-level authorisation).
CREATE TABLE IF NOT EXISTS app_user_scope (
    id         serial PRIMARY KEY,
    user_id    integer NOT NULL REFERENCES app_user(id) ON DELETE CASCADE,
    company_id integer NOT NULL REFERENCES company(id),
    branch_id  integer REFERENCES branch(id)
);
CREATE UNIQUE INDEX IF NOT EXISTS app_user_scope_uniq ON app_user_scope (user_id, company_id, coalesce(branch_id, 0));

-- API keys for service accounts: only a SHA-256 of the (high-entropy) secret is stored.
CREATE TABLE IF NOT EXISTS api_key (
    id           serial PRIMARY KEY,
    user_id      integer NOT NULL REFERENCES app_user(id) ON DELETE CASCADE,
    prefix       text NOT NULL UNIQUE,                     -- public part, shown in lists
    secret_hash  bytea NOT NULL,
    scopes       text[] NOT NULL DEFAULT '{}',             -- empty = the role's scopes
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- Every read of personal data (PIPL art. 51, domain.md R60): who, which household, which fields, why.
CREATE TABLE IF NOT EXISTS pii_access_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    user_id      integer REFERENCES app_user(id),
    username     text NOT NULL,
    role         text NOT NULL,
    household_id integer REFERENCES household(id),
    fields       text[] NOT NULL,                          -- e.g. {name,phone,address} or {phone_masked}
    masked       boolean NOT NULL,                         -- true when only masked values were shown
    purpose      text NOT NULL,                            -- route / purpose code (household_card, search, screen_pop)
    request_id   text,
    client_ip    text
);
CREATE INDEX IF NOT EXISTS pii_access_log_household_idx ON pii_access_log (household_id, at);
CREATE INDEX IF NOT EXISTS pii_access_log_user_idx ON pii_access_log (user_id, at);

-- ============================================================================================
INSERT INTO schema_version (version, timescaledb)
VALUES (1, EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'))
ON CONFLICT (version) DO NOTHING;
