-- API tokens may expire: a token past expires_at authenticates nothing (NULL: no expiry).
ALTER TABLE api_tokens ADD COLUMN IF NOT EXISTS expires_at timestamptz;
