-- Lanyard schema version 20: retention of expired certificate records.
--
-- The maintenance task deletes records that expired longer ago than `retention.expired_records`,
-- earliest expiry first and a bounded batch at a time: this index finds them without a scan.
CREATE INDEX certificates_by_expiry ON certificates (not_after, serial);

-- The latest notAfter of deleted records, per generation, so the latest notAfter a
-- generation signed (when it may retire) stays what it was after its records are deleted.
CREATE TABLE deleted_last_leaf (
    authority_id bigint      PRIMARY KEY,
    not_after    timestamptz NOT NULL
);
