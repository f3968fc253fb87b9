-- Identities whose events the relay holds back: an outbox row of theirs
-- cannot be read, or SQS refused its event for good (invariant 6: one bad
-- record holds back its own identity only). While an identity has a row
-- here, the relay reads none of its `obt` rows, which stay in place, in
-- order; the others flow on. An operator repairs the row and deletes this
-- one (`obt-admin parked retry IDENTITY`), and the relay publishes what
-- waited, in order.
CREATE TABLE obt_parked (
    identity  VARCHAR(64)     NOT NULL,
    -- The `obt` row the identity stopped at, and its event's seq.
    obt_id    BIGINT UNSIGNED NOT NULL,
    seq       BIGINT UNSIGNED NULL,
    -- `undecodable`, `sqs_refused` or `too_large`; `reason` in words.
    cause     VARCHAR(32)     NOT NULL,
    reason    TEXT            NOT NULL,
    parked_at DATETIME(3)     NOT NULL,
    PRIMARY KEY (identity)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
