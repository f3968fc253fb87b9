-- The api's database in the MySQL mode (the original project's
-- outboxtable_db). A POST is one transaction over the three tables.

-- One row per identity: its sequence and totals. The write that records a
-- spending locks this row (SELECT ... FOR UPDATE) to take the next seq, so
-- the writes of one identity are serialised and their seqs consecutive.
CREATE TABLE obt_identity (
    identity   VARCHAR(64)     NOT NULL,
    name       VARCHAR(100)    NOT NULL,
    surname    VARCHAR(100)    NOT NULL,
    last_seq   BIGINT UNSIGNED NOT NULL,
    total      DECIMAL(38, 2)  NOT NULL,
    count      BIGINT UNSIGNED NOT NULL,
    updated_at DATETIME(3)     NOT NULL,
    PRIMARY KEY (identity)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The spendings: the original columns, plus the event's seq and the time.
-- One identity has many.
CREATE TABLE obt_spending (
    id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    identity   VARCHAR(64)     NOT NULL,
    name       VARCHAR(100)    NOT NULL,
    surname    VARCHAR(100)    NOT NULL,
    amount     DECIMAL(20, 2)  NOT NULL,
    seq        BIGINT UNSIGNED NOT NULL,
    created_at DATETIME(3)     NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY obt_spending_identity_seq (identity, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The outbox: one row per event not yet published. `payload` is the
-- envelope exactly as it is sent to the queue. The relay deletes a row
-- only after SQS accepted its event.
CREATE TABLE obt (
    id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    event_id   CHAR(36)        NOT NULL,
    identity   VARCHAR(64)     NOT NULL,
    seq        BIGINT UNSIGNED NOT NULL,
    type       VARCHAR(64)     NOT NULL,
    payload    JSON            NOT NULL,
    created_at DATETIME(3)     NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY obt_event_id (event_id),
    UNIQUE KEY obt_identity_seq (identity, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
