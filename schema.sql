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
        EXECUTE 'ALTER TABLE readings SET (timescaledb.compress, timescaledb.compress_segmentby = ''sensor_id'', timescaledb.compress_orderby = ''time'')';
        PERFORM add_compression_policy('readings', interval '14 days', if_not_exists => true);
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

-- ============================================================================================
-- == notify (owned by notify/: outbox shared by ticketing and dunning) =========================

-- ============================================================================================
-- == dunning (owned by dunning/) ==============================================================

-- ============================================================================================
-- == api (owned by api/: users, roles, tokens, access log) ====================================

-- ============================================================================================
INSERT INTO schema_version (version, timescaledb)
VALUES (1, EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'))
ON CONFLICT (version) DO NOTHING;
