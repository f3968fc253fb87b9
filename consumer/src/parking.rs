//! Parked identities at the consumer (invariant 6): an identity whose
//! message can never be applied as it is (poison, a conflict) or whose
//! events arrive past a gap is parked in the consumer's own records; its
//! later events are held there, in seq order, never applied past the
//! cause. Every other identity flows on. See docs/ARCHITECTURE.md, "The
//! consumer".
//!
//! Operators (`obt-admin`) call [`list_parked`] and [`retry`]; the consumer
//! itself calls [`drain`] when a gap heals by itself.

use std::fmt;
use std::time::{Duration, Instant};

use obt_contract::Envelope;
use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::dead_letter::{DeadLetterQueue, Letter};
use crate::queue::QueueError;
use crate::store::{Applied, ApplyError, HoldError, Ledger, LedgerError, LedgerReader};

/// Why an identity is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// A message of its group cannot be read (undecodable, unsupported
    /// schema, another identity's event): it was dead-lettered.
    Poison,
    /// An event contradicts what is applied or held (same seq, another
    /// event id; an event id reused; a damaged head): it was dead-lettered.
    Conflict,
    /// An event arrived before its predecessor; it heals by itself when the
    /// missing event arrives.
    Gap,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Poison => "poison",
            Self::Conflict => "conflict",
            Self::Gap => "gap",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "poison" => Some(Self::Poison),
            "conflict" => Some(Self::Conflict),
            "gap" => Some(Self::Gap),
            _ => None,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What parks an identity; the store adds the time and the version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkRequest {
    pub cause: Cause,
    /// In words, for the operator.
    pub reason: String,
    /// The seq concerned, when known (a gap: the one expected).
    pub seq: Option<u64>,
    /// The message that parked it (poison, conflict): its id on the main
    /// queue, which its dead-lettered copy carries as
    /// `obt-source-message-id`.
    pub message_id: Option<String>,
}

/// An identity's parking record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parking {
    pub cause: Cause,
    pub reason: String,
    pub seq: Option<u64>,
    pub message_id: Option<String>,
    pub parked_at: OffsetDateTime,
    /// Changed by every write of the parking and every event held: an
    /// unpark conditional on it cannot lose a hold made meanwhile.
    pub version: u64,
}

/// Where an identity stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityState {
    /// The seq of the last applied event, 0 when none is.
    pub last_seq: u64,
    pub parking: Option<Parking>,
}

/// What became of an event given to [`Ledger::hold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    New,
    /// The same event is held already.
    Duplicate,
}

/// A parked identity, as [`list_parked`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedIdentity {
    pub identity: String,
    pub parking: Parking,
    /// How many events are held for it.
    pub held: usize,
}

/// Every parked identity, sorted by identity.
pub async fn list_parked(reader: &dyn LedgerReader) -> Result<Vec<ParkedIdentity>, LedgerError> {
    reader.list_parked().await
}

/// A new parking of `identity`, logged at ERROR (operators alert on it).
pub async fn park(
    ledger: &dyn Ledger,
    identity: &str,
    request: &ParkRequest,
) -> Result<Parking, LedgerError> {
    let parking = ledger.park(identity, request, false).await?;
    if parking.cause == request.cause && parking.reason == request.reason {
        // `parked = true`: the field the alarms' metric filters count, as
        // on the relay's parking lines.
        error!(
            parked = true,
            identity,
            cause = %request.cause,
            seq = ?request.seq,
            message_id = ?request.message_id,
            reason = %request.reason,
            "parked identity {identity} ({}): {}; its later events are held until it is resolved",
            request.cause,
            request.reason
        );
    } else {
        info!(identity, cause = %parking.cause, "already parked; the parking in force stays");
    }
    Ok(parking)
}

/// How a [`drain`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    /// Held events applied now.
    pub applied: usize,
    pub last_seq: u64,
    /// The parking still in force, `None` once unparked (or never parked).
    pub parking: Option<Parking>,
    /// The first seq missing before the next held event, if one is held.
    pub gap: Option<Gap>,
    /// A held event that contradicts what is applied.
    pub conflict: Option<String>,
}

/// Held events wait for `expected`; the first held is `next_held`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub expected: u64,
    pub next_held: u64,
}

/// How many rounds in a row [`drain`] may lose the race for the unpark
/// without applying anything before it gives up (a round that lost it to
/// an event held meanwhile applies that event in the next one).
const IDLE_DRAIN_ROUNDS: usize = 20;

/// How long [`drain`] goes on while every round applies what was held
/// meanwhile: events of the identity arriving about as fast as they are
/// applied (the consumer holds them while the operator's retry drains).
const DRAIN_BUDGET: Duration = Duration::from_secs(60);

/// Applies `identity`'s held events in seq order from its head while they
/// are contiguous, and unparks it when nothing held remains and `unpark`
/// allows it for the parking's cause. A gap still open updates a gap
/// parking's reason.
pub async fn drain(
    ledger: &dyn Ledger,
    identity: &str,
    unpark: impl Fn(&Parking) -> bool,
) -> Result<Drained, ApplyError> {
    let mut applied = 0;
    let started = Instant::now();
    let mut idle_rounds = 0;
    while idle_rounds < IDLE_DRAIN_ROUNDS && started.elapsed() < DRAIN_BUDGET {
        let applied_before = applied;
        let state = ledger.state(identity).await?;
        let Some(parking) = state.parking else {
            return Ok(Drained {
                applied,
                last_seq: state.last_seq,
                parking: None,
                gap: None,
                conflict: None,
            });
        };
        let mut last_seq = state.last_seq;
        let mut gap = None;
        let mut conflict = None;
        for event in ledger.held(identity).await? {
            if event.seq > last_seq + 1 {
                gap = Some(Gap {
                    expected: last_seq + 1,
                    next_held: event.seq,
                });
                break;
            }
            match ledger.apply_parked(&event).await {
                Ok(Applied::New) => {
                    applied += 1;
                    last_seq = event.seq;
                    info!(identity, seq = event.seq, event_id = %event.event_id, "applied a held event");
                }
                Ok(Applied::Duplicate) => {}
                Err(e @ ApplyError::Gap { .. }) => {
                    // The head moved back? Only a damaged table does that.
                    conflict = Some(e.to_string());
                    break;
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    conflict = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(conflict) = conflict {
            return Ok(Drained {
                applied,
                last_seq,
                parking: Some(parking),
                gap,
                conflict: Some(conflict),
            });
        }
        if let Some(gap) = gap {
            let parking = if parking.cause == Cause::Gap && parking.seq != Some(gap.expected) {
                ledger
                    .park(identity, &gap_request(gap.expected, gap.next_held), true)
                    .await?
            } else {
                parking
            };
            return Ok(Drained {
                applied,
                last_seq,
                parking: Some(parking),
                gap: Some(gap),
                conflict: None,
            });
        }
        if !unpark(&parking) {
            return Ok(Drained {
                applied,
                last_seq,
                parking: Some(parking),
                gap: None,
                conflict: None,
            });
        }
        if ledger.unpark(identity, parking.version).await? {
            info!(
                identity,
                applied, last_seq, "unparked: nothing is held any more"
            );
            return Ok(Drained {
                applied,
                last_seq,
                parking: None,
                gap: None,
                conflict: None,
            });
        }
        // An event was held meanwhile: apply it too, in the next round.
        if applied == applied_before {
            idle_rounds += 1;
        } else {
            idle_rounds = 0;
        }
    }
    let state = ledger.state(identity).await?;
    warn!(
        identity,
        "events kept being held while draining; it stays parked for now"
    );
    Ok(Drained {
        applied,
        last_seq: state.last_seq,
        parking: state.parking,
        gap: None,
        conflict: None,
    })
}

/// The parking of a gap: `expected` is missing, `received` came.
pub fn gap_request(expected: u64, received: u64) -> ParkRequest {
    ParkRequest {
        cause: Cause::Gap,
        reason: format!("expected seq {expected}, received seq {received}"),
        seq: Some(expected),
        message_id: None,
    }
}

/// What the operator may add to a [`retry`].
#[derive(Debug, Clone, Default)]
pub struct RetryOptions {
    /// Dead-lettered messages of the identity judged worthless after a
    /// look at them (garbage that is no event): deleted from the
    /// dead-letter queue instead of replayed. Each is a message id, the
    /// dead-letter queue's own or the `obt-source-message-id` it carries.
    pub discard: Vec<String>,
}

/// How a [`retry`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryReport {
    pub identity: String,
    /// Dead-lettered messages of the identity taken out of the dead-letter
    /// queue: applied, held in order, recognised as applied, or discarded.
    pub replayed: usize,
    pub discarded: usize,
    /// Events applied, held and replayed ones together.
    pub applied: usize,
    pub last_seq: u64,
    pub outcome: RetryOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Nothing was parked and nothing of it dead-lettered.
    NotParked,
    /// It flows again: every held event is applied and it is unparked.
    Unparked,
    /// Still parked, `because` says why: a dead letter that still cannot
    /// be decoded or applied, or a gap (`gap_at`: the seq still missing).
    StillParked {
        cause: Cause,
        because: String,
        gap_at: Option<u64>,
    },
    /// Not parked, but a dead letter of it stays in the dead-letter queue
    /// (one that SQS's own redrive put there), for `because`.
    DeadLettersLeft { because: String },
}

impl fmt::Display for RetryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let identity = &self.identity;
        write!(
            f,
            "{identity}: {} dead-lettered message(s) replayed ({} discarded), {} event(s) applied, last applied seq {}; ",
            self.replayed, self.discarded, self.applied, self.last_seq
        )?;
        match &self.outcome {
            RetryOutcome::NotParked => write!(f, "it was not parked"),
            RetryOutcome::DeadLettersLeft { because } => {
                write!(
                    f,
                    "it is not parked, but a dead letter of it stays because {because}"
                )
            }
            RetryOutcome::Unparked => write!(f, "it flows again"),
            RetryOutcome::StillParked {
                cause,
                because,
                gap_at,
            } => {
                write!(f, "still parked ({cause}) because {because}")?;
                if let Some(seq) = gap_at {
                    write!(f, "; still a gap at seq {seq}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a retry could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Hold(#[from] HoldError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Resolves `identity` after its cause was repaired: (a) replays its
/// dead-lettered messages, in their order, from `dead_letters` (each
/// deleted there only once it is applied or held), (b) applies its held
/// and replayed events in seq order from its head while contiguous, (c)
/// unparks it when nothing held remains, conditionally, so that an event
/// the consumer holds at the same moment is applied, not stranded. A
/// dead letter that still cannot be decoded or applied stays in the
/// dead-letter queue, and so does the parking.
pub async fn retry(
    ledger: &dyn Ledger,
    dead_letters: &DeadLetterQueue,
    identity: &str,
    options: &RetryOptions,
) -> Result<RetryReport, RetryError> {
    let before = ledger.state(identity).await?;
    let mut report = RetryReport {
        identity: identity.to_owned(),
        replayed: 0,
        discarded: 0,
        applied: 0,
        last_seq: before.last_seq,
        outcome: RetryOutcome::NotParked,
    };
    let mut scan = dead_letters.scan(identity);
    let mut blocked: Option<(Cause, String)> = None;
    let result = replay(ledger, &mut scan, options, &mut report, &mut blocked).await;
    // Whatever happened, the other identities' dead letters (and ours not
    // replayed) become visible again, untouched.
    scan.release().await;
    result?;

    let unparkable = blocked.is_none();
    let drained = drain(ledger, identity, |_| unparkable).await?;
    report.applied += drained.applied;
    report.last_seq = drained.last_seq;
    report.outcome = match (drained.parking, blocked) {
        (None, Some((_, because))) => RetryOutcome::DeadLettersLeft { because },
        (None, None) if before.parking.is_none() && report.replayed == 0 => RetryOutcome::NotParked,
        (None, None) => RetryOutcome::Unparked,
        (Some(parking), Some((cause, because))) => RetryOutcome::StillParked {
            cause: cause.max_severity(parking.cause),
            because,
            gap_at: drained.gap.map(|g| g.expected),
        },
        (Some(parking), None) => match (drained.conflict, drained.gap) {
            (Some(conflict), gap) => RetryOutcome::StillParked {
                cause: Cause::Conflict,
                because: format!("a held event cannot be applied: {conflict}"),
                gap_at: gap.map(|g| g.expected),
            },
            (None, Some(gap)) => {
                // Only a gap is left: it heals by itself when the missing
                // event arrives.
                let parking = if parking.cause == Cause::Gap {
                    parking
                } else {
                    ledger
                        .park(identity, &gap_request(gap.expected, gap.next_held), true)
                        .await?
                };
                RetryOutcome::StillParked {
                    cause: parking.cause,
                    because: format!(
                        "seq {} is missing before the held seq {}; it is applied with the rest when it arrives",
                        gap.expected, gap.next_held
                    ),
                    gap_at: Some(gap.expected),
                }
            }
            (None, None) => RetryOutcome::StillParked {
                cause: parking.cause,
                because: "events kept being held while the retry ran; retry again".to_owned(),
                gap_at: None,
            },
        },
    };
    match &report.outcome {
        RetryOutcome::StillParked { .. } | RetryOutcome::DeadLettersLeft { .. } => {
            warn!(identity, %report, "retry")
        }
        _ => info!(identity, %report, "retry"),
    }
    Ok(report)
}

impl Cause {
    /// The cause that needs more of the operator: poison and conflict
    /// before gap.
    fn max_severity(self, other: Cause) -> Cause {
        if self == Cause::Gap { other } else { self }
    }
}

/// Step (a) of [`retry`]: the identity's dead letters, in order.
async fn replay(
    ledger: &dyn Ledger,
    scan: &mut crate::dead_letter::Scan<'_>,
    options: &RetryOptions,
    report: &mut RetryReport,
    blocked: &mut Option<(Cause, String)>,
) -> Result<(), RetryError> {
    while let Some(letters) = scan.next_of_identity().await? {
        for letter in letters {
            if blocked.is_some() {
                // Behind a dead letter that stays: it stays too, in order.
                scan.keep(letter);
                continue;
            }
            if options.discard.iter().any(|id| letter.is(id)) {
                scan.delete(&letter).await?;
                report.replayed += 1;
                report.discarded += 1;
                info!(identity = %report.identity, message_id = %letter.message_id, "discarded a dead letter, as asked");
                continue;
            }
            match replay_one(ledger, scan.queue(), &letter).await? {
                Replayed::Done { applied } => {
                    scan.delete(&letter).await?;
                    report.replayed += 1;
                    report.applied += usize::from(applied);
                }
                Replayed::Stays { cause, because } => {
                    *blocked = Some((cause, because));
                    scan.keep(letter);
                }
            }
        }
        if blocked.is_some() {
            break;
        }
    }
    Ok(())
}

enum Replayed {
    /// Applied (`applied`), recognised as applied, or held in order.
    Done { applied: bool },
    /// It stays in the dead-letter queue.
    Stays { cause: Cause, because: String },
}

async fn replay_one(
    ledger: &dyn Ledger,
    dead_letters: &DeadLetterQueue,
    letter: &Letter,
) -> Result<Replayed, RetryError> {
    let identity = letter.group_id.as_deref().unwrap_or_default();
    let event: Envelope = match dead_letters.decode(letter) {
        Ok(event) => event,
        Err(reason) => {
            return Ok(Replayed::Stays {
                cause: Cause::Poison,
                because: format!(
                    "the dead-lettered message {} still cannot be read ({reason}); deploy a build that \
                     reads it, or discard it if it is no event",
                    letter.message_id
                ),
            });
        }
    };
    match ledger.apply_parked(&event).await {
        Ok(applied) => Ok(Replayed::Done {
            applied: applied == Applied::New,
        }),
        Err(ApplyError::Gap {
            expected, received, ..
        }) => {
            // Not its turn yet: held, in order, like any later event.
            if ledger.state(identity).await?.parking.is_none() {
                park(ledger, identity, &gap_request(expected, received)).await?;
            }
            match ledger.hold(&event).await {
                Ok(_) => Ok(Replayed::Done { applied: false }),
                Err(HoldError::Conflict { .. }) | Err(HoldError::NotParked { .. }) => {
                    Ok(Replayed::Stays {
                        cause: Cause::Conflict,
                        because: format!(
                            "the dead-lettered event at seq {} could not be held beside the others",
                            event.seq
                        ),
                    })
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(e) if e.is_transient() => Err(e.into()),
        Err(e) => Ok(Replayed::Stays {
            cause: Cause::Conflict,
            because: format!(
                "the dead-lettered message {} cannot be applied: {e}; discard it once you are sure it is \
                 not the event to keep",
                letter.message_id
            ),
        }),
    }
}
