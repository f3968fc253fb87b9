//! Parkings (`obt_consumer_parked`) and held events (`obt_consumer_held`)
//! in the consumer's MySQL database. Every write of an identity's parking
//! or of its held events locks its parking row first (after the head, for
//! an apply), so a hold and an unpark are serialised: the unpark deletes
//! the parking only when no held row is left, in the same transaction.

use obt_contract::Envelope;
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, Row, Transaction};

use super::{Failure, MySqlLedger, code, error_number, failed, read_failed, rollback, text};
use crate::parking::{Cause, Held, IdentityState, ParkRequest, ParkedIdentity, Parking};
use crate::store::{HoldError, LedgerError};

const PARKING_COLUMNS: &str = "cause, reason, seq, message_id, parked_at, version";

fn parking_from_row(row: &MySqlRow) -> Result<Parking, sqlx::Error> {
    let cause: String = text(row, "cause")?;
    let cause = Cause::parse(&cause).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "cause".to_owned(),
        source: format!("unknown cause {cause:?}").into(),
    })?;
    Ok(Parking {
        cause,
        reason: text(row, "reason")?,
        seq: row.try_get("seq")?,
        message_id: row.try_get_unchecked("message_id")?,
        parked_at: row.try_get("parked_at")?,
        version: row.try_get("version")?,
    })
}

/// The identity's parking, its row locked until the transaction ends.
pub(super) async fn lock_parking(
    tx: &mut Transaction<'_, MySql>,
    identity: &str,
) -> Result<Option<Parking>, Failure> {
    let query =
        format!("SELECT {PARKING_COLUMNS} FROM obt_consumer_parked WHERE identity = ? FOR UPDATE");
    obt_runtime::metrics::db_query("SELECT obt_consumer_parked FOR UPDATE");
    let row = sqlx::query(&query)
        .bind(identity)
        .fetch_optional(&mut **tx)
        .await
        .map_err(failed("SELECT obt_consumer_parked FOR UPDATE"))?;
    row.as_ref()
        .map(parking_from_row)
        .transpose()
        .map_err(failed("reading obt_consumer_parked"))
}

/// A failure of a parking transaction as a [`LedgerError`]; a deadlock is
/// transient (a retry will not meet it).
fn store_failure(failure: Failure) -> LedgerError {
    match failure {
        Failure::Retry { call, error } => LedgerError::MySql {
            call,
            detail: error.to_string(),
            transient: true,
        },
        Failure::Final(crate::store::ApplyError::Ledger(e)) => e,
        Failure::Final(e) => LedgerError::MySql {
            call: "parking",
            detail: e.to_string(),
            transient: false,
        },
    }
}

impl MySqlLedger {
    pub async fn state(&self, identity: &str) -> Result<IdentityState, LedgerError> {
        obt_runtime::metrics::db_query("SELECT consumer_identity");
        let last_seq: Option<u64> =
            sqlx::query_scalar("SELECT last_seq FROM consumer_identity WHERE identity = ?")
                .bind(identity)
                .fetch_optional(&self.pool)
                .await
                .map_err(read_failed("SELECT consumer_identity"))?;
        let query = format!("SELECT {PARKING_COLUMNS} FROM obt_consumer_parked WHERE identity = ?");
        obt_runtime::metrics::db_query("SELECT obt_consumer_parked");
        let parking = sqlx::query(&query)
            .bind(identity)
            .fetch_optional(&self.pool)
            .await
            .map_err(read_failed("SELECT obt_consumer_parked"))?;
        let parking = parking
            .as_ref()
            .map(parking_from_row)
            .transpose()
            .map_err(read_failed("reading obt_consumer_parked"))?;
        Ok(IdentityState {
            last_seq: last_seq.unwrap_or(0),
            parking,
        })
    }

    /// Records a parking (see [`crate::store::Ledger::park`]).
    pub async fn park(
        &self,
        identity: &str,
        request: &ParkRequest,
        replace: bool,
    ) -> Result<Parking, LedgerError> {
        obt_runtime::metrics::db_query("BEGIN");
        let mut tx = self.pool.begin().await.map_err(read_failed("BEGIN"))?;
        let existing = lock_parking(&mut tx, identity)
            .await
            .map_err(store_failure)?;
        let written = match &existing {
            None => {
                obt_runtime::metrics::db_query("INSERT obt_consumer_parked");
                sqlx::query(
                    "INSERT INTO obt_consumer_parked \
                     (identity, cause, reason, seq, message_id, parked_at, version) \
                     VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(3), ?)",
                )
                .bind(identity)
                .bind(request.cause.as_str())
                .bind(&request.reason)
                .bind(request.seq)
                .bind(request.message_id.as_deref())
                .bind(u64::from(rand::random::<u32>()))
                .execute(&mut *tx)
                .await
                .map(|_| ())
            }
            Some(parking) if replace || parking.cause == Cause::Gap => {
                obt_runtime::metrics::db_query("UPDATE obt_consumer_parked");
                sqlx::query(
                "UPDATE obt_consumer_parked SET cause = ?, reason = ?, seq = ?, message_id = ?, \
                 parked_at = UTC_TIMESTAMP(3), version = version + 1 WHERE identity = ?",
            )
            .bind(request.cause.as_str())
            .bind(&request.reason)
            .bind(request.seq)
            .bind(request.message_id.as_deref())
            .bind(identity)
            .execute(&mut *tx)
            .await
            .map(|_| ())
            }
            Some(_) => Ok(()),
        };
        if let Err(e) = written {
            // A concurrent first parking won the insert: its parking stays.
            let lost_race = error_number(&e) == Some(code::DUPLICATE_KEY);
            rollback(tx).await;
            if lost_race {
                return self
                    .state(identity)
                    .await?
                    .parking
                    .ok_or_else(|| LedgerError::MySql {
                        call: "INSERT obt_consumer_parked",
                        detail: "the parking that won the race is gone".to_owned(),
                        transient: true,
                    });
            }
            return Err(super::store_error("write obt_consumer_parked", &e));
        }
        let parking = lock_parking(&mut tx, identity)
            .await
            .map_err(store_failure)?;
        obt_runtime::metrics::db_query("COMMIT");
        tx.commit().await.map_err(read_failed("COMMIT"))?;
        parking.ok_or_else(|| LedgerError::MySql {
            call: "SELECT obt_consumer_parked",
            detail: "the parking just written is gone".to_owned(),
            transient: true,
        })
    }

    /// Holds `event` of a parked identity, bumping the parking's version.
    pub async fn hold(&self, event: &Envelope) -> Result<Held, HoldError> {
        let identity = event.identity.as_str();
        let event_id = event.event_id.to_string();
        obt_runtime::metrics::db_query("BEGIN");
        let mut tx = self.pool.begin().await.map_err(read_failed("BEGIN"))?;
        if lock_parking(&mut tx, identity)
            .await
            .map_err(store_failure)?
            .is_none()
        {
            rollback(tx).await;
            return Err(HoldError::NotParked {
                identity: identity.to_owned(),
                seq: event.seq,
            });
        }
        obt_runtime::metrics::db_query("SELECT obt_consumer_held");
        let held: Option<String> = sqlx::query(
            "SELECT event_id FROM obt_consumer_held WHERE identity = ? AND seq = ? FOR UPDATE",
        )
        .bind(identity)
        .bind(event.seq)
        .fetch_optional(&mut *tx)
        .await
        .and_then(|row| row.map(|row| text(&row, "event_id")).transpose())
        .map_err(read_failed("SELECT obt_consumer_held"))?;
        match held {
            Some(held) if held == event_id => {
                rollback(tx).await;
                return Ok(Held::Duplicate);
            }
            Some(held_event_id) => {
                rollback(tx).await;
                return Err(HoldError::Conflict {
                    identity: identity.to_owned(),
                    seq: event.seq,
                    held_event_id,
                    event_id,
                });
            }
            None => {}
        }
        obt_runtime::metrics::db_query("INSERT obt_consumer_held");
        sqlx::query(
            "INSERT INTO obt_consumer_held (identity, seq, event_id, envelope, held_at) \
             VALUES (?, ?, ?, ?, UTC_TIMESTAMP(3))",
        )
        .bind(identity)
        .bind(event.seq)
        .bind(&event_id)
        .bind(event.encode())
        .execute(&mut *tx)
        .await
        .map_err(read_failed("INSERT obt_consumer_held"))?;
        obt_runtime::metrics::db_query("UPDATE obt_consumer_parked");
        sqlx::query("UPDATE obt_consumer_parked SET version = version + 1 WHERE identity = ?")
            .bind(identity)
            .execute(&mut *tx)
            .await
            .map_err(read_failed("UPDATE obt_consumer_parked"))?;
        obt_runtime::metrics::db_query("COMMIT");
        tx.commit().await.map_err(read_failed("COMMIT"))?;
        Ok(Held::New)
    }

    /// The held events of `identity`, in seq order.
    pub async fn held(&self, identity: &str) -> Result<Vec<Envelope>, LedgerError> {
        obt_runtime::metrics::db_query("SELECT obt_consumer_held");
        let rows = sqlx::query(
            "SELECT seq, envelope FROM obt_consumer_held WHERE identity = ? ORDER BY seq",
        )
        .bind(identity)
        .fetch_all(&self.pool)
        .await
        .map_err(read_failed("SELECT obt_consumer_held"))?;
        rows.iter()
            .map(|row| {
                let body =
                    text(row, "envelope").map_err(read_failed("reading obt_consumer_held"))?;
                Envelope::decode(&body).map_err(|e| LedgerError::MySql {
                    call: "reading obt_consumer_held",
                    detail: format!("a held envelope of {identity}: {e}"),
                    transient: false,
                })
            })
            .collect()
    }

    /// Unparks `identity` if nothing is held and the version is `version`.
    pub async fn unpark(&self, identity: &str, version: u64) -> Result<bool, LedgerError> {
        obt_runtime::metrics::db_query("BEGIN");
        let mut tx = self.pool.begin().await.map_err(read_failed("BEGIN"))?;
        let parking = lock_parking(&mut tx, identity)
            .await
            .map_err(store_failure)?;
        if parking.map(|p| p.version) != Some(version) {
            rollback(tx).await;
            return Ok(false);
        }
        obt_runtime::metrics::db_query("SELECT COUNT(*) obt_consumer_held");
        let held: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM obt_consumer_held WHERE identity = ?")
                .bind(identity)
                .fetch_one(&mut *tx)
                .await
                .map_err(read_failed("SELECT COUNT(*) obt_consumer_held"))?;
        if held > 0 {
            rollback(tx).await;
            return Ok(false);
        }
        obt_runtime::metrics::db_query("DELETE obt_consumer_parked");
        sqlx::query("DELETE FROM obt_consumer_parked WHERE identity = ?")
            .bind(identity)
            .execute(&mut *tx)
            .await
            .map_err(read_failed("DELETE obt_consumer_parked"))?;
        obt_runtime::metrics::db_query("COMMIT");
        tx.commit().await.map_err(read_failed("COMMIT"))?;
        Ok(true)
    }

    /// Every parked identity with its held count, sorted by identity.
    pub async fn list_parked(&self) -> Result<Vec<ParkedIdentity>, LedgerError> {
        let query = format!(
            "SELECT p.identity, {}, \
             (SELECT COUNT(*) FROM obt_consumer_held h WHERE h.identity = p.identity) AS held \
             FROM obt_consumer_parked p ORDER BY p.identity",
            PARKING_COLUMNS
                .split(", ")
                .map(|c| format!("p.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        obt_runtime::metrics::db_query("SELECT obt_consumer_parked");
        let rows = sqlx::query(&query)
            .fetch_all(&self.pool)
            .await
            .map_err(read_failed("SELECT obt_consumer_parked"))?;
        rows.iter()
            .map(|row| {
                let held: i64 = row.try_get("held")?;
                Ok(ParkedIdentity {
                    identity: text(row, "identity")?,
                    parking: parking_from_row(row)?,
                    held: usize::try_from(held).unwrap_or(0),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(read_failed("reading obt_consumer_parked"))
    }
}
