-- The search watermark (storage/search/watermark.py): what PostgreSQL holds that OpenSearch may
-- not hold yet, per tenant and time. The persist worker adds one row per (batch, tenant, topic,
-- partition) in the batch's own transaction, so no stored row is ever outside a pending row
-- until the index worker has indexed it and committed past it (it then deletes the rows below
-- its committed offsets). Rows with topic = '' stand for documents OpenSearch refused for good;
-- a full reindex without refusals removes them.
CREATE TABLE sv_index_pending (
    id          bigserial PRIMARY KEY,
    tenant      text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    last_offset bigint NOT NULL,
    since_us    bigint NOT NULL,   -- earliest time_us of a document these records may change
    records     integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sv_index_pending_tenant ON sv_index_pending (tenant, since_us);
CREATE INDEX sv_index_pending_offsets ON sv_index_pending (topic, partition, last_offset);
