//! The fault proxy against a tiny local echo server: each mode does what it
//! says, modes switch mid-stream, connections are counted, cut works, and
//! nothing of the proxy outlives it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use obt_testkit::eventually;
use obt_testkit::fault_proxy::{FaultProxy, Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(10);
/// How long a test waits to see that nothing comes back.
const SILENCE: Duration = Duration::from_millis(300);

/// Echoes every byte back; counts its open connections.
struct Echo {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Echo {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let open = Arc::new(AtomicUsize::new(0));
        let counter = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counter = counter.clone();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(n) = socket.read(&mut buffer).await {
                        if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { addr, open, task }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    TcpStream::connect(proxy.addr())
        .await
        .expect("the proxy accepts connections")
}

/// Writes `message` and reads as many bytes back: `Ok` with them, or
/// `Err` saying what happened instead (reset, closed, silence).
async fn round_trip(
    stream: &mut TcpStream,
    message: &[u8],
    wait: Duration,
) -> Result<Vec<u8>, String> {
    stream
        .write_all(message)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = vec![0u8; message.len()];
    match tokio::time::timeout(wait, stream.read_exact(&mut answer)).await {
        Ok(Ok(_)) => Ok(answer),
        Ok(Err(e)) => Err(format!("read: {:?}", e.kind())),
        Err(_) => Err("silence".to_owned()),
    }
}

/// Whether the connection ends (reset or closed) without data.
async fn ends(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(DEADLINE, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn pass_forwards_both_ways_and_counts_connections() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start");
    let mut first = connect(&proxy).await;
    let mut second = connect(&proxy).await;
    assert_eq!(
        round_trip(&mut first, b"hello", DEADLINE).await,
        Ok(b"hello".to_vec())
    );
    assert_eq!(
        round_trip(&mut second, b"world", DEADLINE).await,
        Ok(b"world".to_vec())
    );
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(proxy.open_connections(), 2);
    assert_eq!(proxy.reset_on_arrival(), 0);
    drop(first);
    eventually("one connection left open", DEADLINE, || async {
        match (proxy.open_connections(), echo.open()) {
            (1, 1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn refuse_resets_new_connections_and_cuts_open_ones_until_healed() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start");
    let mut open = connect(&proxy).await;
    assert!(round_trip(&mut open, b"a", DEADLINE).await.is_ok());

    proxy.set_mode(Mode::Refuse);
    assert!(ends(&mut open).await, "the open connection is cut");
    let mut refused = connect(&proxy).await;
    assert!(round_trip(&mut refused, b"b", DEADLINE).await.is_err());
    assert_eq!(proxy.reset_on_arrival(), 1);
    eventually("the upstream side closed too", DEADLINE, || async {
        match echo.open() {
            0 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;

    proxy.set_mode(Mode::Pass);
    let mut healed = connect(&proxy).await;
    assert_eq!(
        round_trip(&mut healed, b"c", DEADLINE).await,
        Ok(b"c".to_vec())
    );
}

#[tokio::test]
async fn blackhole_reads_and_never_answers_and_switching_back_mid_stream_resumes() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start");
    let mut stream = connect(&proxy).await;
    assert!(round_trip(&mut stream, b"before", DEADLINE).await.is_ok());

    proxy.set_mode(Mode::Blackhole);
    assert_eq!(
        round_trip(&mut stream, b"lost", SILENCE).await,
        Err("silence".to_owned())
    );
    let mut hanging = connect(&proxy).await;
    assert_eq!(
        round_trip(&mut hanging, b"new", SILENCE).await,
        Err("silence".to_owned())
    );
    assert_eq!(
        proxy.open_connections(),
        2,
        "both are held open, not closed"
    );
    // What the clients sent into the hang is counted.
    let sent = (b"lost".len() + b"new".len()) as u64;
    proxy.until_swallowed_more_than(sent - 1).await;
    assert_eq!(proxy.swallowed(), sent);

    proxy.set_mode(Mode::Pass);
    // What was sent during the hang is gone; what comes after passes.
    assert_eq!(
        round_trip(&mut stream, b"after", DEADLINE).await,
        Ok(b"after".to_vec())
    );
    // A connection accepted in the hang stays hung until cut.
    proxy.cut();
    assert!(ends(&mut hanging).await);
}

#[tokio::test]
async fn delay_holds_each_chunk_in_each_direction() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start");
    let mut stream = connect(&proxy).await;
    let started = Instant::now();
    assert!(round_trip(&mut stream, b"fast", DEADLINE).await.is_ok());
    let undelayed = started.elapsed();

    let delay = Duration::from_millis(200);
    proxy.set_mode(Mode::Delay(delay));
    let started = Instant::now();
    assert_eq!(
        round_trip(&mut stream, b"slow", DEADLINE).await,
        Ok(b"slow".to_vec())
    );
    let took = started.elapsed();
    assert!(
        took >= 2 * delay,
        "a round trip took {took:?} (undelayed {undelayed:?})"
    );
}

/// Which of `count` connections, made one after the other, got through.
async fn flaky_pattern(echo: &Echo, seed: u64, fail_one_in: u32, count: usize) -> Vec<bool> {
    let proxy = FaultProxy::start_seeded(echo.addr, seed)
        .await
        .expect("start");
    proxy.set_mode(Mode::Flaky { fail_one_in });
    let mut pattern = Vec::new();
    for i in 0..count {
        let mut stream = connect(&proxy).await;
        let message = format!("m{i}");
        pattern.push(
            round_trip(&mut stream, message.as_bytes(), DEADLINE)
                .await
                .is_ok(),
        );
    }
    assert_eq!(proxy.accepted(), count as u64);
    assert_eq!(
        proxy.reset_on_arrival(),
        pattern.iter().filter(|ok| !**ok).count() as u64
    );
    pattern
}

#[tokio::test]
async fn flaky_resets_a_share_of_connections_the_same_way_for_the_same_seed() {
    let echo = Echo::start().await;
    let first = flaky_pattern(&echo, 7, 3, 60).await;
    let again = flaky_pattern(&echo, 7, 3, 60).await;
    let other = flaky_pattern(&echo, 8, 3, 60).await;
    assert_eq!(first, again, "the same seed picks the same connections");
    assert_ne!(first, other, "another seed picks others");
    let failed = first.iter().filter(|ok| !**ok).count();
    assert!(
        (8..=35).contains(&failed),
        "{failed} of 60 failed with fail_one_in 3"
    );
}

#[tokio::test]
async fn cut_resets_every_open_connection_and_keeps_the_mode() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start");
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&proxy).await;
        assert!(round_trip(&mut stream, b"x", DEADLINE).await.is_ok());
        streams.push(stream);
    }
    proxy.cut();
    for stream in &mut streams {
        assert!(ends(stream).await, "cut");
    }
    eventually("no connection left", DEADLINE, || async {
        match (proxy.open_connections(), echo.open()) {
            (0, 0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(proxy.mode(), Mode::Pass);
    let mut next = connect(&proxy).await;
    assert_eq!(
        round_trip(&mut next, b"y", DEADLINE).await,
        Ok(b"y".to_vec())
    );
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_listener_and_every_connection() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await.expect("start");
    let addr = proxy.addr();
    let mut passing = connect(&proxy).await;
    assert!(round_trip(&mut passing, b"x", DEADLINE).await.is_ok());
    proxy.set_mode(Mode::Blackhole);
    let mut hanging = connect(&proxy).await;
    assert_eq!(
        round_trip(&mut hanging, b"z", SILENCE).await,
        Err("silence".to_owned())
    );

    drop(proxy);
    assert!(ends(&mut passing).await, "the forwarded connection ends");
    assert!(ends(&mut hanging).await, "the blackholed connection ends");
    eventually("the upstream connection closed", DEADLINE, || async {
        match echo.open() {
            0 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "nothing listens on the proxy's port any more"
    );
}

#[tokio::test]
async fn throttle_answers_dynamodbs_throttling_error_which_the_sdk_recognises() {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;

    // Nothing listens upstream: in this mode the proxy answers alone.
    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy = FaultProxy::start(upstream.local_addr().expect("address"))
        .await
        .expect("start");
    drop(upstream);
    proxy.set_mode(Mode::Throttle);
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(proxy.http_url())
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(3))
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    let error = client
        .describe_table()
        .table_name("any")
        .send()
        .await
        .expect_err("throttled");
    assert_eq!(
        error.code(),
        Some("ProvisionedThroughputExceededException"),
        "{error:?}"
    );
    // Retried as throttling: each of the 3 attempts was answered so.
    assert_eq!(proxy.throttled(), 3);

    // A request whose body comes in a later segment than its head is
    // answered once it is whole.
    let mut kept = connect(&proxy).await;
    kept.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        .await
        .expect("write the head");
    let mut early = [0u8; 1];
    let before_body = tokio::time::timeout(Duration::from_millis(300), kept.read(&mut early)).await;
    assert!(before_body.is_err(), "nothing is answered before the body");
    kept.write_all(b"{}").await.expect("write the body");
    let mut head = [0u8; 12];
    tokio::time::timeout(DEADLINE, kept.read_exact(&mut head))
        .await
        .expect("an answer once the body came")
        .expect("an answer");
    assert_eq!(&head, b"HTTP/1.1 400");
    assert_eq!(proxy.throttled(), 4);

    // A kept-alive throttling connection ends when the mode changes, so
    // that the client's next request reaches the upstream.
    proxy.set_mode(Mode::Pass);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, kept.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
        "closed after the switch"
    );
}
