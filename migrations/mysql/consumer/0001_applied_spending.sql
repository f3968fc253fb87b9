-- The consumer's own database in the MySQL mode (the original project's
-- consumed_outboxtable_db). Applying an event is one transaction: the
-- spending row, with the event's id (unique), and the identity's head.

-- One row per identity: the seq of the last event applied and the totals.
-- Locked while an event of the identity is applied.
CREATE TABLE consumer_identity (
    identity   VARCHAR(64)     NOT NULL,
    name       VARCHAR(100)    NOT NULL,
    surname    VARCHAR(100)    NOT NULL,
    last_seq   BIGINT UNSIGNED NOT NULL,
    total      DECIMAL(38, 2)  NOT NULL,
    count      BIGINT UNSIGNED NOT NULL,
    updated_at DATETIME(3)     NOT NULL,
    PRIMARY KEY (identity)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The spendings applied, each with the id of the event that brought it:
-- a duplicate delivery finds its event id here and changes nothing.
CREATE TABLE obt_spending (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    event_id    CHAR(36)        NOT NULL,
    identity    VARCHAR(64)     NOT NULL,
    seq         BIGINT UNSIGNED NOT NULL,
    name        VARCHAR(100)    NOT NULL,
    surname     VARCHAR(100)    NOT NULL,
    amount      DECIMAL(20, 2)  NOT NULL,
    occurred_at DATETIME(3)     NOT NULL,
    applied_at  DATETIME(3)     NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY obt_spending_event_id (event_id),
    UNIQUE KEY obt_spending_identity_seq (identity, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
