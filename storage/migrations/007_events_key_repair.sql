-- Databases created before commit 1f90055 got events' primary key as (uid, time) from an
-- earlier 001_initial.sql; the persist worker's ON CONFLICT (tenant, uid, time) then fails on
-- every event batch. Bring such a database to the key 001 declares now. The old key is
-- stricter than the new one, so re-adding cannot fail on existing rows. A no-op elsewhere.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'events'::regclass AND contype = 'p'
          AND pg_get_constraintdef(oid) = 'PRIMARY KEY (uid, "time")'
    ) THEN
        ALTER TABLE events DROP CONSTRAINT events_pkey;
        ALTER TABLE events ADD PRIMARY KEY (tenant, uid, time);
    END IF;
END
$$;
