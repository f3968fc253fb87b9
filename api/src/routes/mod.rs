//! The HTTP handlers. They turn requests into calls of the [`crate::store`]
//! and results into answers; the rules live in [`crate::input`] and the
//! DynamoDB expressions in the store.

pub mod health;
pub mod openapi;
pub mod spending;
