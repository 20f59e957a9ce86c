-- Encryption at rest (issue 13, docs/evidence.md "Encryption at rest"): per-tenant data keys
-- (AES-256-GCM) wrapped by a key-encryption key of the key provider (storage/keyring.py).
-- The active key of a tenant is its highest key_id whose wrapped key is there. Shredding
-- sets ``wrapped`` to NULL: every chunk sealed with it is unreadable from then on.
CREATE TABLE tenant_data_keys (
    tenant        text NOT NULL,
    key_id        integer NOT NULL,
    kek_id        text NOT NULL,
    wrapped       bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    destroyed_at  timestamptz,
    PRIMARY KEY (tenant, key_id)
);

-- The data key a chunk's payload is sealed with (NULL: stored in the clear).
ALTER TABLE chunks ADD COLUMN key_id integer;
