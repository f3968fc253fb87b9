//! The MySQL mode's test stack: a fresh pair of databases (the api's and
//! the consumer's) with their schema and least-privilege users on the
//! MariaDB server that `scripts/test.sh` starts, beside a fresh [`Stack`]
//! for the queues.

use std::time::Duration;

use obt_migrate::mysql::{MySqlNames, MySqlReport, Passwords, setup};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

use crate::fault_proxy::{FaultProxy, Mode};
use crate::{Stack, eventually};

/// The admin URL of the test server, or a clear panic saying how to get one.
pub fn admin_url() -> String {
    std::env::var("OBT_MYSQL_ADMIN_URL").unwrap_or_else(|_| {
        panic!(
            "OBT_MYSQL_ADMIN_URL is not set: the MySQL-mode tests need the MariaDB server that \
             scripts/test.sh starts (scripts/mariadb.sh), or the one of `scripts/stack.sh up` \
             with `eval \"$(scripts/stack.sh env)\"` before cargo test."
        )
    })
}

/// The CA of the test server's TLS certificate (`OBT_MYSQL_CA_FILE`, which
/// scripts/mariadb.sh exports), or a clear panic saying how to get one.
pub fn ca_file() -> String {
    std::env::var("OBT_MYSQL_CA_FILE").unwrap_or_else(|_| {
        panic!(
            "OBT_MYSQL_CA_FILE is not set: the MySQL TLS tests need the CA that scripts/mariadb.sh \
             makes for its server (mariadb_start exports it beside OBT_MYSQL_ADMIN_URL)."
        )
    })
}

/// `url` with the strictest TLS options: encrypted, and the server's
/// certificate checked against the test server's CA and for the URL's host.
pub fn verify_identity(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{separator}ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
        ca_file()
    )
}

/// Databases, users and queues of one test.
pub struct MySqlStack {
    /// The queues (and DynamoDB tables, unused in this mode).
    pub stack: Stack,
    pub names: MySqlNames,
    /// Each service's connection URL.
    pub urls: MySqlReport,
}

impl MySqlStack {
    /// Creates everything under unique names, with `max_receive_count`
    /// receives before the dead-letter queue.
    pub async fn create(max_receive_count: u32) -> Self {
        let stack = Stack::create(max_receive_count).await;
        let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let names = MySqlNames {
            api_database: format!("t{id}_api"),
            consumer_database: format!("t{id}_consumer"),
            api_user: format!("u{id}_api"),
            relay_user: format!("u{id}_relay"),
            consumer_user: format!("u{id}_consumer"),
        };
        let password = || uuid::Uuid::new_v4().simple().to_string();
        let passwords = Passwords {
            api: password(),
            relay: password(),
            consumer: password(),
        };
        let urls = setup(&admin_url(), &names, &passwords)
            .await
            .unwrap_or_else(|e| panic!("creating the MySQL test stack failed: {e}"));
        Self { stack, names, urls }
    }

    fn env(&self, url: &str) -> Vec<(&'static str, String)> {
        let mut env = self.stack.service_env();
        env.push(("OBT_STORAGE", "mysql".to_owned()));
        env.push(("OBT_DATABASE_URL", url.to_owned()));
        env
    }

    /// The environment of the api binary on this stack.
    pub fn api_env(&self) -> Vec<(&'static str, String)> {
        self.env(&self.urls.api_url)
    }

    /// The environment of the relay binary on this stack.
    pub fn relay_env(&self) -> Vec<(&'static str, String)> {
        self.env(&self.urls.relay_url)
    }

    /// The environment of the consumer binary on this stack.
    pub fn consumer_env(&self) -> Vec<(&'static str, String)> {
        self.env(&self.urls.consumer_url)
    }

    /// An admin pool on the api's database, for a test to look at or
    /// change what the services may not.
    pub async fn api_admin(&self) -> MySqlPool {
        admin_pool(&self.names.api_database).await
    }

    /// An admin pool on the consumer's database.
    pub async fn consumer_admin(&self) -> MySqlPool {
        admin_pool(&self.names.consumer_database).await
    }
}

/// Waits (up to 10 s) until a transaction of `user` waits for a row lock,
/// as `admin` (who may see every session) finds in `INNODB_TRX`.
pub async fn waits_for_a_lock(admin: &MySqlPool, user: &str) {
    eventually(
        &format!("a transaction of {user} waiting for a lock"),
        Duration::from_secs(10),
        || async move {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX t \
                 JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
                 WHERE t.trx_state = 'LOCK WAIT' AND p.USER = ?",
            )
            .bind(user)
            .fetch_one(admin)
            .await
            .map_err(|e| e.to_string())?;
            if waiting > 0 {
                Ok(())
            } else {
                Err("no transaction waits".to_owned())
            }
        },
    )
    .await;
}

/// Cuts `write` off from the server mid-transaction. `write` is a task
/// whose transaction, reaching the server through `proxy`, waits for a row
/// lock that `release` lets go. With the proxy hanging, the server grants
/// the lock and its answer is lost; the task is then given up, as a
/// service's timeout gives it up, and what its connection sends next (the
/// transaction's `ROLLBACK`, the pool's ping) is lost too. On return the
/// proxy passes again, and the transaction is still open on the server,
/// holding the row, with only the server left to end it.
pub async fn cut_off_mid_transaction<T>(
    proxy: &FaultProxy,
    write: tokio::task::JoinHandle<T>,
    release: impl Future<Output = ()>,
) {
    let swallowed = proxy.swallowed();
    proxy.set_mode(Mode::Blackhole);
    release.await;
    assert!(!write.is_finished(), "the write waits for its answer");
    write.abort();
    assert!(
        write.await.is_err_and(|e| e.is_cancelled()),
        "the write was given up"
    );
    proxy.until_swallowed_more_than(swallowed).await;
    proxy.set_mode(Mode::Pass);
}

async fn admin_pool(database: &str) -> MySqlPool {
    let url = format!("{}/{database}", admin_url().trim_end_matches('/'));
    MySqlPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {database} as the admin: {e}"))
}

/// The storage mode a suite written for both modes runs in:
/// `OBT_TEST_STORAGE=mysql` for MariaDB (api, relay and consumer in MySQL
/// mode), DynamoDB and its stream by default (or `dynamodb`).
pub enum Backend {
    DynamoDb(Box<Stack>),
    MySql(Box<MySqlStack>),
}

impl Backend {
    /// A fresh backend of the mode under test, with `max_receive_count`
    /// receives before the dead-letter queue.
    pub async fn create(max_receive_count: u32) -> Self {
        match crate::storage_under_test() {
            obt_runtime::Storage::Mysql => {
                Self::MySql(Box::new(MySqlStack::create(max_receive_count).await))
            }
            obt_runtime::Storage::Dynamodb => {
                Self::DynamoDb(Box::new(Stack::create(max_receive_count).await))
            }
        }
    }

    pub fn is_mysql(&self) -> bool {
        matches!(self, Self::MySql(_))
    }

    /// The queues (both modes) and the DynamoDB tables (used in the NoSQL
    /// mode only).
    pub fn stack(&self) -> &Stack {
        match self {
            Self::DynamoDb(stack) => stack,
            Self::MySql(mysql) => &mysql.stack,
        }
    }

    /// The environment of one service binary (`api`, `stream-relay`,
    /// `consumer`, or `consumer-show`, which is the consumer's), talking to
    /// its peers directly.
    pub fn env(&self, service: &str) -> Vec<(&'static str, String)> {
        match self {
            Self::DynamoDb(stack) => stack.service_env(),
            Self::MySql(mysql) => match service {
                "api" => mysql.api_env(),
                "stream-relay" => mysql.relay_env(),
                _ => mysql.consumer_env(),
            },
        }
    }
}
