//! Integration tests of the api against a real database: DynamoDB Local,
//! or with `OBT_TEST_STORAGE=mysql` (and `--features mysql`) a real MariaDB
//! (both started by `scripts/test.sh`). One test binary, one module per
//! concern; the same tests run in both modes, except those of what only
//! one backend has (see `helpers::runs_in`).

mod auth;
mod concurrency;
mod helpers;
mod hostile;
mod http;
mod idempotency;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "mysql")]
mod mysql_backend;
mod openapi;
mod proxy;
mod requests;
mod retries;
mod shutdown;
mod spending;
mod trace;
mod validation;
