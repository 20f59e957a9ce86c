-- Evidence (issue 13, docs/evidence.md): what was stored, signed checkpoints over it, signed
-- session manifests and signed tombstones. See storage/evidence_store.py.

-- What each persist transaction stored, per tenant, written in that same transaction:
-- ``entries`` is a JSON array of leaves without the tenant (["chunk", sid, seq, hash],
-- ["event", uid, time_us, sid, body_sha256], ...). Every row is pending: the checkpointer
-- takes them (visible = committed, so none is ever skipped) and deletes them in the
-- transaction that stores the checkpoint holding their entries. What is left is how verify
-- tells "not yet checkpointed" from "added outside the pipeline".
CREATE TABLE ledger (
    id          bigserial PRIMARY KEY,
    tenant      text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    entries     jsonb NOT NULL
);
CREATE INDEX ledger_tenant ON ledger (tenant, id);

-- Signed checkpoints, numbered from 1 per tenant, each chained to the previous one.
-- ``envelope`` is {"body": {v, tenant, n, prev, root, size, first_at, last_at, at, kid},
-- "sig"}; ``leaves`` the entries in tree order (the root is over them).
CREATE TABLE checkpoints (
    tenant      text NOT NULL,
    n           bigint NOT NULL,
    at          timestamptz NOT NULL,
    envelope    jsonb NOT NULL,
    leaves      jsonb NOT NULL,
    emitted     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant, n)
);

-- Signed session manifests (one per session; a session reopened by a late chunk and closed
-- again gets a newer one, the older kept in ``superseded``).
CREATE TABLE session_manifests (
    tenant      text NOT NULL,
    sid         text NOT NULL,
    version     integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    envelope    jsonb NOT NULL,
    events      jsonb NOT NULL,   -- [[uid, time_us, body_sha256]] in the manifest's order
    emitted     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant, sid, version)
);

-- Signed records of deletions by policy (retention, legal-hold release, crypto-shredding):
-- ``envelope`` = {"body": {v, tenant, id, what, ..., at, actor, kid}, "sig"}.
CREATE TABLE tombstones (
    tenant      text NOT NULL,
    id          text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    envelope    jsonb NOT NULL,
    PRIMARY KEY (tenant, id)
);
