//! The api's settings, from flags or `OBT_*` environment variables. The doc
//! comments below are the `--help` text.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use obt_runtime::args::{LogArgs, StorageArgs, TableArgs};
use obt_runtime::metrics::MetricsArgs;

use crate::auth::AuthMode;
use crate::store::{RetryPolicy, StoreOptions};

/// The rate limit a second per client with authentication, unless
/// `OBT_RATE_LIMIT_PER_SEC` says otherwise.
pub const DEFAULT_RATE_LIMIT_PER_SEC: u32 = 50;

/// outboxtable api: records a spending and its SpendingRecorded event in one
/// atomic write (DynamoDB, or a MySQL transaction).
#[derive(Debug, Clone, Parser)]
#[command(name = "api", version)]
pub struct Settings {
    /// The address to listen on (port 0 picks a free port).
    #[arg(long, env = "OBT_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// OBT_STORAGE and, with `mysql`, OBT_DATABASE_URL: the api's
    /// database as the api's own user.
    #[command(flatten)]
    pub storage: StorageArgs,

    /// With OBT_STORAGE=mysql: the most connections the api keeps open to
    /// the database.
    #[arg(long, env = "OBT_DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub database_max_connections: u32,

    /// OBT_TABLE: the DynamoDB table holding one aggregate item (and its
    /// outbox) per identity.
    #[command(flatten)]
    pub table: TableArgs,

    /// How many times a write that lost an optimistic-concurrency race (in
    /// MySQL: a transaction rolled back by a deadlock or lock wait timeout)
    /// is retried before the request is answered 503.
    #[arg(long, env = "OBT_MAX_CONFLICT_RETRIES", default_value_t = 10)]
    pub max_conflict_retries: u32,

    /// The DynamoDB table of the Idempotency-Key records (created by
    /// obt-migrate, with Time to Live on `expires_at`).
    #[arg(long, env = "OBT_IDEMPOTENCY_TABLE", default_value = crate::store::dynamodb::DEFAULT_IDEMPOTENCY_TABLE)]
    pub idempotency_table: String,

    /// Seconds an Idempotency-Key is kept after its first successful use:
    /// a retry within them gets the first answer again; after them the key
    /// may be used anew.
    #[arg(long, env = "OBT_IDEMPOTENCY_TTL_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub idempotency_ttl_secs: u64,

    /// The most events an identity may have waiting for the relay; beyond
    /// it a POST is answered 503 instead of growing the item towards
    /// DynamoDB's 400 KB limit (DynamoDB only).
    #[arg(long, env = "OBT_MAX_PENDING_EVENTS", default_value_t = StoreOptions::DEFAULT_MAX_PENDING_EVENTS)]
    pub max_pending_events: u32,

    /// Seconds that in-flight requests get to finish after SIGTERM or
    /// SIGINT before the process exits anyway.
    #[arg(long, env = "OBT_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,

    /// Seconds a request may take before it is answered 504.
    #[arg(long, env = "OBT_REQUEST_TIMEOUT_SECS", default_value_t = 10)]
    pub request_timeout_secs: u64,

    /// OBT_LOG_FORMAT.
    #[command(flatten)]
    pub log: LogArgs,

    /// OBT_METRICS_LISTEN: Prometheus metrics on a listener of their own.
    #[command(flatten)]
    pub metrics: MetricsArgs,

    /// Whether the spending routes require a JWT bearer token: `auto`
    /// (required unless OBT_LISTEN is a loopback address), `required`, or
    /// `off` (refused unless OBT_LISTEN is a loopback address).
    #[arg(long, env = "OBT_AUTH", value_enum, default_value = "auto")]
    pub auth: AuthMode,

    /// With authentication: the only accepted `iss` of a token, e.g.
    /// https://cognito-idp.REGION.amazonaws.com/POOL_ID. Required then.
    #[arg(long, env = "OBT_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// With authentication, optional: the audience a token must name, in
    /// `aud` or, for tokens without `aud` (Cognito access tokens), in
    /// `client_id`. Unset or empty: `aud` and `client_id` are not checked.
    #[arg(long, env = "OBT_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// With authentication: the URL of the issuer's JSON Web Key Set
    /// (https://, or http:// to a loopback address), e.g. the issuer
    /// followed by /.well-known/jwks.json. It or OBT_JWT_JWKS_FILE is
    /// required then.
    #[arg(long, env = "OBT_JWT_JWKS_URL", conflicts_with = "jwt_jwks_file")]
    pub jwt_jwks_url: Option<String>,

    /// With authentication: a local JSON Web Key Set file, read once at
    /// start-up (static keys), instead of OBT_JWT_JWKS_URL.
    #[arg(long, env = "OBT_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// Seconds between two fetches of OBT_JWT_JWKS_URL (a token signed by
    /// a key not yet known fetches it sooner, at most every 30 s).
    #[arg(long, env = "OBT_JWT_JWKS_REFRESH_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub jwt_jwks_refresh_secs: u64,

    /// Requests a second each client may make to the spending routes, on
    /// average; beyond it (and the burst) they are answered 429. A client
    /// is the token's principal with authentication, else the peer's IP
    /// address. Default: 50 with authentication, else no limit; 0: no
    /// limit.
    #[arg(long, env = "OBT_RATE_LIMIT_PER_SEC")]
    pub rate_limit_per_sec: Option<u32>,

    /// The requests a client may make at once above the average rate.
    #[arg(long, env = "OBT_RATE_LIMIT_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: u32,

    /// Without authentication: key the rate limit by the right-most
    /// address of X-Forwarded-For (the one the load balancer in front
    /// added) instead of the peer's address. Only behind exactly one proxy
    /// that appends to the header.
    #[arg(long, env = "OBT_TRUST_FORWARDED_FOR", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_forwarded_for: bool,
}

impl Settings {
    /// The defaults, as if no flag and no variable were given; tests
    /// change what they need.
    pub fn defaults() -> Self {
        // Every argument has a default, so an empty command line parses.
        Self::try_parse_from(["api"]).unwrap_or_else(|e| unreachable!("defaults parse: {e}"))
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            retry: RetryPolicy {
                max_retries: self.max_conflict_retries,
                ..RetryPolicy::default()
            },
            max_pending_events: self.max_pending_events,
            idempotency_ttl: Duration::from_secs(self.idempotency_ttl_secs),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// The rate limit's average per second and burst, if any: by default
    /// 50 a second with authentication and none without; 0 is none.
    pub fn rate_limit(&self, authenticated: bool) -> Option<(NonZeroU32, NonZeroU32)> {
        let per_sec = match self.rate_limit_per_sec {
            Some(per_sec) => per_sec,
            None if authenticated => DEFAULT_RATE_LIMIT_PER_SEC,
            None => 0,
        };
        Some((
            NonZeroU32::new(per_sec)?,
            NonZeroU32::new(self.rate_limit_burst)?,
        ))
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use obt_runtime::{DatabaseUrl, LogFormat, Storage};

    use super::*;

    #[test]
    fn the_settings_have_the_documented_defaults() {
        // Read from the definition, so that OBT_* variables in the test's
        // environment cannot change the outcome.
        let command = <Settings as clap::CommandFactory>::command();
        let default_of = |id: &str| {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .expect("an argument");
            let values: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            (
                values.join(","),
                arg.get_env().map(|e| e.to_string_lossy().into_owned()),
            )
        };
        let expected = [
            ("listen", "127.0.0.1:8081", "OBT_LISTEN"),
            ("storage", "dynamodb", "OBT_STORAGE"),
            ("database_url", "", "OBT_DATABASE_URL"),
            (
                "database_max_connections",
                "10",
                "OBT_DATABASE_MAX_CONNECTIONS",
            ),
            ("table", "obt-spending", "OBT_TABLE"),
            (
                "idempotency_table",
                "obt-idempotency",
                "OBT_IDEMPOTENCY_TABLE",
            ),
            ("idempotency_ttl_secs", "86400", "OBT_IDEMPOTENCY_TTL_SECS"),
            ("max_conflict_retries", "10", "OBT_MAX_CONFLICT_RETRIES"),
            ("max_pending_events", "200", "OBT_MAX_PENDING_EVENTS"),
            ("shutdown_timeout_secs", "10", "OBT_SHUTDOWN_TIMEOUT_SECS"),
            ("request_timeout_secs", "10", "OBT_REQUEST_TIMEOUT_SECS"),
            ("log_format", "text", "OBT_LOG_FORMAT"),
            ("auth", "auto", "OBT_AUTH"),
            ("jwt_issuer", "", "OBT_JWT_ISSUER"),
            ("jwt_audience", "", "OBT_JWT_AUDIENCE"),
            ("jwt_jwks_url", "", "OBT_JWT_JWKS_URL"),
            ("jwt_jwks_file", "", "OBT_JWT_JWKS_FILE"),
            ("jwt_jwks_refresh_secs", "3600", "OBT_JWT_JWKS_REFRESH_SECS"),
            ("rate_limit_per_sec", "", "OBT_RATE_LIMIT_PER_SEC"),
            ("rate_limit_burst", "100", "OBT_RATE_LIMIT_BURST"),
            ("trust_forwarded_for", "false", "OBT_TRUST_FORWARDED_FOR"),
        ];
        for (id, default, env) in expected {
            assert_eq!(
                default_of(id),
                (default.to_owned(), Some(env.to_owned())),
                "{id}"
            );
        }
    }

    #[test]
    fn flags_override_the_defaults() {
        let settings = Settings::try_parse_from([
            "api",
            "--listen",
            "0.0.0.0:9000",
            "--table",
            "other",
            "--max-conflict-retries",
            "3",
            "--log-format",
            "json",
        ])
        .expect("parses");
        assert_eq!(settings.listen.port(), 9000);
        assert_eq!(settings.table.table, "other");
        assert_eq!(settings.store_options().retry.max_retries, 3);
        assert_eq!(settings.log.log_format, LogFormat::Json);
    }

    #[test]
    fn the_database_url_is_never_shown() {
        let secret = "mysql://obt_api:s3cret-password@db:3306/outboxtable";
        let settings =
            Settings::try_parse_from(["api", "--storage", "mysql", "--database-url", secret])
                .expect("parses");
        assert_eq!(settings.storage.storage, Storage::Mysql);
        assert_eq!(
            settings
                .storage
                .database_url
                .as_ref()
                .map(DatabaseUrl::expose),
            Some(secret)
        );
        assert!(!format!("{settings:?}").contains("s3cret"));
    }
}
