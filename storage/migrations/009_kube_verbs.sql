-- Kubernetes verbs (schemas.kube): the search column `verb` holds the Kubernetes verb (get,
-- list, watch, create, update, patch, delete, deletecollection), no longer Teleport's HTTP
-- method (which stays in the event body as it is), and `kubernetes_subresource` the
-- subresource (exec, log, ...). Stored kube.request rows are re-derived in Python after this
-- migration (storage.pg runs the pending backfills listed in sv_backfills).
ALTER TABLE events ADD COLUMN IF NOT EXISTS kubernetes_subresource text NOT NULL DEFAULT '';

CREATE TABLE IF NOT EXISTS sv_backfills (
    name    text PRIMARY KEY,
    done_at timestamptz
);
INSERT INTO sv_backfills (name) VALUES ('kube_verbs') ON CONFLICT DO NOTHING;
