-- The api's Idempotency-Key records (POST /api/v1/spending with the
-- header): inserted in the same transaction as the spending and its outbox
-- row, so neither exists without the other. `fingerprint` is the SHA-256
-- (hex) of the validated, canonical spending; `response_body` is the 201
-- body (JSON) exactly as first sent, replayed with `response_location`
-- while `expires_at` is not past. TEXT rather than JSON: MySQL's JSON type
-- would re-format the document, and a replay must be byte for byte.
-- An expired row is replaced (UPDATE) by the next request with its key;
-- nothing else deletes rows (a periodic `DELETE FROM obt_idempotency
-- WHERE expires_at < NOW()` by an operator, using the index below, keeps
-- the table small).
CREATE TABLE obt_idempotency (
    idempotency_key   VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    fingerprint       CHAR(64)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    response_location VARCHAR(255) NOT NULL,
    response_body     TEXT         NOT NULL,
    created_at        DATETIME(3)  NOT NULL,
    expires_at        DATETIME(3)  NOT NULL,
    PRIMARY KEY (idempotency_key),
    KEY obt_idempotency_expires_at (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
