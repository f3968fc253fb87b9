//! The MySQL mode's databases, users and schema: the api's database
//! (`outboxtable`, with the outbox table `obt`) and the consumer's own
//! (`consumed_outboxtable`), as in the original project. Their schemas are
//! the versioned migrations of `migrations/mysql/{api,consumer}`, compiled
//! in and applied in order, each once (sqlx records them in
//! `_sqlx_migrations`).
//!
//! The services connect as least-privilege users, never as the admin; each
//! grant in [`setup`] says what it is for (the api never deletes from `obt`,
//! the relay only reads and deletes `obt` rows and parks identities, the
//! consumer never deletes what it applied). Their passwords come from the
//! caller (the environment, for the binary). Everything here is idempotent:
//! a second run finds the databases, re-applies nothing, and sets the
//! users' passwords and grants again.

use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection, Executor};

/// The migrations of the api's database.
pub static API_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("mysql/api");
/// The migrations of the consumer's database.
pub static CONSUMER_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("mysql/consumer");

/// Names of the databases and users.
#[derive(Debug, Clone)]
pub struct MySqlNames {
    pub api_database: String,
    pub consumer_database: String,
    pub api_user: String,
    pub relay_user: String,
    pub consumer_user: String,
}

impl Default for MySqlNames {
    fn default() -> Self {
        Self {
            api_database: "outboxtable".to_owned(),
            consumer_database: "consumed_outboxtable".to_owned(),
            api_user: "obt_api".to_owned(),
            relay_user: "obt_relay".to_owned(),
            consumer_user: "obt_consumer".to_owned(),
        }
    }
}

/// The services' passwords. `Debug` does not show them.
#[derive(Clone)]
pub struct Passwords {
    pub api: String,
    pub relay: String,
    pub consumer: String,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passwords { .. }")
    }
}

/// What [`setup`] made: each service's connection URL (with its password:
/// hand it to the service's environment, do not log it).
#[derive(Clone)]
pub struct MySqlReport {
    pub api_url: String,
    pub relay_url: String,
    pub consumer_url: String,
    /// Migrations applied by this run, as `database/version description`.
    pub applied: Vec<String>,
}

impl std::fmt::Debug for MySqlReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlReport")
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MySqlSetupError {
    #[error("the admin URL is not a MySQL URL ({0}); expected mysql://USER:PASSWORD@HOST:PORT")]
    AdminUrl(#[source] sqlx::Error),
    #[error(
        "cannot connect to MySQL as the admin: {0}. Check OBT_MYSQL_ADMIN_URL and that the server runs"
    )]
    Connect(#[source] sqlx::Error),
    #[error(
        "cannot connect to MySQL as the admin: the server's TLS certificate was refused ({0}). \
         Check that ssl-ca in OBT_MYSQL_ADMIN_URL names the CA that signed it (RDS and Aurora: \
         global-bundle.pem, docs/DEPLOY.md) and, with ssl-mode=VERIFY_IDENTITY, that the URL's \
         host is a name the certificate is for"
    )]
    Certificate(#[source] sqlx::Error),
    #[error("{what} failed: {source}")]
    Statement {
        what: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying the migrations of database {database} failed: {source}")]
    Migrate {
        database: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("invalid {what} {value:?}: use 1 to 64 letters, digits and underscores")]
    Name { what: &'static str, value: String },
    #[error(
        "the {role} password is invalid: use 12 to 128 letters, digits, '.', '_', '~' or '-' \
         (it goes into a connection URL unescaped)"
    )]
    Password { role: &'static str },
}

fn check_name(what: &'static str, value: &str) -> Result<(), MySqlSetupError> {
    let ok = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(MySqlSetupError::Name {
            what,
            value: value.to_owned(),
        })
    }
}

fn check_password(role: &'static str, value: &str) -> Result<(), MySqlSetupError> {
    let ok = (12..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(MySqlSetupError::Password { role })
    }
}

/// Creates whatever is missing of the databases, the schema and the users,
/// connecting with `admin_url` (an account that may create databases and
/// users and grant privileges). The services' URLs in the report keep the
/// admin URL's options, its TLS settings among them.
pub async fn setup(
    admin_url: &str,
    names: &MySqlNames,
    passwords: &Passwords,
) -> Result<MySqlReport, MySqlSetupError> {
    for (what, value) in [
        ("api database name", &names.api_database),
        ("consumer database name", &names.consumer_database),
        ("api user name", &names.api_user),
        ("relay user name", &names.relay_user),
        ("consumer user name", &names.consumer_user),
    ] {
        check_name(what, value)?;
    }
    check_password("api", &passwords.api)?;
    check_password("relay", &passwords.relay)?;
    check_password("consumer", &passwords.consumer)?;

    let admin = MySqlConnectOptions::from_str(admin_url).map_err(MySqlSetupError::AdminUrl)?;
    let mut conn = admin.connect().await.map_err(connect_error)?;
    let mut applied = Vec::new();
    for (database, migrator) in [
        (&names.api_database, &API_MIGRATIONS),
        (&names.consumer_database, &CONSUMER_MIGRATIONS),
    ] {
        execute(
            &mut conn,
            format!(
                "CREATE DATABASE IF NOT EXISTS `{database}` \
                 CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            ),
        )
        .await?;
        let mut db = admin
            .clone()
            .database(database)
            .connect()
            .await
            .map_err(connect_error)?;
        let before = applied_versions(&mut db).await;
        migrator
            .run(&mut db)
            .await
            .map_err(|source| MySqlSetupError::Migrate {
                database: database.clone(),
                source,
            })?;
        for migration in migrator.iter() {
            if !before.contains(&migration.version) {
                applied.push(format!(
                    "{database}/{} {}",
                    migration.version, migration.description
                ));
            }
        }
        let _ = db.close().await;
    }

    let api_db = &names.api_database;
    let consumer_db = &names.consumer_database;
    let users: [(&str, &str, Vec<String>); 3] = [
        (
            &names.api_user,
            &passwords.api,
            vec![
                format!("GRANT SELECT, INSERT, UPDATE ON `{api_db}`.`obt_identity` TO {{user}}"),
                format!("GRANT SELECT, INSERT ON `{api_db}`.`obt_spending` TO {{user}}"),
                // SELECT: GET counts the identity's unpublished events.
                format!("GRANT SELECT, INSERT ON `{api_db}`.`obt` TO {{user}}"),
                // Idempotency-Key records: UPDATE replaces an expired one;
                // never DELETE.
                format!("GRANT SELECT, INSERT, UPDATE ON `{api_db}`.`obt_idempotency` TO {{user}}"),
            ],
        ),
        (
            &names.relay_user,
            &passwords.relay,
            vec![
                format!("GRANT SELECT, DELETE ON `{api_db}`.`obt` TO {{user}}"),
                // Parks identities; DELETE is the operator's retry
                // (`obt-admin parked retry`, run with the relay's URL).
                format!("GRANT SELECT, INSERT, DELETE ON `{api_db}`.`obt_parked` TO {{user}}"),
            ],
        ),
        (
            &names.consumer_user,
            &passwords.consumer,
            vec![
                format!("GRANT SELECT, INSERT, UPDATE ON `{consumer_db}`.* TO {{user}}"),
                // Parkings end and held events go once applied; what it
                // applied it may still never delete.
                format!("GRANT DELETE ON `{consumer_db}`.`obt_consumer_parked` TO {{user}}"),
                format!("GRANT DELETE ON `{consumer_db}`.`obt_consumer_held` TO {{user}}"),
            ],
        ),
    ];
    for (user, password, grants) in users {
        let account = format!("'{user}'@'%'");
        execute(
            &mut conn,
            format!("CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{password}'"),
        )
        .await?;
        execute(
            &mut conn,
            format!("ALTER USER {account} IDENTIFIED BY '{password}'"),
        )
        .await?;
        for grant in grants {
            execute(&mut conn, grant.replace("{user}", &account)).await?;
        }
    }
    let _ = conn.close().await;

    // The services reach the server as the admin did: the admin URL's
    // options (`ssl-mode`, `ssl-ca`, ...) carry over.
    let options = url_options(admin_url);
    let url = |user: &str, password: &str, database: &str| {
        format!(
            "mysql://{user}:{password}@{}:{}/{database}{options}",
            admin.get_host(),
            admin.get_port()
        )
    };
    Ok(MySqlReport {
        api_url: url(&names.api_user, &passwords.api, api_db),
        relay_url: url(&names.relay_user, &passwords.relay, api_db),
        consumer_url: url(&names.consumer_user, &passwords.consumer, consumer_db),
        applied,
    })
}

/// The query of `url` with its `?` (`?ssl-mode=VERIFY_IDENTITY&ssl-ca=...`),
/// or nothing. A URL's first `?` starts its query: the user and password
/// before it cannot hold one unescaped.
fn url_options(url: &str) -> &str {
    let url = url.split_once('#').map_or(url, |(url, _)| url);
    url.find('?').map_or("", |start| &url[start..])
}

/// A failed connection as the admin: a refused server certificate (rustls
/// says so inside the I/O error of the handshake) gets its own advice.
fn connect_error(error: sqlx::Error) -> MySqlSetupError {
    let certificate = match &error {
        sqlx::Error::Io(io) => matches!(
            io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::InvalidCertificate(_))
        ),
        _ => false,
    };
    if certificate {
        MySqlSetupError::Certificate(error)
    } else {
        MySqlSetupError::Connect(error)
    }
}

/// Runs one statement. Passwords never reach the error: the statement's
/// first words name it.
async fn execute(conn: &mut MySqlConnection, sql: String) -> Result<(), MySqlSetupError> {
    let what: String = sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    conn.execute(sql.as_str())
        .await
        .map(|_| ())
        .map_err(|source| MySqlSetupError::Statement { what, source })
}

/// The migration versions already applied (none when sqlx's table does not
/// exist yet).
async fn applied_versions(conn: &mut MySqlConnection) -> Vec<i64> {
    sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations WHERE success = 1")
        .fetch_all(conn)
        .await
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::url_options;

    #[test]
    fn the_options_of_the_admin_url_are_its_query() {
        assert_eq!(url_options("mysql://a:b@h:3306"), "");
        assert_eq!(
            url_options("mysql://a:b@h:3306/?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ca.pem"),
            "?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ca.pem"
        );
        assert_eq!(
            url_options("mysql://a:b@h?ssl-mode=REQUIRED#x"),
            "?ssl-mode=REQUIRED"
        );
    }
}
