//! The settings every MySQL pool of the services shares (cargo feature
//! `mysql`): above all, that the server ends a session which has gone
//! silent, so that a transaction cut off from its client does not keep its
//! row locks.
//!
//! Why: a transaction whose client stops talking to it mid-way (a network
//! partition, or a connection the client gave up on while the server's
//! answer was lost) stays open on the server, its row locks held, until the
//! server ends the session. The client cannot end it: its `ROLLBACK` goes
//! the way of the lost answer, and sqlx then waits, with no time limit, for
//! the answer to the ping with which it returns the connection to the pool.
//! MySQL's default `wait_timeout` is 8 hours, so one cut-off write held its
//! identity's row (every later write of that identity waits on it, and
//! fails) for that long. [`IDLE_SESSION_TIMEOUT`] bounds it.

use std::time::Duration;

use sqlx::Executor;
use sqlx::mysql::MySqlPoolOptions;

/// How long the server keeps a session that sends it nothing, in or out of
/// a transaction (its `wait_timeout`). Our transactions send each statement
/// as soon as the previous one is answered, so one that idles this long has
/// lost its client; the session then ends and its transaction is rolled
/// back. A statement that waits for a lock is not idle: this does not
/// shorten lock waits.
pub const IDLE_SESSION_TIMEOUT: Duration = Duration::from_secs(30);

/// A pool of at most `max_connections`, waiting `acquire_timeout` for a
/// connection, whose sessions the server ends after `idle_session` of
/// silence (in production [`IDLE_SESSION_TIMEOUT`]; tests shorten it), and
/// which runs the `session` statements (`SET SESSION ...`) on every new
/// connection after that.
///
/// The pool closes a connection idle for half of `idle_session` itself, so
/// that it seldom hands out one the server has just ended (it pings each
/// connection before handing it out, and replaces one that fails).
pub fn pool_options(
    max_connections: u32,
    acquire_timeout: Duration,
    idle_session: Duration,
    session: &[&str],
) -> MySqlPoolOptions {
    let mut statements = vec![format!(
        "SET SESSION wait_timeout = {}",
        idle_session.as_secs().max(1)
    )];
    statements.extend(session.iter().map(|statement| (*statement).to_owned()));
    MySqlPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(acquire_timeout)
        .idle_timeout(idle_session / 2)
        .after_connect(move |connection, _| {
            let statements = statements.clone();
            Box::pin(async move {
                for statement in &statements {
                    connection.execute(statement.as_str()).await?;
                }
                Ok(())
            })
        })
}
