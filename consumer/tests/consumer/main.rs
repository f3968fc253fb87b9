//! Integration tests of the consumer against the real emulators (DynamoDB
//! Local and fauxqs) and, for the MySQL backend, MariaDB; see
//! `scripts/test.sh`. One test binary, so that the workspace links it once.
//!
//! The behaviour tests (`applies`, `failures`, `model`, `parking`, `retries`,
//! `shutdown`, `store`) run against the backend that `OBT_TEST_STORAGE`
//! names (`dynamodb` by default, `mysql`); `mysql` holds what only the
//! MySQL backend has. `model` runs the consumer on the testkit's SQS
//! model, which hands out messages as SQS does, where fauxqs is gentler.

mod applies;
mod failures;
mod helpers;
mod model;
#[cfg(feature = "mysql")]
mod mysql;
mod parking;
mod retries;
mod shutdown;
mod store;
