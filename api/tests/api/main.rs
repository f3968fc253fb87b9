//! Integration tests of the api against a real DynamoDB Local (started by
//! `scripts/test.sh`, or by hand with `scripts/emulators.sh`). One test
//! binary, one module per concern.

mod concurrency;
mod helpers;
mod http;
mod proxy;
mod retries;
mod shutdown;
mod spending;
mod validation;
