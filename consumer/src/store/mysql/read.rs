//! The read path: what the database holds, read back.

use rust_decimal::Decimal;
use sqlx::Row;
use sqlx::mysql::MySqlRow;

use super::{MySqlLedger, read_failed, rollback, text};
use crate::read_model::{AppliedIdentity, AppliedSpending, IdentityHead};
use crate::store::LedgerError;

impl MySqlLedger {
    /// Everything applied for `identity`, or `None` if nothing is. The
    /// head is read with a shared lock, so that no apply of the identity
    /// commits between it and the spendings.
    pub async fn load_identity(
        &self,
        identity: &str,
    ) -> Result<Option<AppliedIdentity>, LedgerError> {
        obt_runtime::metrics::db_query("BEGIN");
        let mut tx = self.pool.begin().await.map_err(read_failed("BEGIN"))?;
        obt_runtime::metrics::db_query("SELECT consumer_identity");
        let head = sqlx::query(
            "SELECT identity, name, surname, last_seq, total, count, updated_at \
             FROM consumer_identity WHERE identity = ? LOCK IN SHARE MODE",
        )
        .bind(identity)
        .fetch_optional(&mut *tx)
        .await
        .map_err(read_failed("SELECT consumer_identity"))?;
        let Some(head) = head else {
            rollback(tx).await;
            return Ok(None);
        };
        let head = head_from_row(&head).map_err(read_failed("reading consumer_identity"))?;
        obt_runtime::metrics::db_query("SELECT obt_spending");
        let spendings = sqlx::query(
            "SELECT seq, event_id, name, surname, amount, occurred_at, applied_at \
             FROM obt_spending WHERE identity = ? ORDER BY seq",
        )
        .bind(identity)
        .fetch_all(&mut *tx)
        .await
        .map_err(read_failed("SELECT obt_spending"))?;
        rollback(tx).await;
        let spendings = spendings
            .iter()
            .map(spending_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_failed("reading obt_spending"))?;
        Ok(Some(AppliedIdentity::new(head, spendings)))
    }

    /// The heads of every identity, sorted by identity (bytewise, as the
    /// DynamoDB backend sorts them: the column's collation is binary).
    pub async fn list_identities(&self) -> Result<Vec<IdentityHead>, LedgerError> {
        obt_runtime::metrics::db_query("SELECT consumer_identity");
        let rows = sqlx::query(
            "SELECT identity, name, surname, last_seq, total, count, updated_at \
             FROM consumer_identity ORDER BY identity",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(read_failed("SELECT consumer_identity"))?;
        rows.iter()
            .map(head_from_row)
            .collect::<Result<_, _>>()
            .map_err(read_failed("reading consumer_identity"))
    }
}

impl MySqlLedger {
    /// The `applied_at` of the newest `obt_spending` row: one row read by
    /// the primary key (ids grow with each apply), no scan.
    pub async fn last_applied(&self) -> Result<Option<time::OffsetDateTime>, LedgerError> {
        sqlx::query_scalar("SELECT applied_at FROM obt_spending ORDER BY id DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(read_failed("SELECT obt_spending"))
    }
}

/// Money as the read model shows it: two fraction digits.
fn money(mut value: Decimal) -> Decimal {
    value.rescale(2);
    value
}

fn head_from_row(row: &MySqlRow) -> Result<IdentityHead, sqlx::Error> {
    Ok(IdentityHead {
        identity: text(row, "identity")?,
        name: text(row, "name")?,
        surname: text(row, "surname")?,
        last_seq: row.try_get("last_seq")?,
        total: money(row.try_get("total")?),
        count: row.try_get("count")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn spending_from_row(row: &MySqlRow) -> Result<AppliedSpending, sqlx::Error> {
    Ok(AppliedSpending {
        seq: row.try_get("seq")?,
        event_id: text(row, "event_id")?,
        name: text(row, "name")?,
        surname: text(row, "surname")?,
        amount: money(row.try_get("amount")?),
        occurred_at: row.try_get("occurred_at")?,
        applied_at: row.try_get("applied_at")?,
    })
}
