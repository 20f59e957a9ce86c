-- Terminal output for the detection worker (siem/detect.py, siem/output_feed.py).
--
-- The segmenter appends one row per session step that produced text segments, in the SAME
-- transaction as the segments, so a segment is in the feed exactly when it is committed. The
-- detect worker takes rows with FOR UPDATE SKIP LOCKED (several members share the work),
-- evaluates the Sigma rules on the segments, produces the alerts, waits for the broker's
-- acknowledgement and only then deletes the rows in that same transaction: a crash before
-- the commit leaves the rows for the next run (alert uids and times are deterministic, so a
-- re-run adds no alert row). Segments rendered before this migration are not fed (no alerts
-- on history).
CREATE TABLE detect_feed (
    id       bigserial PRIMARY KEY,
    tenant   text NOT NULL,
    sid      text NOT NULL,
    seg_from integer NOT NULL,   -- first new seg_no
    seg_to   integer NOT NULL,   -- one past the last new seg_no
    fed_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (seg_from < seg_to)
);
CREATE INDEX detect_feed_sid ON detect_feed (tenant, sid);
