-- API tokens (issue 3). Only the SHA-256 of a token is stored: the token itself is shown once,
-- when created. A token acts only within its tenant; a non-empty ``clusters`` restricts it
-- further to those Kubernetes clusters (webhook deliveries and timeline reads alike).
CREATE TABLE api_tokens (
    id           text PRIMARY KEY,            -- public handle (prefix of the token), for revocation
    token_sha256 bytea NOT NULL UNIQUE,
    tenant       text NOT NULL,
    clusters     text[] NOT NULL DEFAULT '{}', -- empty: every cluster of the tenant
    scopes       text[] NOT NULL,
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_tokens_tenant ON api_tokens (tenant);
