-- Share links (the web console's "share with an auditor"): a time-limited, read-only token for
-- ONE session of one tenant, usable without an account. Stored as SHA-256 like api_tokens;
-- every use is an audit event (session.view with access_via = share).
CREATE TABLE share_links (
    id            text PRIMARY KEY,
    token_sha256  bytea NOT NULL UNIQUE,
    tenant        text NOT NULL,
    sid           text NOT NULL,
    at_ms         bigint NOT NULL DEFAULT 0,   -- the moment the link opens at
    created_by    text NOT NULL,               -- the API token that made it
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz
);
CREATE INDEX share_links_tenant_sid ON share_links (tenant, sid);
