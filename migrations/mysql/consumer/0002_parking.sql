-- Identities the consumer parked (invariant 6): a message of theirs could
-- never be applied (poison, a conflict), or their events arrived past a
-- gap. While an identity has a row here its later events are held in
-- `obt_consumer_held`, in seq order, and none is applied past the cause;
-- a gap heals by itself when the missing event arrives, the rest through
-- the operator's retry (`obt-admin`). Held rows exist only while their
-- identity is parked: the unpark deletes the parking only when none is
-- left, under the parking row's lock, which every hold takes too.
CREATE TABLE obt_consumer_parked (
    identity   VARCHAR(64)     NOT NULL,
    -- `poison`, `conflict` or `gap`; `reason` in words.
    cause      VARCHAR(16)     NOT NULL,
    reason     TEXT            NOT NULL,
    -- The seq concerned when known (a gap: the one expected), and the
    -- main queue's id of the message that parked it (poison, conflict).
    seq        BIGINT UNSIGNED NULL,
    message_id VARCHAR(128)    NULL,
    parked_at  DATETIME(3)     NOT NULL,
    -- Changed by every write of the parking and every hold.
    version    BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (identity)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The events held for a parked identity, whole, one row per seq.
CREATE TABLE obt_consumer_held (
    identity VARCHAR(64)     NOT NULL,
    seq      BIGINT UNSIGNED NOT NULL,
    event_id CHAR(36)        NOT NULL,
    -- The envelope as JSON: at most an SQS message (256 KiB).
    envelope MEDIUMTEXT      NOT NULL,
    held_at  DATETIME(3)     NOT NULL,
    PRIMARY KEY (identity, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
