-- Retention and legal hold (issue 4). See storage/retention.py.

-- Per-tenant retention policy. A tenant without a row keeps everything: deleting audit data
-- must be a decision somebody wrote down, never a default.
CREATE TABLE retention_policies (
    tenant        text PRIMARY KEY,
    events_days   integer NOT NULL CHECK (events_days > 0),
    sessions_days integer NOT NULL CHECK (sessions_days > 0),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    updated_by    text NOT NULL DEFAULT ''
);

-- Every legal hold decision, append-only: who set or released a hold on which session, when
-- and why. sessions.legal_hold is the current state; this table is its history.
CREATE TABLE legal_holds (
    id      bigserial PRIMARY KEY,
    tenant  text NOT NULL,
    sid     text NOT NULL,
    action  text NOT NULL CHECK (action IN ('set', 'release')),
    reason  text NOT NULL,
    actor   text NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX legal_holds_tenant_sid ON legal_holds (tenant, sid, at);

-- What each retention run removed (dry runs are not recorded: they change nothing).
CREATE TABLE retention_runs (
    id               bigserial PRIMARY KEY,
    tenant           text NOT NULL,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz NOT NULL DEFAULT now(),
    events_cutoff    timestamptz NOT NULL,
    sessions_cutoff  timestamptz NOT NULL,
    events_deleted   bigint NOT NULL,
    sessions_deleted bigint NOT NULL,
    chunks_deleted   bigint NOT NULL,
    segments_deleted bigint NOT NULL,
    held_sessions    bigint NOT NULL,
    actor            text NOT NULL
);

-- Held sessions are looked up on every retention batch.
CREATE INDEX sessions_tenant_held ON sessions (tenant) WHERE legal_hold;
