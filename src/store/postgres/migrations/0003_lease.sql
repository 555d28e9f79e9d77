-- Lanyard schema version 3: leases, so that one replica at a time runs the automatic
-- rotation schedule and intermediate renewal.
--
-- A row is taken or renewed with one conditional upsert (free, lapsed, or already the
-- caller's); times are the database's own clock, so replicas need not agree on theirs.
CREATE TABLE leases (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);
