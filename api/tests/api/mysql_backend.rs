//! The MySQL side of the helpers: a fresh pair of databases with the
//! least-privilege users (`obt_testkit::mysql::MySqlStack`), the api's
//! store on them, an admin pool to look at and change what the api's user
//! may not, and two ways to get in the api's way: a lock on an identity's
//! row, and the testkit's fault proxy in front of the server.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use obt_api::store::mysql::pool_options;
use obt_api::{AppState, MySqlStore, Settings, StoreOptions};
use obt_contract::Envelope;
use obt_runtime::Storage;
use obt_runtime::args::StorageArgs;
use obt_testkit::fault_proxy::FaultProxy;
use obt_testkit::mysql::{MySqlStack, waits_for_a_lock};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool};
use sqlx::{MySql, Transaction};

use crate::helpers::{KeyRecord, REQUEST_TIMEOUT};

/// The api's database of one test.
pub struct MySqlBackend {
    pub stack: MySqlStack,
    /// The admin on the api's database.
    pub admin: MySqlPool,
}

impl MySqlBackend {
    pub async fn create() -> Self {
        let stack = MySqlStack::create(3).await;
        let admin = stack.api_admin().await;
        Self { stack, admin }
    }

    /// The api's connection URL (as its own user).
    pub fn url(&self) -> &str {
        &self.stack.urls.api_url
    }

    /// A store of its own, connected as the api's binary connects.
    pub async fn state(&self, options: StoreOptions) -> AppState {
        let store = MySqlStore::connect(self.url(), 10, options)
            .await
            .unwrap_or_else(|e| panic!("connecting the api's store: {e}"));
        AppState::new(store, REQUEST_TIMEOUT)
    }

    /// A fault proxy in front of the server, passing everything for now.
    pub async fn proxy(&self) -> FaultProxy {
        let options = MySqlConnectOptions::from_str(self.url()).expect("the api's URL");
        let server = tokio::net::lookup_host((options.get_host(), options.get_port()))
            .await
            .expect("resolve the server's address")
            .next()
            .expect("the server has an address");
        FaultProxy::start(server)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A state whose store reaches the server through `proxy`, giving up
    /// on a connection after `acquire_timeout`, its sessions ended by the
    /// server after `idle_session` of silence.
    pub fn state_through(
        &self,
        proxy: &FaultProxy,
        acquire_timeout: Duration,
        idle_session: Duration,
    ) -> AppState {
        let options = MySqlConnectOptions::from_str(self.url())
            .expect("the api's URL")
            .host("127.0.0.1")
            .port(proxy.addr().port());
        let pool = pool_options(2, idle_session)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(options);
        AppState::new(
            MySqlStore::new(pool, StoreOptions::default()),
            REQUEST_TIMEOUT,
        )
    }

    /// Settings of a server on a free port of the loopback.
    pub fn settings(&self) -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            storage: StorageArgs {
                storage: Storage::Mysql,
                database_url: Some(self.url().to_owned().into()),
            },
            ..Settings::defaults()
        }
    }

    pub async fn admin_execute(&self, sql: &str) {
        sqlx::query(sql)
            .execute(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("counting {table}: {e}"))
    }

    /// The rows of the api's three tables, together.
    pub async fn stored_count(&self) -> i64 {
        let mut total = 0;
        for table in ["obt_identity", "obt_spending", "obt"] {
            total += self.count(table).await;
        }
        total
    }

    /// The payloads of `identity`'s outbox rows, in seq order, exactly as
    /// stored.
    pub async fn outbox_payloads(&self, identity: &str) -> Vec<String> {
        let payloads: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT payload FROM obt WHERE identity = ? ORDER BY seq")
                .bind(identity)
                .fetch_all(&self.admin)
                .await
                .expect("read the outbox");
        payloads.into_iter().map(utf8).collect()
    }

    pub async fn outbox_events(&self, identity: &str) -> Vec<Envelope> {
        self.outbox_payloads(identity)
            .await
            .iter()
            .map(|payload| Envelope::decode(payload).expect("an envelope"))
            .collect()
    }

    /// Deletes an outbox row, as the relay does once it published it.
    pub async fn remove_published(&self, identity: &str, seq: u64) {
        sqlx::query("DELETE FROM obt WHERE identity = ? AND seq = ?")
            .bind(identity)
            .bind(seq)
            .execute(&self.admin)
            .await
            .expect("delete an outbox row");
    }

    /// The seqs of `identity` in `table` (`obt_spending` or `obt`), in
    /// order.
    pub async fn seqs(&self, table: &str, identity: &str) -> Vec<u64> {
        sqlx::query_scalar(&format!(
            "SELECT seq FROM {table} WHERE identity = ? ORDER BY seq"
        ))
        .bind(identity)
        .fetch_all(&self.admin)
        .await
        .unwrap_or_else(|e| panic!("seqs of {table}: {e}"))
    }

    /// See [`crate::helpers::TestApp::put_key_record`].
    pub async fn put_key_record(&self, record: &KeyRecord) {
        sqlx::query(
            "INSERT INTO obt_idempotency \
                 (idempotency_key, fingerprint, response_location, response_body, created_at, \
                  expires_at) \
             VALUES (?, ?, ?, ?, UTC_TIMESTAMP(3), UTC_TIMESTAMP(3) + INTERVAL 1 HOUR)",
        )
        .bind(&record.key)
        .bind(&record.fingerprint)
        .bind(&record.location)
        .bind(&record.body)
        .execute(&self.admin)
        .await
        .expect("insert a key record");
    }

    /// See [`crate::helpers::TestApp::key_record`].
    pub async fn key_record(&self, key: &str) -> Option<KeyRecord> {
        let row = sqlx::query(
            "SELECT idempotency_key, fingerprint, response_location, response_body \
             FROM obt_idempotency WHERE idempotency_key = ?",
        )
        .bind(key)
        .fetch_optional(&self.admin)
        .await
        .expect("read a key record")?;
        let text = |column: &str| {
            utf8(
                sqlx::Row::try_get(&row, column)
                    .unwrap_or_else(|e| panic!("obt_idempotency.{column}: {e}")),
            )
        };
        Some(KeyRecord {
            key: text("idempotency_key"),
            fingerprint: text("fingerprint"),
            location: text("response_location"),
            body: text("response_body"),
        })
    }

    /// Takes the lock of `identity`'s `obt_identity` row (creating the row
    /// for the time of the lock when it does not exist) in a transaction
    /// of the admin, which holds it until released.
    pub async fn lock_row(&self, identity: &str) -> RowLock {
        let mut tx = self.admin.begin().await.expect("begin");
        sqlx::query(
            "INSERT INTO obt_identity \
                 (identity, name, surname, last_seq, total, count, updated_at) \
             VALUES (?, 'Held', 'Held', 0, 0, 0, UTC_TIMESTAMP(3)) \
             ON DUPLICATE KEY UPDATE last_seq = last_seq",
        )
        .bind(identity)
        .execute(&mut *tx)
        .await
        .expect("lock the identity's row");
        RowLock {
            tx: Some(tx),
            admin: self.admin.clone(),
            api_user: self.stack.names.api_user.clone(),
        }
    }
}

/// A row lock held by the admin; see [`MySqlBackend::lock_row`]. Dropping
/// it releases the lock too.
pub struct RowLock {
    tx: Option<Transaction<'static, MySql>>,
    admin: MySqlPool,
    api_user: String,
}

impl RowLock {
    /// Waits until a transaction of the api's user waits for a lock.
    pub async fn waited_for(&self) {
        waits_for_a_lock(&self.admin, &self.api_user).await;
    }

    /// Rolls the holding transaction back.
    pub async fn release(&mut self) {
        if let Some(tx) = self.tx.take() {
            tx.rollback().await.expect("release the row lock");
        }
    }
}

/// A text column's bytes as a String. The schema's `utf8mb4_bin` columns
/// come flagged BINARY, and sqlx 0.8 will not read those as a String.
pub fn utf8(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("UTF-8 text")
}
