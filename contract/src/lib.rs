//! The event contract of outboxtable, shared by every component that
//! produces or reads a `SpendingRecorded` event.
//!
//! - [`values`]: the validated value types ([`Identity`], [`PersonName`],
//!   [`Amount`]). They parse at the edge, so code holding one never holds
//!   invalid data; the api, the relay and the consumer all use them.
//! - [`envelope`]: the JSON envelope published to SQS ([`Envelope`]), the
//!   same document that the api stores in the outbox attribute.
//! - [`trace`]: the W3C trace context an envelope may carry
//!   ([`TraceContext`], [`Traceparent`]).
//!
//! The wire format is documented in `docs/CONTRACT.md`; a change here is a
//! change there, and a breaking one needs a new `schema_version`.

pub mod envelope;
pub mod outbox;
pub mod trace;
pub mod values;

pub use envelope::{DecodeError, Envelope, EventId, EventType, SCHEMA_VERSION, SpendingRecorded};
pub use trace::{TraceContext, Traceparent, TraceparentError, Tracestate};
pub use values::{Amount, AmountError, Identity, IdentityError, NameError, PersonName};
