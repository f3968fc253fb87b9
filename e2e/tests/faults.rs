//! Fault scenarios: the real `api`, `stream-relay` and `consumer` binaries,
//! each talking to DynamoDB Local, fauxqs and (in the MySQL mode) MariaDB
//! through fault proxies ([`obt_testkit::fault_proxy`]), loaded by the real
//! checker `obt-check` while faults are injected. Each scenario passes only
//! if the checker exits 0: every spending the api answered 201 applied by
//! the consumer exactly once, in seq order per identity, nothing lost or
//! extra, the totals equal.
//!
//! Scenarios (each in both storage modes: `OBT_TEST_STORAGE=mysql` for
//! MariaDB, DynamoDB by default):
//! - `kills`: SIGKILL of the relay, the consumer and the api at random
//!   moments, each restarted after a short random pause;
//! - `sqs_outage`: SQS refused, then hanging, for the relay and the
//!   consumer, then healed;
//! - `database_outage`: the database (DynamoDB and its streams, or
//!   MariaDB) refused, then hanging (and, for DynamoDB, throttling), for
//!   all three services, then healed;
//! - `duplicates`: copies of the published messages re-sent with fresh
//!   deduplication ids, in group order: no double effect;
//! - `poison`: an undecodable message in one identity's group during a
//!   run: it alone reaches the dead-letter queue, its identity is parked at
//!   the consumer, and after the operator discards it (`obt-admin parked
//!   retry --stage consumer --discard`) every real event of that identity
//!   is applied, in order;
//! - `one_identity_100_concurrent_posts`: 100 POSTs at once on one
//!   identity: seqs 1..100, no gap.
//!
//! The moments and choices come from a RNG whose seed each scenario prints;
//! `OBT_FAULT_SEED=N` replays a run. `OBT_FAULT_PROFILE` picks the size:
//! `short` (the default: 400 spendings a scenario, 1,000 for `kills`; 4
//! kills, one refused-hanging cycle of 3 s phases; all scenarios of one
//! mode in under a minute on 2 cores) or `long` (3,000 spendings, 5,000 for
//! `kills`; 15 kills, three cycles of 6 s phases).
//!
//! The services run with short timeouts (`OBT_AWS_TIMEOUT_SECS`,
//! `OBT_DATABASE_TIMEOUT_SECS`, `OBT_STORE_TIMEOUT_SECS`,
//! `OBT_REQUEST_TIMEOUT_SECS`, lease and visibility timeouts) so that they
//! recover within seconds of a heal. A proxy heals by passing again,
//! without cutting the connections that lived through a hang: what was
//! sent into the hang is lost, so the services get out of those
//! connections only by their own timeouts (with the timeouts at 300 s,
//! `OBT_FAULT_SERVICE_ENV=OBT_AWS_TIMEOUT_SECS=300,...`, the outage
//! scenarios fail).
//!
//! Needs the binaries (`cargo build --workspace --bins --all-features`,
//! `obt-check` included) and the emulators (and MariaDB), as
//! `scripts/test.sh` provides.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use obt_consumer::{LedgerReader, StorageArgs};
use obt_runtime::Storage;
use obt_testkit::fault_proxy::{FaultProxy, Mode};
use obt_testkit::mysql::Backend;
use obt_testkit::sqs_proxy::SqsProxy;
use obt_testkit::{Service, Stack, eventually, free_port};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::process::{Child, Command};

const READY: Duration = Duration::from_secs(60);
const SERVICES: [&str; 3] = ["api", "stream-relay", "consumer"];

/// The size of a run.
#[derive(Debug, Clone, Copy)]
struct Profile {
    spendings: u32,
    identities: u32,
    concurrency: u32,
    /// SIGKILLs in the `kills` scenario, and its spendings (more, so that
    /// the load outlasts several kills even in the faster MySQL mode).
    kills: u32,
    kill_spendings: u32,
    /// Refused-then-hanging cycles in the outage scenarios.
    outages: u32,
    /// How long each phase of an outage lasts.
    outage: Duration,
    /// The checker's `--give-up-after-secs` and `--converge-timeout-secs`.
    give_up_secs: u64,
    converge_secs: u64,
}

fn profile() -> Profile {
    match std::env::var("OBT_FAULT_PROFILE").as_deref() {
        Ok("short") | Err(_) => Profile {
            spendings: 400,
            identities: 10,
            concurrency: 4,
            kills: 4,
            kill_spendings: 1000,
            outages: 1,
            outage: Duration::from_secs(3),
            give_up_secs: 90,
            converge_secs: 90,
        },
        Ok("long") => Profile {
            spendings: 3000,
            identities: 40,
            concurrency: 16,
            kills: 15,
            kill_spendings: 5000,
            outages: 3,
            outage: Duration::from_secs(6),
            give_up_secs: 300,
            converge_secs: 300,
        },
        Ok(other) => panic!("OBT_FAULT_PROFILE is short or long, not {other:?}"),
    }
}

/// The scenario's RNG: from `OBT_FAULT_SEED`, or a random seed, printed.
fn rng(scenario: &str) -> (u64, StdRng) {
    let seed = match std::env::var("OBT_FAULT_SEED") {
        Ok(seed) => seed
            .parse()
            .unwrap_or_else(|_| panic!("OBT_FAULT_SEED is a number, not {seed:?}")),
        Err(_) => rand::random(),
    };
    eprintln!("{scenario}: seed {seed} (OBT_FAULT_SEED={seed} replays this run)");
    (seed, StdRng::seed_from_u64(seed))
}

/// `HOST:PORT` of a URL (`scheme://[user:password@]HOST:PORT[/path]`).
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

fn addr_of(url: &str) -> SocketAddr {
    host_port(url)
        .parse()
        .unwrap_or_else(|e| panic!("no HOST:PORT in {url:?}: {e}"))
}

fn env_url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: these tests need the emulators (scripts/test.sh)")
    })
}

/// The consumer's records, as the checker reads them: directly.
fn storage_args(backend: &Backend) -> StorageArgs {
    match backend {
        Backend::DynamoDb(stack) => StorageArgs::dynamodb(&stack.names.consumer_table),
        Backend::MySql(mysql) => StorageArgs {
            table: mysql.stack.names.consumer_table.clone(),
            ..StorageArgs::mysql(obt_consumer::DatabaseUrl::new(
                mysql.urls.consumer_url.clone(),
            ))
        },
    }
}

/// What a scenario changes in the set-up.
#[derive(Default)]
struct Options {
    max_receive_count: Option<u32>,
    /// The relay publishes through an HTTP-level proxy recording what SQS
    /// accepted (the `duplicates` scenario).
    record_published: bool,
}

/// One scenario's stack, proxies and services.
struct Harness {
    name: &'static str,
    backend: Backend,
    /// DynamoDB and DynamoDB Streams (one emulator port) for every service.
    dynamodb: FaultProxy,
    /// SQS for the relay and the consumer.
    sqs: FaultProxy,
    /// MariaDB for every service, in the MySQL mode.
    mysql: Option<FaultProxy>,
    /// When recording, the relay's SQS endpoint.
    published: Option<SqsProxy>,
    api_port: u16,
    services: HashMap<&'static str, Service>,
    rng: StdRng,
    seed: u64,
    http: reqwest::Client,
}

impl Harness {
    async fn start(name: &'static str, options: Options) -> Self {
        let (seed, mut rng) = rng(name);
        let backend = Backend::create(options.max_receive_count.unwrap_or(5)).await;
        let dynamodb =
            FaultProxy::start_seeded(addr_of(&env_url("AWS_ENDPOINT_URL_DYNAMODB")), rng.random())
                .await
                .expect("the DynamoDB proxy");
        let sqs = FaultProxy::start_seeded(addr_of(&env_url("AWS_ENDPOINT_URL_SQS")), rng.random())
            .await
            .expect("the SQS proxy");
        let mysql = match &backend {
            Backend::MySql(mysql) => Some(
                FaultProxy::start_seeded(addr_of(&mysql.urls.api_url), rng.random())
                    .await
                    .expect("the MariaDB proxy"),
            ),
            Backend::DynamoDb(_) => None,
        };
        let published = if options.record_published {
            Some(SqsProxy::start(|_, _| false).await)
        } else {
            None
        };
        let mut harness = Self {
            name,
            backend,
            dynamodb,
            sqs,
            mysql,
            published,
            api_port: free_port(),
            services: HashMap::new(),
            rng,
            seed,
            http: reqwest::Client::new(),
        };
        for service in SERVICES {
            harness.start_service(service);
        }
        harness.wait_ready().await;
        harness
    }

    fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    fn stack(&self) -> &Stack {
        self.backend.stack()
    }

    /// A service's environment: its peers through the proxies, and short
    /// timeouts so that it recovers within seconds of a heal.
    fn service_env(&self, service: &str) -> Vec<(&'static str, String)> {
        let mut env = self.backend.env(service);
        let dynamodb = self.dynamodb.http_url();
        let sqs = match (&self.published, service) {
            (Some(published), "stream-relay") => published.url.clone(),
            _ => self.sqs.http_url(),
        };
        env.extend([
            ("AWS_ENDPOINT_URL_DYNAMODB", dynamodb.clone()),
            ("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", dynamodb),
            ("AWS_ENDPOINT_URL_SQS", sqs),
            // Fast idle polling (as in pipeline.rs).
            ("OBT_IDLE_POLL_MS", "50".to_owned()),
            ("OBT_POLL_MAX_IDLE_MS", "50".to_owned()),
            ("OBT_DISCOVER_INTERVAL_SECS", "1".to_owned()),
            ("OBT_WAIT_TIME_SECS", "1".to_owned()),
            // Fast recovery: a killed relay's leases expire in 3 s, hung
            // calls are given up within 2 s, and a request within 5 s.
            ("OBT_LEASE_DURATION_SECS", "3".to_owned()),
            ("OBT_AWS_TIMEOUT_SECS", "2".to_owned()),
            ("OBT_DATABASE_TIMEOUT_SECS", "2".to_owned()),
            ("OBT_STORE_TIMEOUT_SECS", "2".to_owned()),
            ("OBT_STORE_RETRY_SECS", "15".to_owned()),
            ("OBT_VISIBILITY_TIMEOUT_SECS", "5".to_owned()),
            ("OBT_REQUEST_TIMEOUT_SECS", "5".to_owned()),
            ("OBT_SHUTDOWN_TIMEOUT_SECS", "2".to_owned()),
        ]);
        // Experiments: `OBT_FAULT_SERVICE_ENV="OBT_AWS_TIMEOUT_SECS=300,..."`
        // overrides the settings above for every service (e.g. to see a
        // scenario fail without the timeouts).
        if let Ok(extra) = std::env::var("OBT_FAULT_SERVICE_ENV") {
            for pair in extra.split(',').filter(|p| !p.trim().is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or_else(|| {
                    panic!("OBT_FAULT_SERVICE_ENV holds KEY=VALUE pairs, not {pair:?}")
                });
                let key: &'static str = Box::leak(key.trim().to_owned().into_boxed_str());
                env.push((key, value.to_owned()));
            }
        }
        if service == "api" {
            env.push(("OBT_LISTEN", format!("127.0.0.1:{}", self.api_port)));
        }
        if let (Some(proxy), Some(i)) = (
            &self.mysql,
            env.iter().position(|(k, _)| *k == "OBT_DATABASE_URL"),
        ) {
            let url = env[i].1.clone();
            let through = url.replacen(host_port(&url), &proxy.addr().to_string(), 1);
            env.push(("OBT_DATABASE_URL", through));
        }
        env
    }

    fn start_service(&mut self, service: &'static str) {
        let env = self.service_env(service);
        self.services.insert(service, Service::start(service, &env));
    }

    async fn kill_service(&mut self, service: &'static str) {
        if let Some(running) = self.services.remove(service) {
            running.kill().await;
        }
    }

    async fn wait_ready(&self) {
        obt_testkit::api_ready(&self.http, &self.api_url(), READY).await;
    }

    /// A pause of a random length in `range` (milliseconds): a fault's
    /// moment, not a synchronisation.
    async fn pause(&mut self, range: std::ops::Range<u64>) {
        let ms = self.rng.random_range(range);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// `obt-admin` with the consumer's settings (straight to the stand-ins,
    /// not through the fault proxies).
    async fn admin(&self, args: &[&str]) -> Output {
        Command::new(obt_testkit::bin_path("obt-admin"))
            .args(args)
            .envs(self.backend.env("consumer"))
            .output()
            .await
            .expect("run obt-admin")
    }

    /// The checker's identity prefix for this run.
    fn prefix(&self) -> String {
        format!(
            "{}-{:x}",
            self.name.replace('_', "-"),
            self.seed % 0xffff_ffff
        )
    }

    /// Starts `obt-check` against the api; it talks to the emulators and
    /// the consumer's database directly.
    fn spawn_checker(&self, spendings: u32, identities: u32, concurrency: u32) -> Checker {
        let profile = profile();
        let report = std::env::temp_dir().join(format!(
            "obt-faults-{}-{}.json",
            self.prefix(),
            std::process::id()
        ));
        let storage = storage_args(&self.backend);
        let mut command = Command::new(obt_testkit::bin_path("obt-check"));
        command
            .args(["--api-url", &self.api_url()])
            .args(["--spendings", &spendings.to_string()])
            .args(["--identities", &identities.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--seed", &self.seed.to_string()])
            .args(["--prefix", &self.prefix()])
            .args(["--give-up-after-secs", &profile.give_up_secs.to_string()])
            .args([
                "--converge-timeout-secs",
                &profile.converge_secs.to_string(),
            ])
            .args(["--progress", "never"])
            .arg("--report")
            .arg(&report)
            .env(
                "OBT_STORAGE",
                match storage.storage() {
                    Storage::Dynamodb => "dynamodb",
                    Storage::Mysql => "mysql",
                },
            )
            .env("OBT_CONSUMER_TABLE", &storage.table)
            .env_remove("OBT_DATABASE_URL")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(url) = storage.database_url() {
            command.env("OBT_DATABASE_URL", url.expose());
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting obt-check: {e}"));
        Checker {
            child,
            started: Instant::now(),
        }
    }

    /// The database proxy of the mode under test.
    fn database(&self) -> &FaultProxy {
        self.mysql.as_ref().unwrap_or(&self.dynamodb)
    }

    /// `GET /api/v1/spending/{identity}`.
    async fn summary(&self, identity: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/api/v1/spending/{identity}", self.api_url()))
            .send()
            .await
            .expect("GET reaches the api");
        assert_eq!(response.status(), 200, "GET {identity}");
        response.json().await.expect("a JSON summary")
    }

    /// The consumer's records, read directly.
    async fn records(&self) -> std::sync::Arc<dyn LedgerReader> {
        obt_consumer::store::open(
            &self.stack().config,
            &storage_args(&self.backend),
            2,
            "fault tests",
        )
        .await
        .unwrap_or_else(|e| panic!("opening the consumer's records: {e}"))
        .reader()
        .clone()
    }
}

/// A running `obt-check`.
struct Checker {
    child: Child,
    started: Instant,
}

impl Checker {
    /// Waits for the exit; panics with the checker's output unless 0.
    async fn assert_green(self, scenario: &str) -> Output {
        let output = self
            .child
            .wait_with_output()
            .await
            .expect("obt-check runs to its end");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{scenario}: obt-check exited with {} after {:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            output.status,
            self.started.elapsed()
        );
        eprintln!(
            "{scenario}: obt-check green after {:?}\n{stdout}",
            self.started.elapsed()
        );
        output
    }
}

fn mode_name() -> &'static str {
    match obt_testkit::storage_under_test() {
        obt_runtime::Storage::Mysql => "mysql",
        obt_runtime::Storage::Dynamodb => "dynamodb",
    }
}

fn timed(scenario: &str, started: Instant) {
    eprintln!(
        "TIMING {scenario} [{}]: {:.1} s",
        mode_name(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills() {
    let started = Instant::now();
    let p = profile();
    let mut harness = Harness::start("kills", Options::default()).await;
    let checker = harness.spawn_checker(p.kill_spendings, p.identities, p.concurrency);
    let checker = tokio::spawn(async move { checker.assert_green("kills").await });
    let mut during_run = 0;
    for kill in 0..p.kills {
        harness.pause(100..500).await;
        if checker.is_finished() {
            break;
        }
        // Each service once, from a random one, then at random.
        let victim = if kill < 3 {
            SERVICES[((harness.seed % 3) as usize + kill as usize) % 3]
        } else {
            SERVICES[harness.rng.random_range(0..3)]
        };
        harness.kill_service(victim).await;
        during_run += 1;
        eprintln!("kills: SIGKILLed {victim} at {:?}", started.elapsed());
        harness.pause(100..500).await;
        harness.start_service(victim);
    }
    checker.await.expect("the checker task");
    eprintln!("kills: {during_run} SIGKILLs while the checker ran");
    assert!(during_run > 0, "the run ended before the first kill");
    timed("kills", started);
}

/// Refused, healed, hanging, healed, `profile.outages` times, on `proxy`
/// of the harness (picked by `which`); `throttle` adds a throttling phase.
async fn outages(harness: &mut Harness, which: fn(&Harness) -> &FaultProxy, throttle: bool) {
    let p = profile();
    let started = Instant::now();
    for _ in 0..p.outages {
        harness.pause(300..1000).await;
        let mut phases = vec![Mode::Refuse, Mode::Blackhole];
        if throttle {
            phases.push(Mode::Throttle);
        }
        for mode in phases {
            which(harness).set_mode(mode);
            eprintln!("{}: {mode:?} from {:?}", harness.name, started.elapsed());
            tokio::time::sleep(p.outage).await;
            // Not cut: what was sent into the hang is lost, so a service
            // gets out of the connections that lived through it only by
            // its own timeouts.
            which(harness).set_mode(Mode::Pass);
            eprintln!("{}: healed at {:?}", harness.name, started.elapsed());
            harness.pause(300..1000).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_outage() {
    let started = Instant::now();
    let p = profile();
    let mut harness = Harness::start("sqs_outage", Options::default()).await;
    let checker = harness.spawn_checker(p.spendings, p.identities, p.concurrency);
    outages(&mut harness, |h| &h.sqs, false).await;
    assert!(harness.sqs.reset_on_arrival() > 0, "the outage was seen");
    checker.assert_green("sqs_outage").await;
    timed("sqs_outage", started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage() {
    let started = Instant::now();
    let p = profile();
    let mut harness = Harness::start("database_outage", Options::default()).await;
    let checker = harness.spawn_checker(p.spendings, p.identities, p.concurrency);
    // DynamoDB also throttles; MariaDB has no such answer.
    let throttle = harness.mysql.is_none();
    outages(&mut harness, Harness::database, throttle).await;
    assert!(
        harness.database().reset_on_arrival() > 0,
        "the outage was seen"
    );
    if throttle {
        assert!(harness.dynamodb.throttled() > 0, "the throttling was seen");
    }
    checker.assert_green("database_outage").await;
    timed("database_outage", started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates() {
    let started = Instant::now();
    let p = profile();
    let mut harness = Harness::start(
        "duplicates",
        Options {
            record_published: true,
            ..Options::default()
        },
    )
    .await;
    let checker = harness.spawn_checker(p.spendings, p.identities, p.concurrency);
    let checker = tokio::spawn(async move { checker.assert_green("duplicates").await });

    // Every other published message again, with a fresh deduplication id,
    // after its original: in group order, as a second relay would.
    let mut seen = 0;
    let mut resent = 0;
    while !checker.is_finished() {
        let accepted = harness.published.as_ref().expect("recording").accepted();
        for entry in &accepted[seen..] {
            if harness.rng.random_bool(0.5) {
                obt_testkit::send_raw(
                    harness.stack(),
                    &entry.group,
                    &uuid::Uuid::new_v4().to_string(),
                    &entry.body,
                )
                .await;
                resent += 1;
            }
        }
        seen = accepted.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    checker.await.expect("the checker task");
    eprintln!("duplicates: re-sent {resent} of {seen} published messages");
    assert!(resent > 0, "duplicates were sent");

    // The duplicates sent late are consumed too; then each identity's
    // records still match the api's: nothing applied twice.
    let stack = harness.stack();
    eventually("the queue drained", Duration::from_secs(60), || async {
        match queue_depth(stack).await {
            (0, 0) => Ok(()),
            depth => Err(format!("{depth:?}")),
        }
    })
    .await;
    let records = harness.records().await;
    for k in 0..p.identities {
        let identity = format!("{}-{k}", harness.prefix());
        let summary = harness.summary(&identity).await;
        let applied = records
            .load_identity(&identity)
            .await
            .expect("read the records")
            .unwrap_or_else(|| panic!("{identity} has records"));
        assert_eq!(Some(applied.count), summary["count"].as_u64(), "{identity}");
        assert_eq!(
            Some(applied.last_seq),
            summary["last_seq"].as_u64(),
            "{identity}"
        );
        assert_eq!(
            Some(applied.total.to_string().as_str()),
            summary["total"].as_str(),
            "{identity}"
        );
        let seqs: Vec<u64> = applied.spendings.iter().map(|s| s.seq).collect();
        assert_eq!(
            seqs,
            (1..=applied.last_seq).collect::<Vec<_>>(),
            "{identity}"
        );
    }
    timed("duplicates", started);
}

/// Messages in the dead-letter queue, visible or not.
async fn dead_letter_depth(stack: &Stack) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName;
    let out = stack
        .sqs()
        .get_queue_attributes()
        .queue_url(&stack.dead_letter_queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("GetQueueAttributes");
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|name| {
        out.attributes()
            .and_then(|a| a.get(name))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    })
    .sum()
}

/// (visible, in flight) messages of the main queue.
async fn queue_depth(stack: &Stack) -> (u64, u64) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let out = stack
        .sqs()
        .get_queue_attributes()
        .queue_url(&stack.queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("GetQueueAttributes");
    let count = |name: QueueAttributeName| {
        out.attributes()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    (
        count(QueueAttributeName::ApproximateNumberOfMessages),
        count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison() {
    let started = Instant::now();
    let p = profile();
    let mut harness = Harness::start(
        "poison",
        Options {
            max_receive_count: Some(3),
            ..Options::default()
        },
    )
    .await;
    let checker = harness.spawn_checker(p.spendings, p.identities, p.concurrency);
    harness.pause(500..2000).await;
    let group = format!("{}-0", harness.prefix());
    let body = format!("poison {}: not an envelope", uuid::Uuid::new_v4());
    obt_testkit::send_raw(
        harness.stack(),
        &group,
        &uuid::Uuid::new_v4().to_string(),
        &body,
    )
    .await;
    eprintln!("poison: sent into group {group} at {:?}", started.elapsed());

    // The consumer dead-letters it alone and parks its identity, whose
    // later events wait in order. The operator looks: garbage, no event.
    let parked = eventually(
        "the poisoned identity parked at the consumer",
        Duration::from_secs(60),
        || async {
            let output = harness
                .admin(&["parked", "list", "--stage", "consumer", "--json"])
                .await;
            let listed: Value = serde_json::from_slice(&output.stdout)
                .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&output.stderr)))?;
            listed
                .as_array()
                .and_then(|l| l.iter().find(|p| p["identity"] == group.as_str()))
                .cloned()
                .ok_or_else(|| format!("{listed}"))
        },
    )
    .await;
    assert_eq!(parked["cause"], "poison", "{parked}");
    let stack = harness.stack();
    assert_eq!(
        dead_letter_depth(stack).await,
        1,
        "the poison message alone is in the dead-letter queue"
    );
    let message_id = parked["message_id"]
        .as_str()
        .expect("the poison's message id");
    let mut output = harness
        .admin(&[
            "parked",
            "retry",
            &group,
            "--stage",
            "consumer",
            "--discard",
            message_id,
        ])
        .await;
    // The checker's POSTs to the identity go on, so the retry may find
    // events held as fast as it applies them and say "retry again" (exit
    // 1); the operator does, as told, until it unparks.
    let deadline = Instant::now() + Duration::from_secs(60);
    while output.status.code() == Some(1)
        && String::from_utf8_lossy(&output.stdout).contains("retry again")
        && Instant::now() < deadline
    {
        eprintln!("poison: {}", String::from_utf8_lossy(&output.stdout).trim());
        output = harness
            .admin(&["parked", "retry", &group, "--stage", "consumer"])
            .await;
    }
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    eprintln!("poison: {}", String::from_utf8_lossy(&output.stdout).trim());
    checker.assert_green("poison").await;
    assert_eq!(dead_letter_depth(stack).await, 0, "discarded");
    timed("poison", started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_100_concurrent_posts() {
    let started = Instant::now();
    let harness = Harness::start("one_identity_100", Options::default()).await;
    harness
        .spawn_checker(100, 1, 100)
        .assert_green("one_identity_100_concurrent_posts")
        .await;
    let identity = format!("{}-0", harness.prefix());
    let summary = harness.summary(&identity).await;
    assert_eq!(summary["last_seq"].as_u64(), Some(100), "{summary}");
    assert_eq!(summary["count"].as_u64(), Some(100), "{summary}");
    let applied = harness
        .records()
        .await
        .load_identity(&identity)
        .await
        .expect("read the records")
        .expect("applied");
    let seqs: Vec<u64> = applied.spendings.iter().map(|s| s.seq).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    timed("one_identity_100_concurrent_posts", started);
}
