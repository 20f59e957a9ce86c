-- Compliance search on PostgreSQL (issue 4). See docs/search.md and storage/search/.
--
-- Filter values are extracted ONCE by the writer in Python (storage.search.model.event_columns),
-- never by JSON operators at query time; text_norm holds the normalised searchable text
-- (str.casefold, done in Python on both sides), matched with LIKE '%term%' through pg_trgm.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

ALTER TABLE events
    ADD COLUMN time_us                  bigint,
    ADD COLUMN login                    text NOT NULL DEFAULT '',
    ADD COLUMN server_id                text NOT NULL DEFAULT '',
    ADD COLUMN cluster_name             text NOT NULL DEFAULT '',
    ADD COLUMN kubernetes_cluster       text NOT NULL DEFAULT '',
    ADD COLUMN kubernetes_namespace     text NOT NULL DEFAULT '',
    ADD COLUMN kubernetes_resource_kind text NOT NULL DEFAULT '',
    ADD COLUMN kubernetes_resource_name text NOT NULL DEFAULT '',
    ADD COLUMN verb                     text NOT NULL DEFAULT '',
    ADD COLUMN text_norm                text;

-- Rows written before this migration: the exact integer time and the filter values (text_norm
-- needs Python's casefold: storage.search.pg.refresh_event_columns fills it).
UPDATE events SET
    time_us = (extract(epoch FROM time) * 1000000)::bigint,
    login = COALESCE(body->>'login', ''),
    server_id = COALESCE(body->>'server_id', ''),
    cluster_name = COALESCE(body->>'cluster_name', ''),
    kubernetes_cluster = COALESCE(body->>'kubernetes_cluster', ''),
    kubernetes_namespace = COALESCE(body->>'resource_namespace',
                                    body->>'kubernetes_pod_namespace', ''),
    kubernetes_resource_kind = COALESCE(body->>'resource_kind', ''),
    kubernetes_resource_name = COALESCE(body->>'resource_name', ''),
    verb = COALESCE(body->>'verb', '');

-- Keyset order: (time_us DESC, uid DESC by code point) within a tenant.
CREATE INDEX events_search_order ON events (tenant, time_us DESC, (uid COLLATE "C") DESC);
-- Selective filters get their own ordered index (the others filter along events_search_order).
CREATE INDEX events_search_user ON events (tenant, user_name, time_us DESC);
CREATE INDEX events_search_type ON events (tenant, event, time_us DESC);
CREATE INDEX events_search_kcluster ON events (tenant, kubernetes_cluster, time_us DESC);
-- Literal substring search (LIKE '%term%' on the casefolded text).
CREATE INDEX events_search_text ON events USING gin (text_norm gin_trgm_ops);

-- Rendered lines of terminal output (storage.search.segments), written by the persist worker in
-- the same transaction as the chunks they come from. Who/where is copied from the session (and
-- re-synced when session.start enrichment changes it).
CREATE TABLE text_segments (
    sid                text NOT NULL,
    seg_no             integer NOT NULL,
    tenant             text NOT NULL,
    start_ms           bigint NOT NULL,
    end_ms             bigint NOT NULL,
    time_us            bigint NOT NULL,  -- session start + start_ms
    id                 text COLLATE "C" GENERATED ALWAYS AS
                           (sid || '/' || lpad(seg_no::text, 12, '0')) STORED,
    text               text NOT NULL,
    text_norm          text NOT NULL,
    times              bigint[] NOT NULL, -- run-length (offset_ms, count, ...) per character
    user_name          text NOT NULL DEFAULT '',
    login              text NOT NULL DEFAULT '',
    server_id          text NOT NULL DEFAULT '',
    cluster_name       text NOT NULL DEFAULT '',
    kubernetes_cluster text NOT NULL DEFAULT '',
    PRIMARY KEY (sid, seg_no)
);
CREATE INDEX text_segments_order ON text_segments (tenant, time_us DESC, id DESC);
CREATE INDEX text_segments_user ON text_segments (tenant, user_name, time_us DESC);
CREATE INDEX text_segments_sid ON text_segments (tenant, sid, time_us DESC);
CREATE INDEX text_segments_text ON text_segments USING gin (text_norm gin_trgm_ops);

-- The renderer's position per session (storage.search.segments.SessionText).
ALTER TABLE sessions
    ADD COLUMN text_state    bytea,
    ADD COLUMN text_seg_next integer NOT NULL DEFAULT 0,
    ADD COLUMN text_seq      integer NOT NULL DEFAULT -1;
