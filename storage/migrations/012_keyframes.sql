-- Keyframes (replay/keyframe.py): the screen as it stood after a chunk, kept by the segmenter
-- every keyframe_every_bytes of output, so the web console's player seeks by drawing one
-- keyframe and the frames after it instead of replaying the session from its start.
-- Derived data: deleted with its session (retention), rebuilt by re-rendering.
CREATE TABLE session_keyframes (
    sid        text NOT NULL,
    tenant     text NOT NULL,
    after_seq  integer NOT NULL,   -- the screen after every frame of chunks <= after_seq
    at_ms      bigint NOT NULL,    -- offset of the last of those frames
    screen     bytea NOT NULL,     -- replay.keyframe.Keyframe.to_bytes (JSON)
    PRIMARY KEY (sid, after_seq)
);
CREATE INDEX session_keyframes_at ON session_keyframes (sid, at_ms);

-- Timeline markers found while rendering (replay/segments.py Marker): a command line as it
-- stood when Enter was pressed, a resize. Derived data like keyframes.
CREATE TABLE session_markers (
    sid        text NOT NULL,
    tenant     text NOT NULL,
    at_ms      bigint NOT NULL,
    kind       text NOT NULL,
    label      text NOT NULL,
    UNIQUE (sid, at_ms, kind, label)
);

-- Output bytes rendered since the session's last keyframe (carried across rounds).
ALTER TABLE session_text ADD COLUMN kf_bytes bigint NOT NULL DEFAULT 0;

-- Session lists page by (started_at, sid) under filters; this keyset order needs sid too.
CREATE INDEX sessions_tenant_started_sid ON sessions (tenant, started_at DESC, sid DESC);
