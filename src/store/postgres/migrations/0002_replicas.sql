-- Lanyard schema version 2: several replicas on one database.
--
-- `version` increases with every save of the generations: a rotation step saves only if it
-- is still the version the replica read (compare-and-set), so two replicas never both apply
-- a step to the same state. `last_authority_id` hands out generation ids, never twice.
ALTER TABLE bundle_sequence
    ADD COLUMN version bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
    ADD COLUMN last_authority_id bigint NOT NULL DEFAULT 0 CHECK (last_authority_id >= 0);
UPDATE bundle_sequence SET last_authority_id = COALESCE((SELECT max(id) FROM authorities), 0);
