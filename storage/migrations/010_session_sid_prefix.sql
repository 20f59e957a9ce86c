-- Sessions may be named by a unique prefix of their id (storage.reader.resolve_sid):
-- `sid LIKE 'prefix%'` within a tenant, served by this index whatever the database collation.
CREATE INDEX IF NOT EXISTS sessions_tenant_sid_prefix ON sessions (tenant, sid text_pattern_ops);
