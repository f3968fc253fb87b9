//! The consumer's records (its ledger): the events it applied, its parked
//! identities and the events it holds for them, in the backend that
//! `OBT_STORAGE` chooses: [`dynamodb`] ([`DynamoDbLedger`], the default) or
//! `mysql` (`MySqlLedger`, cargo feature `mysql`). Either is seen through
//! two interfaces: [`Ledger`], the write path of the consumer and of the
//! operator's retry, and [`LedgerReader`], the read path of
//! `consumer-show`, `obt-check`, `obt-admin` and the tests. Both backends
//! answer alike for the same events (docs/ARCHITECTURE.md, "The consumer").
//!
//! They are trait objects, not generic parameters: the backend is picked
//! at run time, for one boxed future per call.

pub mod dynamodb;
mod error;
#[cfg(feature = "mysql")]
pub mod mysql;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use aws_config::SdkConfig;
use obt_contract::Envelope;
use obt_runtime::Storage;

use crate::config::StorageArgs;
use crate::parking::{Held, IdentityState, ParkRequest, ParkedIdentity, Parking};
use crate::read_model::{AppliedIdentity, IdentityHead};
pub use dynamodb::DynamoDbLedger;
pub use error::{ApplyError, HoldError, LedgerError, OpenError};
#[cfg(feature = "mysql")]
pub use mysql::MySqlLedger;

/// A future that a [`Ledger`] or [`LedgerReader`] method returns (trait
/// objects cannot have `async fn`s).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What became of an event that the records accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Written now.
    New,
    /// The same event (same `event_id` at the same `seq`) was applied
    /// before: nothing changed.
    Duplicate,
}

/// The write path: apply an event once, right after its predecessor, and
/// park, hold and unpark identities.
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// Applies `event` if it is its identity's next one and the identity
    /// is not parked, recognises it if it was applied before, and
    /// otherwise says why not ([`ApplyError::Parked`] first, then a gap),
    /// changing nothing.
    fn apply<'a>(&'a self, event: &'a Envelope) -> BoxFuture<'a, Result<Applied, ApplyError>>;

    /// How many events [`Self::apply_all`] takes at most; 0 (the default)
    /// when the backend has no such write, and the consumer then does not
    /// even gather them.
    fn max_applied_together(&self) -> usize {
        0
    }

    /// Applies `events`, of distinct identities, all or none, as
    /// [`Self::apply`] would one by one: `Ok(true)` when every one was
    /// its identity's next event, its identity not parked, and all are
    /// applied now; `Ok(false)` when any one was not, and nothing changed
    /// (apply them one by one to learn why); also `false` for more than
    /// [`Self::max_applied_together`]. One write where the backend has one
    /// for it; by default it applies nothing and says `false`.
    fn apply_all<'a>(
        &'a self,
        events: &'a [&'a Envelope],
    ) -> BoxFuture<'a, Result<bool, ApplyError>> {
        let _ = events;
        Box::pin(async { Ok(false) })
    }

    /// As [`Self::apply`], but whether the identity is parked or not: for
    /// the event that heals a gap and for the held and replayed events of
    /// a parked identity, applied in order. Removes the event from the
    /// held ones in the same write (also when it is a duplicate).
    fn apply_parked<'a>(
        &'a self,
        event: &'a Envelope,
    ) -> BoxFuture<'a, Result<Applied, ApplyError>>;

    /// The identity's last applied seq (0 when none) and its parking.
    fn state<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<IdentityState, LedgerError>>;

    /// Parks `identity`. An identity already parked keeps its parking,
    /// unless that is a `gap` (a poison or conflict then replaces it, a
    /// newer gap updates it) or `replace` is set (the operator's retry,
    /// which knows better). Returns the parking in force.
    fn park<'a>(
        &'a self,
        identity: &'a str,
        request: &'a ParkRequest,
        replace: bool,
    ) -> BoxFuture<'a, Result<Parking, LedgerError>>;

    /// Holds `event` of a parked identity, durably, until it can be
    /// applied in order; bumps the parking's version, so that no unpark
    /// can miss it.
    fn hold<'a>(&'a self, event: &'a Envelope) -> BoxFuture<'a, Result<Held, HoldError>>;

    /// The events held for `identity`, in seq order.
    fn held<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<Vec<Envelope>, LedgerError>>;

    /// Unparks `identity` if its parking is still at `version` and nothing
    /// is held for it; `false` (nothing changed) otherwise.
    fn unpark<'a>(
        &'a self,
        identity: &'a str,
        version: u64,
    ) -> BoxFuture<'a, Result<bool, LedgerError>>;

    /// Where the records are, for logs and messages; never a password.
    fn describe(&self) -> String;
}

/// The read path: what the records hold, read consistently (a read right
/// after a write sees it). The consumer itself never needs it.
pub trait LedgerReader: Send + Sync + std::fmt::Debug {
    /// Everything applied for `identity`, or `None` if nothing is.
    fn load_identity<'a>(
        &'a self,
        identity: &'a str,
    ) -> BoxFuture<'a, Result<Option<AppliedIdentity>, LedgerError>>;

    /// The heads of every identity, sorted by identity. Reads everything:
    /// for tests and checks, not for a request path.
    fn list_identities(&self) -> BoxFuture<'_, Result<Vec<IdentityHead>, LedgerError>>;

    /// Every parked identity with its parking and how many events are held
    /// for it, sorted by identity. Reads everything: for operators.
    fn list_parked(&self) -> BoxFuture<'_, Result<Vec<ParkedIdentity>, LedgerError>>;

    /// When the consumer last applied an event (of any identity), or
    /// `None` if it never did; for `obt-admin status`. Cheap in both
    /// backends: MySQL reads the newest `obt_spending` row by its primary
    /// key; DynamoDB reads one marker item that the consumer refreshes at
    /// most every [`dynamodb::APPLIED_MARK_EVERY`] (so it may be that much
    /// behind), since finding the newest applied item otherwise takes a
    /// scan of the whole table.
    fn last_applied(&self) -> BoxFuture<'_, Result<Option<time::OffsetDateTime>, LedgerError>>;

    /// Where the records are, for logs and messages; never a password.
    fn describe(&self) -> String;
}

/// One backend of the records, opened once, through either interface.
#[derive(Debug, Clone)]
pub struct Records {
    ledger: Arc<dyn Ledger>,
    reader: Arc<dyn LedgerReader>,
}

impl Records {
    pub fn new<B: Ledger + LedgerReader + 'static>(backend: B) -> Self {
        let backend = Arc::new(backend);
        Self {
            ledger: backend.clone(),
            reader: backend,
        }
    }

    /// The write path.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// The read path.
    pub fn reader(&self) -> &Arc<dyn LedgerReader> {
        &self.reader
    }

    /// Where the records are, for logs and messages; never a password.
    pub fn describe(&self) -> String {
        self.ledger.describe()
    }
}

/// Opens the backend that `args` choose. `max_connections` sizes the MySQL
/// pool; `binary` names the program in the errors that say what to fix.
pub async fn open(
    config: &SdkConfig,
    args: &StorageArgs,
    max_connections: u32,
    binary: &'static str,
) -> Result<Records, OpenError> {
    match args.storage() {
        Storage::Dynamodb => Ok(Records::new(DynamoDbLedger::new(
            obt_runtime::aws_client!(aws_sdk_dynamodb, config),
            &args.table,
        ))),
        Storage::Mysql => open_mysql(args, max_connections, binary).await,
    }
}

#[cfg(feature = "mysql")]
async fn open_mysql(
    args: &StorageArgs,
    max_connections: u32,
    binary: &'static str,
) -> Result<Records, OpenError> {
    let url = args.backend.mysql_url(binary)?;
    let ledger = MySqlLedger::connect(
        url.expose(),
        max_connections,
        mysql::CONNECT_TIMEOUT,
        obt_runtime::mysql::IDLE_SESSION_TIMEOUT,
    )
    .await?;
    Ok(Records::new(ledger))
}

#[cfg(not(feature = "mysql"))]
async fn open_mysql(
    _args: &StorageArgs,
    _max_connections: u32,
    binary: &'static str,
) -> Result<Records, OpenError> {
    Err(obt_runtime::MySqlNotBuilt { binary }.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mysql_args() -> StorageArgs {
        let mut args = StorageArgs::defaults();
        args.backend.storage = Storage::Mysql;
        args
    }

    #[cfg(feature = "mysql")]
    #[tokio::test]
    async fn the_mysql_mode_without_a_database_url_is_refused_and_names_the_setting() {
        let config = SdkConfig::builder().build();
        let error = open(&config, &mysql_args(), 1, "consumer")
            .await
            .expect_err("refused");
        assert!(matches!(error, OpenError::NoDatabaseUrl(_)), "{error}");
        assert!(error.to_string().contains("OBT_DATABASE_URL"));
    }

    #[cfg(not(feature = "mysql"))]
    #[tokio::test]
    async fn the_mysql_mode_in_a_build_without_the_feature_is_refused_and_says_how_to_get_it() {
        let config = SdkConfig::builder().build();
        let error = open(&config, &mysql_args(), 1, "consumer")
            .await
            .expect_err("refused");
        assert!(matches!(error, OpenError::NotBuilt(_)), "{error}");
        assert!(error.to_string().contains("--features mysql"), "{error}");
    }

    #[test]
    fn only_mysql_errors_that_a_retry_can_fix_are_transient() {
        let error = |transient| {
            ApplyError::Ledger(LedgerError::MySql {
                call: "COMMIT",
                detail: String::new(),
                transient,
            })
        };
        assert!(error(true).is_transient());
        assert!(!error(false).is_transient());
    }
}
