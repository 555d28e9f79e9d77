-- Lanyard schema version 10: instance ownership bindings and the hash-chained audit log.
--
-- A binding says which cell owns an instance GUID, with which app, space and organization,
-- until the latest certificate issued under it expires (`not_after`). It is written in the
-- transaction that records the certificate; an `INSERT ... ON CONFLICT DO UPDATE ... WHERE`
-- decides races between replicas (exactly one owner).
CREATE TABLE instance_bindings (
    instance_guid     text        PRIMARY KEY,
    owner             text        NOT NULL,
    app_guid          text        NOT NULL,
    space_guid        text        NOT NULL,
    organization_guid text        NOT NULL,
    not_after         timestamptz NOT NULL
);

-- The audit log: one row per entry, in `seq` order, each entry whole as JSON. Entries are
-- appended in the transaction of the change they record.
CREATE TABLE audit_log (
    seq   bigint PRIMARY KEY CHECK (seq >= 1),
    entry jsonb  NOT NULL
);

-- The chain head: the last entry's seq and hash, exactly one row. An append locks it
-- (`FOR UPDATE`) as the last step of its transaction, so appends from every replica take
-- turns, seq stays gapless and each entry links to the one before.
CREATE TABLE audit_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq       bigint  NOT NULL CHECK (seq >= 0),
    hash      text    NOT NULL
);
INSERT INTO audit_head (singleton, seq, hash)
    VALUES (true, 0, '0000000000000000000000000000000000000000000000000000000000000000');
