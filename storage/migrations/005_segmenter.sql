-- Text segments are rendered by their own stage (ingest/segmenter.py), AFTER the chunks are
-- durable, never inside the persist worker's transaction: rendering and inserting into the
-- pg_trgm GIN index there cut one persist worker from ~30 MB/s to 0.5 MB/s (docs/benchmarks.md).

-- Which chunk closed its session: the segmenter flushes the unterminated last line there.
-- (A constant default: no table rewrite.)
ALTER TABLE chunks ADD COLUMN final boolean NOT NULL DEFAULT false;

-- Sessions with work for the segmenter. The persist worker upserts a row in its own transaction
-- for every session that got new chunks (or new who/where from session.start/end) and bumps
-- gen; the segmenter deletes the row only if gen is still what it read, so work enqueued while
-- it was rendering is never lost. The segmenter locks a row only in that final DELETE, so the
-- persist worker's upsert waits at most for the segmenter's commit.
CREATE TABLE segment_queue (
    sid         text PRIMARY KEY,
    tenant      text NOT NULL,
    gen         bigint NOT NULL DEFAULT 0,
    enqueued_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX segment_queue_enqueued ON segment_queue (enqueued_at);

-- The renderer's position per session (storage.search.segments.SessionText), in its own table
-- so the segmenter never touches the sessions rows the persist worker locks. The who/where
-- columns are what the session's segments carry (re-synced when session enrichment changes it).
CREATE TABLE session_text (
    sid                text PRIMARY KEY,
    tenant             text NOT NULL,
    text_state         bytea,
    text_seg_next      integer NOT NULL DEFAULT 0,
    text_seq           integer NOT NULL DEFAULT -1,
    user_name          text NOT NULL DEFAULT '',
    login              text NOT NULL DEFAULT '',
    server_id          text NOT NULL DEFAULT '',
    cluster_name       text NOT NULL DEFAULT '',
    kubernetes_cluster text NOT NULL DEFAULT ''
);

INSERT INTO session_text (sid, tenant, text_state, text_seg_next, text_seq, user_name, login,
                          server_id, cluster_name, kubernetes_cluster)
SELECT sid, tenant, text_state, text_seg_next, text_seq, user_name, login, server_id,
       cluster_name, kubernetes_cluster
FROM sessions WHERE text_seq >= 0;

-- Sessions with chunks not rendered yet (a database written by the in-transaction renderer has
-- none unless a late chunk is stored; harmless either way).
INSERT INTO segment_queue (sid, tenant)
SELECT s.sid, s.tenant FROM sessions s
WHERE EXISTS (SELECT 1 FROM chunks c WHERE c.sid = s.sid AND c.seq > s.text_seq);

ALTER TABLE sessions
    DROP COLUMN text_state,
    DROP COLUMN text_seg_next,
    DROP COLUMN text_seq;
