-- Trusted clusters (docs/federation.md). Every installation gets these tables; a root uses the
-- first four, a leaf the last. None of them holds a record of another installation: the root
-- keeps who its leaves are and what its own users asked, never what a leaf answered.

-- Who a root token acts as towards leaves (a leaf maps user and roles to its own tenants).
ALTER TABLE api_tokens ADD COLUMN IF NOT EXISTS user_name text NOT NULL DEFAULT '';
ALTER TABLE api_tokens ADD COLUMN IF NOT EXISTS roles text[] NOT NULL DEFAULT '{}';

-- Root: single-use join tokens (stored as SHA-256, like API tokens), each for one leaf name.
CREATE TABLE federation_join_tokens (
    token_sha256  bytea PRIMARY KEY,
    leaf          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz
);

-- Root: the leaves that joined, and every certificate issued to them. A certificate is
-- accepted while it is neither expired nor revoked; a leaf that connects with a newer one
-- revokes its older ones (rotation leaves no second key usable).
CREATE TABLE federation_leaves (
    name          text PRIMARY KEY,
    joined_at     timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz,
    removed_at    timestamptz
);
CREATE TABLE federation_leaf_certs (
    serial        text PRIMARY KEY,
    leaf          text NOT NULL REFERENCES federation_leaves (name),
    issued_at     timestamptz NOT NULL DEFAULT now(),
    not_after     timestamptz NOT NULL,
    revoked_at    timestamptz
);
CREATE INDEX federation_leaf_certs_leaf ON federation_leaf_certs (leaf);

-- Root: its own audit of federated questions (who asked which leaves what; no answers).
CREATE TABLE federation_queries (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    token_id      text NOT NULL,
    user_name     text NOT NULL,
    roles         text[] NOT NULL,
    route         text NOT NULL,
    leaves        text[] NOT NULL,
    params        jsonb NOT NULL
);

-- Leaf: how root identities map to this leaf's tenants (first matching rule by id wins;
-- no rule: the root user sees nothing of this leaf).
CREATE TABLE federation_mappings (
    id            bigserial PRIMARY KEY,
    root          text NOT NULL,             -- the root's name, or '*'
    user_name     text NOT NULL,             -- a root user, or '*'
    role          text NOT NULL DEFAULT '',  -- a role the user must hold ('' : any)
    tenant        text NOT NULL,
    clusters      text[] NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now()
);
