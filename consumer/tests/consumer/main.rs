//! Integration tests of the consumer against the real emulators (DynamoDB
//! Local and fauxqs); see `scripts/test.sh`. One test binary, so that the
//! workspace links it once.

mod applies;
mod failures;
mod helpers;
mod shutdown;
mod store;
