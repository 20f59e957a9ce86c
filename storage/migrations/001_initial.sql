-- sessionvault schema, version 1. Applied once, in order, inside a transaction, by
-- storage.pg.migrate(); the applied versions are recorded in sv_migrations.

-- One row per session. Opened by chunk seq 0 (which carries the session metadata), enriched
-- by session.start / session.end audit events, updated by every chunk batch.
CREATE TABLE sessions (
    sid                 text PRIMARY KEY,
    tenant              text NOT NULL,
    kind                text NOT NULL DEFAULT 'ssh',
    user_name           text NOT NULL DEFAULT '',
    login               text NOT NULL DEFAULT '',
    server_id           text NOT NULL DEFAULT '',
    cluster_name        text NOT NULL DEFAULT '',
    kubernetes_cluster  text NOT NULL DEFAULT '',
    command             text NOT NULL DEFAULT '',
    term                text NOT NULL DEFAULT '',
    started_at          timestamptz NOT NULL,
    ended_at            timestamptz,
    cols                integer NOT NULL,
    rows                integer NOT NULL,
    duration_ms         bigint NOT NULL DEFAULT 0,     -- offset of the last frame seen
    bytes               bigint NOT NULL DEFAULT 0,     -- raw payload bytes
    stored_bytes        bigint NOT NULL DEFAULT 0,     -- payload bytes after compression
    chunks              integer NOT NULL DEFAULT 0,
    last_seq            integer NOT NULL DEFAULT -1,
    last_hash           text NOT NULL,
    status              text NOT NULL DEFAULT 'active', -- active | closed
    integrity           text NOT NULL DEFAULT 'ok',     -- ok | gap (a seq was skipped) | broken
    exit_code           integer,
    legal_hold          boolean NOT NULL DEFAULT false,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_tenant_started ON sessions (tenant, started_at DESC);
CREATE INDEX sessions_tenant_user ON sessions (tenant, user_name, started_at DESC);

-- Trained zstd dictionaries for small payloads (see storage/codec.py).
CREATE TABLE zstd_dicts (
    id          serial PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    data        bytea NOT NULL,
    samples     integer NOT NULL,
    sample_bytes bigint NOT NULL
);

-- Chunks: idempotent on (sid, seq). Payloads are already zstd-compressed, so PostgreSQL's own
-- compression attempt is skipped (STORAGE EXTERNAL), and toast_tuple_target keeps typical
-- chunks in the heap page instead of TOAST (about 3x faster COPY measured on PostgreSQL 18).
CREATE TABLE chunks (
    sid             text NOT NULL,
    seq             integer NOT NULL,
    tenant          text NOT NULL,
    first_offset_ms bigint NOT NULL,
    last_offset_ms  bigint NOT NULL,
    frames          bytea NOT NULL,    -- storage.codec.pack_frames
    codec           smallint NOT NULL, -- 0 raw, 1 zstd, 2 zstd with dictionary
    dict_id         integer REFERENCES zstd_dicts (id),
    raw_len         integer NOT NULL,
    payload         bytea NOT NULL,
    prev_hash       text NOT NULL,
    hash            text NOT NULL,
    PRIMARY KEY (sid, seq)
) WITH (toast_tuple_target = 8160);
ALTER TABLE chunks ALTER COLUMN payload SET STORAGE EXTERNAL;
ALTER TABLE chunks ALTER COLUMN frames SET STORAGE EXTERNAL;
-- Seek: find the chunk holding a time offset without reading earlier ones.
CREATE INDEX chunks_sid_offset ON chunks (sid, first_offset_ms);

-- Audit events, partitioned by month (partitions are created on demand by the writer; the
-- default partition catches anything outside them). Idempotent on (tenant, uid, time): an
-- event's time never changes, so a redelivered event hits the same key; the tenant is part of
-- the key so one tenant can never shadow another's event by reusing its uid.
CREATE TABLE events (
    tenant      text NOT NULL,
    uid         text NOT NULL,
    time        timestamptz NOT NULL,
    event       text NOT NULL,
    code        text NOT NULL DEFAULT '',
    sid         text,
    ei          bigint,
    user_name   text NOT NULL DEFAULT '',
    body        jsonb NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, uid, time)
) PARTITION BY RANGE (time);
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE INDEX events_tenant_time ON events (tenant, time DESC, uid);
CREATE INDEX events_tenant_sid ON events (tenant, sid, ei);
