//! A fault-injecting TCP proxy: it sits between a service and one of its
//! peers (DynamoDB Local, fauxqs, MariaDB), forwards bytes both ways, and
//! can be switched by the test, at any moment, into a failure mode:
//!
//! - [`Mode::Pass`]: forwards everything.
//! - [`Mode::Refuse`]: new connections are accepted and reset at once
//!   (RST), and the connections already open are cut: the peer is down.
//! - [`Mode::Blackhole`]: connections are accepted and what they send is
//!   read and dropped, nothing ever comes back (open connections too): the
//!   peer hangs, so only the client's own timeouts get it out.
//! - [`Mode::Delay`]: every chunk, either way, waits that long first.
//! - [`Mode::Flaky`]: one new connection in `fail_one_in` on average is
//!   reset, picked by a RNG seeded at [`FaultProxy::start_seeded`], so a
//!   run can be replayed.
//! - [`Mode::Throttle`]: an HTTP-aware mode for DynamoDB: every request is
//!   answered `400` with a `ProvisionedThroughputExceededException` body,
//!   which the AWS SDK retries as real throttling. Its connections close
//!   when the mode changes, so that the client reconnects to the upstream.
//!
//! [`FaultProxy::cut`] resets every open connection without changing the
//! mode. Everything the proxy runs stops when it is dropped: the listener
//! closes and every connection through it is reset.
//!
//! It works on bytes, not on a protocol (except for `Throttle`): the same
//! proxy serves HTTP to the emulators and MySQL's protocol to MariaDB.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does with connections, switched at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Refuse,
    Blackhole,
    Delay(Duration),
    Flaky { fail_one_in: u32 },
    Throttle,
}

/// The body DynamoDB sends when a table's throughput is exceeded.
const THROTTLE_BODY: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded (injected by the test proxy)"}"#;

/// The state every task of one proxy shares.
struct Shared {
    upstream: SocketAddr,
    /// The mode, and a generation bumped by each [`FaultProxy::cut`] (and
    /// by a switch to `Refuse` or `Throttle`): a connection ends when it
    /// changes.
    state: watch::Sender<State>,
    rng: Mutex<StdRng>,
    accepted: AtomicU64,
    reset: AtomicU64,
    throttled: AtomicU64,
    /// Bytes from clients read and dropped: see [`FaultProxy::swallowed`].
    swallowed: AtomicU64,
    open: AtomicUsize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    mode: Mode,
    cuts: u64,
}

/// A running proxy. Dropping it stops everything it runs.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on a loopback port for the fault proxy to {upstream}: {source}")]
pub struct StartError {
    upstream: SocketAddr,
    source: std::io::Error,
}

impl FaultProxy {
    /// A proxy to `upstream` in [`Mode::Pass`], with the seed 0.
    pub async fn start(upstream: SocketAddr) -> Result<Self, StartError> {
        Self::start_seeded(upstream, 0).await
    }

    /// A proxy to `upstream` in [`Mode::Pass`], whose `Flaky` choices come
    /// from `seed`.
    pub async fn start_seeded(upstream: SocketAddr, seed: u64) -> Result<Self, StartError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| StartError { upstream, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError { upstream, source })?;
        let (state, _) = watch::channel(State {
            mode: Mode::Pass,
            cuts: 0,
        });
        let shared = Arc::new(Shared {
            upstream,
            state,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            accepted: AtomicU64::new(0),
            reset: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            swallowed: AtomicU64::new(0),
            open: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// The address services connect to instead of the upstream's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for an `AWS_ENDPOINT_URL_*` variable.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    pub fn mode(&self) -> Mode {
        self.shared.state.borrow().mode
    }

    /// Switches the mode. Switching to `Refuse` or `Throttle` also cuts
    /// the open connections (so that a client's kept-alive connections
    /// reconnect and meet the new mode at once, instead of hanging); the
    /// other modes apply to them from their next chunk.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.state.send_modify(|state| {
            state.mode = mode;
            if matches!(mode, Mode::Refuse | Mode::Throttle) {
                state.cuts += 1;
            }
        });
    }

    /// Resets every connection open now (the mode stays as it is).
    pub fn cut(&self) {
        self.shared.state.send_modify(|state| state.cuts += 1);
    }

    /// Connections accepted so far (forwarded or not).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections reset on arrival so far (`Refuse`, `Flaky`).
    pub fn reset_on_arrival(&self) -> u64 {
        self.shared.reset.load(Ordering::SeqCst)
    }

    /// HTTP requests answered with the throttling error so far.
    pub fn throttled(&self) -> u64 {
        self.shared.throttled.load(Ordering::SeqCst)
    }

    /// Bytes that clients sent into a hang so far: read and dropped,
    /// neither forwarded nor answered (`Blackhole`, and a connection that
    /// was open when `Throttle` began). A test waits on it to know that
    /// what a client sent during the hang (a `ROLLBACK`, say) is lost
    /// before it heals the proxy.
    pub fn swallowed(&self) -> u64 {
        self.shared.swallowed.load(Ordering::SeqCst)
    }

    /// Waits (up to 10 s) until clients have sent more than `bytes` into
    /// a hang ([`Self::swallowed`]).
    pub async fn until_swallowed_more_than(&self, bytes: u64) {
        crate::eventually(
            "bytes sent into the hang",
            Duration::from_secs(10),
            || async move {
                match self.swallowed() {
                    n if n > bytes => Ok(()),
                    n => Err(format!("{n} bytes so far")),
                }
            },
        )
        .await;
    }

    /// Connections open through the proxy now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet: aborting it drops
        // the set, which aborts every connection task, which drops (and so
        // closes) both sockets of each.
        self.accept.abort();
    }
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("mode", &self.mode())
            .finish()
    }
}

/// Counts a connection as open for as long as it lives (aborted or not).
struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.open.fetch_add(1, Ordering::SeqCst);
        Self(shared.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let Ok((client, _)) = accepted else {
            // Out of file descriptors and the like: try again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let state = *shared.state.borrow();
        let reset = match state.mode {
            Mode::Refuse => true,
            Mode::Flaky { fail_one_in } => {
                let mut rng = shared.rng.lock().unwrap_or_else(|p| p.into_inner());
                fail_one_in <= 1 || rng.random_range(0..fail_one_in) == 0
            }
            _ => false,
        };
        if reset {
            shared.reset.fetch_add(1, Ordering::SeqCst);
            abort(client);
            continue;
        }
        connections.spawn(connection(client, shared.clone()));
    }
}

/// Closes with a reset (RST) rather than a clean end of stream.
fn abort(socket: TcpStream) {
    let _ = socket.set_zero_linger();
    drop(socket);
}

async fn connection(client: TcpStream, shared: Arc<Shared>) {
    let _open = OpenGuard::new(&shared);
    let _ = client.set_nodelay(true);
    let mut state = shared.state.subscribe();
    let cuts = state.borrow_and_update().cuts;
    let mode = state.borrow().mode;
    if mode == Mode::Throttle {
        throttle(client, state, cuts, &shared.throttled).await;
        return;
    }
    // Connect upstream unless the peer is meant to hang: a blackholed
    // connection never reaches it (a hang from the first byte).
    let upstream = if mode == Mode::Blackhole {
        None
    } else {
        match TcpStream::connect(shared.upstream).await {
            Ok(upstream) => Some(upstream),
            Err(_) => {
                abort(client);
                return;
            }
        }
    };
    let Some(upstream) = upstream else {
        blackhole(client, state, cuts, &shared.swallowed).await;
        return;
    };
    let mut upstream = upstream;
    let mut client = client;
    let _ = upstream.set_nodelay(true);
    let outcome = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        tokio::select! {
            outcome = pump(client_read, upstream_write, state.clone(), Some(&shared.swallowed)) => outcome,
            outcome = pump(upstream_read, client_write, state.clone(), None) => outcome,
            () = cut(&mut state, cuts) => Ended::Cut,
        }
    };
    if matches!(outcome, Ended::Cut) {
        abort(client);
        abort(upstream);
    }
}

#[derive(Debug)]
enum Ended {
    Closed,
    Cut,
}

/// Resolves when the connection is to be cut: a [`FaultProxy::cut`], a
/// switch to `Refuse`, or the proxy gone.
async fn cut(state: &mut watch::Receiver<State>, cuts: u64) {
    let _ = state.wait_for(|s| s.cuts != cuts).await;
}

/// Copies `from` to `to` chunk by chunk, applying the mode of the moment to
/// each chunk, and counts what it drops in `swallowed` (given for the
/// client's side). Returns when either side closes.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    state: watch::Receiver<State>,
    swallowed: Option<&AtomicU64>,
) -> Ended {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return Ended::Closed;
            }
            Ok(n) => n,
        };
        let mode = state.borrow().mode;
        match mode {
            // Read and dropped: the other side waits for ever.
            Mode::Blackhole | Mode::Throttle => {
                if let Some(swallowed) = swallowed {
                    swallowed.fetch_add(n as u64, Ordering::SeqCst);
                }
                continue;
            }
            Mode::Delay(delay) => tokio::time::sleep(delay).await,
            Mode::Pass | Mode::Refuse | Mode::Flaky { .. } => {}
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return Ended::Closed;
        }
    }
}

/// Reads and drops everything until the client leaves or is cut.
async fn blackhole(
    mut client: TcpStream,
    mut state: watch::Receiver<State>,
    cuts: u64,
    swallowed: &AtomicU64,
) {
    let was_cut = {
        let mut buffer = vec![0u8; 16 * 1024];
        let read = async {
            while let Ok(n) = client.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
                swallowed.fetch_add(n as u64, Ordering::SeqCst);
            }
        };
        tokio::select! {
            () = read => false,
            () = cut(&mut state, cuts) => true,
        }
    };
    if was_cut {
        abort(client);
    }
}

/// Answers every HTTP request on the connection with DynamoDB's throttling
/// error, keeping the connection alive as the SDK expects.
async fn throttle(
    mut client: TcpStream,
    mut state: watch::Receiver<State>,
    cuts: u64,
    throttled: &AtomicU64,
) {
    let was_cut = {
        let serve = async {
            let client = &mut client;
            let mut pending: Vec<u8> = Vec::new();
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                // One request: its head, then its body (Content-Length).
                let request_len = loop {
                    match http_request_len(&pending) {
                        Some(Ok(len)) if pending.len() >= len => break len,
                        // A Content-Length that cannot be: not HTTP; close.
                        Some(Err(TooLong)) => return,
                        Some(Ok(_)) | None => {}
                    }
                    match client.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buffer[..n]),
                    }
                };
                pending.drain(..request_len);
                throttled.fetch_add(1, Ordering::SeqCst);
                let response = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/x-amz-json-1.0\r\n\
                 x-amzn-requestid: fault-proxy\r\ncontent-length: {}\r\n\r\n{THROTTLE_BODY}",
                    THROTTLE_BODY.len()
                );
                if client.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        };
        // Ends when cut, or closes when the mode changes: a keep-alive
        // connection must not go on throttling after a heal.
        let ended = state.wait_for(|s| s.cuts != cuts || s.mode != Mode::Throttle);
        tokio::select! {
            () = serve => false,
            ended = ended => ended.map_or(true, |s| s.cuts != cuts),
        }
    };
    if was_cut {
        abort(client);
    }
}

/// A Content-Length past what memory could hold.
#[derive(Debug, PartialEq)]
struct TooLong;

/// The length of the first HTTP request in `bytes` (head and body), once
/// its head is complete; `None` before that.
fn http_request_len(bytes: &[u8]) -> Option<Result<usize, TooLong>> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let body_len = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    Some(head_end.checked_add(body_len).ok_or(TooLong))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_request_is_measured_by_its_head_and_content_length() {
        assert_eq!(http_request_len(b"POST / HTTP/1.1\r\nHost: x\r\n"), None);
        let head = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(http_request_len(head), Some(Ok(head.len() + 5)));
        let no_body = b"GET / HTTP/1.1\r\n\r\nrest";
        assert_eq!(http_request_len(no_body), Some(Ok(no_body.len() - 4)));
        let huge = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", usize::MAX);
        assert_eq!(http_request_len(huge.as_bytes()), Some(Err(TooLong)));
    }
}
