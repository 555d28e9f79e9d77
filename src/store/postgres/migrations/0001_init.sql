-- Lanyard schema version 1: the state the embedded store keeps, as tables.
--
-- Records are kept whole as JSON (the same encoding the embedded store writes, so a dump
-- reads the same and sealed keys stay sealed), and the fields the CA searches or constrains
-- are columns beside them.

-- Small values: `initialized`, `kek_check`, the server certificate, ...
CREATE TABLE meta (
    key   text  PRIMARY KEY,
    value bytea NOT NULL
);

-- One row per authority generation. The record holds the root and intermediate
-- certificates and their private keys sealed under the KEK.
CREATE TABLE authorities (
    id     bigint PRIMARY KEY CHECK (id >= 0 AND id <= 4294967295),
    state  text   NOT NULL CHECK (state IN ('prepared', 'active', 'retiring', 'retired')),
    record jsonb  NOT NULL
);

-- The trust bundle sequence: exactly one row, changed with the generations it describes.
CREATE TABLE bundle_sequence (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    value     bigint  NOT NULL CHECK (value >= 0)
);
INSERT INTO bundle_sequence (singleton, value) VALUES (true, 0);

-- Every certificate the CA issued. The primary key is what keeps serials unique, across
-- every process that writes to this database.
CREATE TABLE certificates (
    serial        bytea       PRIMARY KEY CHECK (octet_length(serial) = 16),
    kind          text        NOT NULL,
    instance_guid text,
    app_guid      text,
    authority_id  bigint      NOT NULL,
    not_before    timestamptz NOT NULL,
    not_after     timestamptz NOT NULL,
    revoked_at    timestamptz,
    record        jsonb       NOT NULL
);
-- Queries answer newest first: each index is in that order.
CREATE INDEX certificates_by_instance ON certificates (instance_guid, not_before DESC, serial DESC)
    WHERE instance_guid IS NOT NULL;
CREATE INDEX certificates_by_app ON certificates (app_guid, not_before DESC, serial DESC)
    WHERE app_guid IS NOT NULL;
CREATE INDEX certificates_by_time ON certificates (not_before DESC, serial DESC);
-- The latest notAfter of a generation (when it may retire).
CREATE INDEX certificates_by_authority ON certificates (authority_id, not_after);
-- Revocation lists, per generation.
CREATE INDEX certificates_revoked ON certificates (authority_id) WHERE revoked_at IS NOT NULL;

-- Join tokens under the hash of their secret (the secret itself is never stored).
CREATE TABLE join_tokens (
    hash       bytea       PRIMARY KEY,
    expires_at timestamptz NOT NULL,
    record     jsonb       NOT NULL
);
CREATE INDEX join_tokens_by_expiry ON join_tokens (expires_at);
